"""A small synchronous 9P2000 client over a socket, with shortcuts for the llambo tree.

One request at a time (a lock keeps threads from interleaving); every Rerror raises
:class:`~llambo.styx.errors.StyxError`. Beyond the protocol operations (version, attach, walk,
open, read, write, clunk, stat) it knows the llambo files: :meth:`Client.load` writes ``/ctl``,
:meth:`Client.ask` and :meth:`Client.stream` write a request to ``/models/N/data`` and read the
answer back on the same fid, so no other client's request can be read by mistake.

    with Client("tcp!127.0.0.1!5640") as client:
        model_id = client.load("/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        print(client.ask(model_id, "The capital of France is", max_tokens=16, temperature=0))
"""

from __future__ import annotations

import codecs
import contextlib
import getpass
import json
import socket
import threading
from collections.abc import Generator
from typing import Any, TypeVar

from . import fcall
from .address import DEFAULT_ADDRESS, parse_address
from .commands import quote
from .errors import StyxError
from .fcall import (
    IOHDRSZ,
    NOFID,
    NOTAG,
    ORDWR,
    OREAD,
    OWRITE,
    Message,
    Qid,
    Rattach,
    Rclunk,
    Rerror,
    Ropen,
    Rread,
    Rstat,
    Rversion,
    Rwalk,
    Rwrite,
    Stat,
    Tattach,
    Tclunk,
    Topen,
    Tread,
    Tstat,
    Tversion,
    Twalk,
    Twrite,
)

__all__ = ["Client"]

_R = TypeVar("_R")


class Client:
    """A connected, attached 9P session; ``close()`` it (or use it as a context manager)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        msize: int = 65536,
        uname: str | None = None,
        aname: str = "",
        timeout: float | None = None,
    ) -> None:
        target = parse_address(address)
        if target.network == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(target.path)
        else:
            sock = socket.create_connection((target.host, target.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._lock = threading.RLock()
        self._next_tag = 0
        self._next_fid = 1
        self._free_fids: list[int] = []
        self.msize = msize
        try:
            self.msize, self.version_string = self.version(msize)
            self.root = self.new_fid()
            self.attach(self.root, uname if uname is not None else _user(), aname)
        except BaseException:
            sock.close()
            raise

    # -- the wire --------------------------------------------------------------------------------

    def _recv_exactly(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self._sock.recv(size - len(chunks))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            chunks += chunk
        return bytes(chunks)

    def rpc(self, request: Message, expect: type[_R]) -> _R:
        """Send one request and return its reply; StyxError on Rerror."""
        with self._lock:
            self._sock.sendall(fcall.pack(request))
            while True:
                head = self._recv_exactly(4)
                size = int.from_bytes(head, "little")
                if size < 7 or size > max(self.msize, 8192):
                    raise ConnectionError(f"the server sent a message of size {size}")
                reply = fcall.unpack(head + self._recv_exactly(size - 4))
                if reply.tag == request.tag:
                    break  # a late reply to an abandoned request is skipped
        if isinstance(reply, Rerror):
            raise StyxError(reply.ename)
        if not isinstance(reply, expect):
            raise ConnectionError(f"expected {expect.__name__}, got {type(reply).__name__}")
        return reply

    def _tag(self) -> int:
        with self._lock:
            tag = self._next_tag
            self._next_tag = (tag + 1) % NOTAG
            return tag

    def new_fid(self) -> int:
        """A fid number not in use on this connection."""
        with self._lock:
            if self._free_fids:
                return self._free_fids.pop()
            fid = self._next_fid
            self._next_fid += 1
            return fid

    # -- protocol operations --------------------------------------------------------------------------

    def version(self, msize: int = 65536, version: str = fcall.VERSION) -> tuple[int, str]:
        """Negotiate (msize, version); resets the session on the server."""
        reply = self.rpc(Tversion(NOTAG, msize, version), Rversion)
        if reply.version != fcall.VERSION:
            raise StyxError(f"the server does not speak {version} (it answered {reply.version!r})")
        self.msize = reply.msize
        return reply.msize, reply.version

    def attach(self, fid: int, uname: str, aname: str = "") -> Qid:
        return self.rpc(Tattach(self._tag(), fid, NOFID, uname, aname), Rattach).qid

    def walk(self, fid: int, newfid: int, names: tuple[str, ...] | list[str]) -> list[Qid]:
        """Walk ``names`` from ``fid`` to ``newfid``; StyxError unless every name is found."""
        names = tuple(names)
        reply = self.rpc(Twalk(self._tag(), fid, newfid, names), Rwalk)
        if len(reply.qids) != len(names):
            missing = names[len(reply.qids)]
            raise StyxError(f"not found: {missing!r} in {'/'.join(names[: len(reply.qids)]) or '/'}")
        return list(reply.qids)

    def open(self, fid: int, mode: int) -> tuple[Qid, int]:
        """Open a walked fid; (qid, iounit)."""
        reply = self.rpc(Topen(self._tag(), fid, mode), Ropen)
        return reply.qid, reply.iounit or self.msize - IOHDRSZ

    def read(self, fid: int, offset: int, count: int | None = None) -> bytes:
        size = self.msize - IOHDRSZ if count is None else count
        return self.rpc(Tread(self._tag(), fid, offset, size), Rread).data

    def write(self, fid: int, offset: int, data: bytes) -> int:
        return self.rpc(Twrite(self._tag(), fid, offset, data), Rwrite).count

    def clunk(self, fid: int) -> None:
        try:
            self.rpc(Tclunk(self._tag(), fid), Rclunk)
        finally:
            with self._lock:
                self._free_fids.append(fid)

    def stat(self, fid: int) -> Stat:
        return self.rpc(Tstat(self._tag(), fid), Rstat).stat

    # -- paths ----------------------------------------------------------------------------------------

    def open_path(self, path: str, mode: int = OREAD) -> int:
        """Walk from the root to ``path`` and open it; the new fid (clunk it when done)."""
        fid = self.new_fid()
        names = [part for part in path.split("/") if part]
        try:
            for start in range(0, max(len(names), 1), fcall.MAXWELEM):
                self.walk(self.root if start == 0 else fid, fid, names[start : start + fcall.MAXWELEM])
        except BaseException:
            with self._lock:
                self._free_fids.append(fid)
            raise
        try:
            self.open(fid, mode)
        except BaseException:
            self.clunk(fid)
            raise
        return fid

    def read_all(self, fid: int) -> bytes:
        """Read an open fid from offset 0 until a read returns nothing."""
        chunks = bytearray()
        while True:
            data = self.read(fid, len(chunks))
            if not data:
                return bytes(chunks)
            chunks += data

    def read_file(self, path: str) -> bytes:
        fid = self.open_path(path, OREAD)
        try:
            return self.read_all(fid)
        finally:
            self.clunk(fid)

    def write_file(self, path: str, data: bytes | str) -> int:
        payload = data.encode("utf-8") if isinstance(data, str) else data
        fid = self.open_path(path, OWRITE)
        try:
            return self.write(fid, 0, payload)
        finally:
            self.clunk(fid)

    def stat_path(self, path: str) -> Stat:
        fid = self.new_fid()
        names = [part for part in path.split("/") if part]
        self.walk(self.root, fid, names[: fcall.MAXWELEM])
        try:
            return self.stat(fid)
        finally:
            self.clunk(fid)

    def list_dir(self, path: str = "/") -> list[Stat]:
        """The entries of a directory."""
        return fcall.unpack_entries(self.read_file(path))

    # -- llambo -----------------------------------------------------------------------------------------

    def load(self, path: str, use_mmap: bool = True, n_gpu_layers: int = 0, **options: Any) -> int:
        """Load a model through ``/ctl``; its id (the same id again for the same file and settings)."""
        words = ["load", quote(path), "true" if use_mmap else "false", str(int(n_gpu_layers))]
        words += [f"{name}={_option(value)}" for name, value in options.items()]
        fid = self.open_path("ctl", ORDWR)
        try:
            self.write(fid, 0, " ".join(words).encode("utf-8"))
            return int(self.read(fid, 0).decode().strip())
        finally:
            self.clunk(fid)

    def free(self, model_id: int) -> None:
        """Undo one load of ``model_id``."""
        self.write_file("ctl", f"free {int(model_id)}")

    def models(self) -> list[dict[str, Any]]:
        """The loaded models as listed by ``/ctl``: id, path, backend, refs."""
        result = []
        for line in self.read_file("ctl").decode("utf-8").splitlines():
            head, _, rest = line.partition(" ")
            path, backend, refs = rest.rsplit(" ", 2)
            if len(path) >= 2 and path[0] == path[-1] == "'":  # quoted as rc quotes
                path = path[1:-1].replace("''", "'")
            result.append({"id": int(head), "path": path, "backend": backend, "refs": int(refs)})
        return result

    def info(self, model_id: int) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.read_file(f"models/{int(model_id)}/info"))
        return data

    def status(self, model_id: int) -> dict[str, str]:
        text = self.read_file(f"models/{int(model_id)}/status").decode("utf-8")
        return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)

    def stream(
        self, model_id: int, prompt: str, max_tokens: int = 128, temperature: float = 0.8, **sampling: Any
    ) -> Generator[str, None, None]:
        """Send a request and yield the text as the model produces it (on one private fid)."""
        request = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, **sampling}
        payload = json.dumps(request, ensure_ascii=False).encode("utf-8")
        fid = self.open_path(f"models/{int(model_id)}/data", ORDWR)
        try:
            self.write(fid, 0, payload)
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            offset = 0
            while True:
                data = self.read(fid, offset)
                if not data:
                    break
                offset += len(data)
                text = decoder.decode(data)
                if text:
                    yield text
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            with contextlib.suppress(OSError, StyxError):
                self.clunk(fid)

    def ask(
        self, model_id: int, prompt: str, max_tokens: int = 128, temperature: float = 0.8, **sampling: Any
    ) -> str:
        """The whole answer to one request."""
        return "".join(self.stream(model_id, prompt, max_tokens, temperature, **sampling))

    # -- lifetime ---------------------------------------------------------------------------------------

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "none"


def _option(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return quote(str(value))
