"""The Styx (9P2000) server: connections, fids, tags and flush on asyncio, over TCP or a Unix socket.

Messages are cut out of each connection's byte stream and handled as they arrive. Those that
cannot wait (version, attach, walk, open, clunk, stat, a read with text ready, ...) are answered
at once; a read that must wait for generated text is parked as a callback on its request, and
writes (which may load a model) run as tasks, so many requests of one connection can be in
flight together, told apart by their tags. A Tflush withdraws a waiting read (which then never
gets a reply) and is answered with Rflush once the old request is settled. A malformed message
gets an Rerror; one whose size cannot be trusted closes its connection, and only that one.

:class:`ServerThread` runs a server on its own event loop in a background thread, for tests,
benchmarks and programs that are not asyncio-based.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat as stat_module
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..api import LoadParams
from ..registry import ModelRegistry, default_registry
from . import fcall
from .address import DEFAULT_ADDRESS, Address, parse_address
from .errors import BUSY, INVALID, NOT_FOUND, PERMISSION, StyxError, error_text
from .fcall import (
    IOHDRSZ,
    NOFID,
    Message,
    ProtocolError,
    Rattach,
    Rclunk,
    Rerror,
    Rflush,
    Ropen,
    Rread,
    Rstat,
    Rversion,
    Rwalk,
    Rwrite,
    Rwstat,
    Tattach,
    Tauth,
    Tclunk,
    Tcreate,
    Tflush,
    Topen,
    Tread,
    Tremove,
    Tstat,
    Tversion,
    Twalk,
    Twrite,
    Twstat,
)
from .files import OpenFile
from .nodes import Node, Peer
from .tree import Tree

__all__ = ["MIN_MSIZE", "Limits", "ServerThread", "StyxServer"]

_log = logging.getLogger("llambo.styx")

MIN_MSIZE = 256
_REQUEST_TYPES = (Tversion, Tauth, Tattach, Tflush, Twalk, Topen, Tcreate, Tread, Twrite, Tclunk, Tremove)
_REQUESTS = frozenset(cls.TYPE for cls in (*_REQUEST_TYPES, Tstat, Twstat))


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one client (or many) from exhausting the server; each is configurable."""

    msize: int = 65536  # the largest message size offered in Rversion
    fids: int = 1024  # fids per connection
    connections: int = 64  # connections at once
    queued: int = 64  # generations running or waiting, whole server
    max_tokens: int = 4096  # the largest max_tokens a request may ask for
    pending: int = 256  # requests in flight per connection (distinct tags)

    def __post_init__(self) -> None:
        for name in ("msize", "fids", "connections", "queued", "max_tokens", "pending"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"limit {name} must be a positive integer, got {value!r}")
        if self.msize < MIN_MSIZE:
            raise ValueError(f"limit msize must be at least {MIN_MSIZE}, got {self.msize}")


class _Fid:
    """What a fid stands for: a node, and once opened, the open file (plus a directory snapshot)."""

    __slots__ = ("entries", "file", "node", "uname")

    def __init__(self, node: Node, uname: str) -> None:
        self.node = node
        self.uname = uname
        self.file: OpenFile | None = None
        self.entries: list[bytes] = []


class _Pending:
    """A request in flight: a task, or a read waiting on a callback (``cancel`` withdraws it)."""

    __slots__ = ("cancel", "flushable", "flushed", "task")

    def __init__(self, flushable: bool) -> None:
        self.flushable = flushable
        self.flushed = False
        self.task: asyncio.Task[None] | None = None
        self.cancel: Callable[[], None] | None = None


class _Close(Exception):
    """A protocol violation after which the connection cannot go on."""


def _negotiate(version: str) -> str:
    """The version to answer (version(5)): 9P2000 for any 9Pnnnn[.x] with nnnn >= 2000."""
    base = version.split(".", 1)[0]
    digits = base[2:]
    if base.startswith("9P") and digits.isascii() and digits.isdigit() and int(digits) >= 2000:
        return fcall.VERSION
    return "unknown"


class _Connection(asyncio.Protocol):
    """One client: its fids, its requests in flight, and the parsing of its byte stream.

    A Protocol rather than streams: messages are cut out of the buffer and handled straight from
    ``data_received``, so a message that needs no waiting costs no future and no task.
    """

    def __init__(self, server: StyxServer, name: str) -> None:
        self.server = server
        self.tree = server.tree
        self.limits = server.limits
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.msize: int | None = None
        self.fids: dict[int, _Fid] = {}
        self.pending: dict[int, _Pending] = {}
        self.peer = Peer()
        self.closing = False
        self.closed = asyncio.get_running_loop().create_future()

    # -- the transport ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.name = f"{self.name} {peer[0]}!{peer[1]}" if isinstance(peer, tuple) else f"{self.name} unix"
        if not self.server.admit(self):
            _log.warning(
                "%s: refused, %d connections already (the limit)", self.name, self.limits.connections
            )
            self.closing = True
            transport.abort()
            return
        _log.info("%s: connected", self.name)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        buffer = self.buffer
        buffer += data
        try:
            while len(buffer) >= 4:
                size = int.from_bytes(buffer[:4], "little")
                limit = self.msize if self.msize is not None else self.limits.msize
                if size < fcall.HEADER or size > limit:
                    raise _Close(f"message size {size} is outside {fcall.HEADER}..{limit}")
                if len(buffer) < size:
                    break
                message = bytes(buffer[:size])
                del buffer[:size]
                self.received(message)
                if self.closing:
                    return
        except _Close as exc:
            _log.warning("%s: closing the connection: %s", self.name, exc)
            self.abort()

    def pause_writing(self) -> None:  # the client does not read its replies: stop reading its requests
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.abort_all()
        self.clunk_all()
        self.peer.close()
        self.server.forget(self)
        if not self.closed.done():
            self.closed.set_result(None)
        _log.info("%s: disconnected", self.name)

    def send(self, reply: Message) -> None:
        if not self.closing and self.transport is not None:
            self.transport.write(fcall.pack(reply))

    def abort(self) -> None:
        """Drop the connection now (a protocol violation, or the server shutting down)."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def received(self, data: bytes) -> None:
        """Handle one whole message: answer it now, or start the task that will."""
        started = time.perf_counter()
        try:
            message = fcall.unpack(data)
        except ProtocolError as exc:
            kind_tag = fcall.header(data)
            assert kind_tag is not None
            self.reply_error(kind_tag[1], f"{INVALID}: {exc}", None, started)
            return
        tag = message.tag
        if message.TYPE not in _REQUESTS:
            self.reply_error(tag, f"{INVALID}: {type(message).__name__} is not a request", message, started)
            return
        if isinstance(message, Tversion):
            self.finish(message, self.version(message), started)
            return
        if self.msize is None:
            self.reply_error(tag, f"{INVALID}: the first message must be Tversion", message, started)
            return
        if tag in self.pending:
            raise _Close(f"tag {tag} is already in use by a request in flight")
        flush = isinstance(message, Tflush)  # a flush is never answered with Rerror
        if len(self.pending) >= self.limits.pending and not flush:
            text = f"{BUSY}: {len(self.pending)} requests in flight on this connection"
            self.reply_error(tag, text, message, started)
            return
        try:
            reply = self.dispatch(message, started)
        except StyxError as exc:
            reply = Rerror(tag, str(exc))
        except Exception as exc:  # a bug: answer it and keep serving
            _log.exception("%s: %s failed", self.name, fcall.summary(message))
            reply = Rerror(tag, error_text(exc))
        if reply is not None:
            self.finish(message, reply, started)

    def finish(self, message: Message, reply: Message, started: float) -> None:
        self.send(reply)
        if _log.isEnabledFor(logging.INFO):
            elapsed = (time.perf_counter() - started) * 1000
            _log.info("%s %s -> %s %.2fms", self.name, fcall.summary(message), fcall.summary(reply), elapsed)

    def reply_error(self, tag: int, text: str, message: Message | None, started: float) -> None:
        reply = Rerror(tag, text)
        if message is None:
            self.send(reply)
            _log.info("%s (malformed) -> %s", self.name, fcall.summary(reply))
        else:
            self.finish(message, reply, started)

    # -- dispatch -------------------------------------------------------------------------------

    def dispatch(self, m: Message, started: float) -> Message | None:
        """The reply to a message that needs no waiting, or None once a task will answer it."""
        tag = m.tag
        if isinstance(m, Tread):
            fid = self.opened(m.fid)
            assert fid.file is not None
            if not fid.file.readable:
                raise StyxError.make(PERMISSION, f"fid {m.fid} is not open for reading")
            count = min(m.count, self.io_unit())
            if fid.node.is_dir:
                return Rread(tag, self.read_dir(fid, m.offset, count))
            data = fid.file.try_read(m.offset, count)
            if data is not None:
                return Rread(tag, data)
            pending = _Pending(flushable=True)
            self.pending[tag] = pending
            try:
                cancel = fid.file.read_later(m.offset, count, self.deliverer(m, pending, started))
            except BaseException:
                if self.pending.get(tag) is pending:
                    del self.pending[tag]
                raise
            if cancel is None:  # this file cannot answer later by itself: a task awaits its read
                del self.pending[tag]
                self.spawn(m, started, flushable=True)
            elif self.pending.get(tag) is pending:
                pending.cancel = cancel
            return None
        if isinstance(m, Twrite):
            fid = self.opened(m.fid)
            if fid.file is None or not fid.file.writable:
                raise StyxError.make(PERMISSION, f"fid {m.fid} is not open for writing")
            self.spawn(m, started, flushable=False)
            return None
        if isinstance(m, Tflush):
            old = self.pending.get(m.oldtag)
            if old is None:
                return Rflush(tag)
            if old.cancel is not None:  # a waiting read: withdrawn, never answered
                old.flushed = True
                old.cancel()
                del self.pending[m.oldtag]
                return Rflush(tag)
            self.spawn(m, started, flushable=False)
            return None
        if isinstance(m, Twalk):
            return self.walk(m)
        if isinstance(m, Topen):
            return self.open(m)
        if isinstance(m, Tclunk):
            self.clunk(m.fid)
            return Rclunk(tag)
        if isinstance(m, Tstat):
            fid = self.known(m.fid)
            self.tree.check(fid.node)
            return Rstat(tag, self.tree.stat(fid.node, fid.uname))
        if isinstance(m, Twstat):
            fid = self.known(m.fid)
            self.tree.check(fid.node)
            self.tree.wstat(fid.node, m.stat, fid.uname)
            return Rwstat(tag)
        if isinstance(m, Tattach):
            return self.attach(m)
        if isinstance(m, Tauth):
            raise StyxError.make(INVALID, "authentication not required; attach with afid NOFID")
        if isinstance(m, Tremove):
            self.clunk(m.fid)  # remove(5): the fid is clunked even when the remove fails
            raise StyxError.make(PERMISSION, "files cannot be removed here")
        if isinstance(m, Tcreate):
            self.known(m.fid)
            raise StyxError.make(PERMISSION, "files cannot be created here")
        raise StyxError.make(INVALID, f"unexpected {type(m).__name__}")

    def io_unit(self) -> int:
        assert self.msize is not None
        return self.msize - IOHDRSZ

    # -- fids -----------------------------------------------------------------------------------

    def known(self, number: int) -> _Fid:
        fid = self.fids.get(number)
        if fid is None:
            raise StyxError.make(INVALID, f"unknown fid {number}")
        return fid

    def opened(self, number: int) -> _Fid:
        fid = self.known(number)
        if fid.file is None:
            raise StyxError.make(INVALID, f"fid {number} is not open")
        return fid

    def add(self, number: int, fid: _Fid) -> None:
        if number == NOFID:
            raise StyxError.make(INVALID, "NOFID cannot name a file")
        if number not in self.fids and len(self.fids) >= self.limits.fids:
            raise StyxError.make(BUSY, f"too many fids on this connection (the limit is {self.limits.fids})")
        self.fids[number] = fid

    def clunk(self, number: int) -> None:
        fid = self.fids.pop(number, None)
        if fid is None:
            raise StyxError.make(INVALID, f"unknown fid {number}")
        if fid.file is not None:
            fid.file.clunk()

    def clunk_all(self) -> None:
        fids, self.fids = self.fids, {}
        for fid in fids.values():
            if fid.file is not None:
                try:
                    fid.file.clunk()
                except Exception:
                    _log.exception("%s: clunk failed", self.name)

    # -- the messages ---------------------------------------------------------------------------

    def version(self, m: Tversion) -> Message:
        """version(5): abort everything in flight, clunk every fid, agree on msize and version."""
        self.abort_all()
        self.clunk_all()
        self.msize = None
        answer = _negotiate(m.version)
        msize = min(m.msize, self.limits.msize)
        if answer == fcall.VERSION:
            if msize < MIN_MSIZE:
                return Rerror(m.tag, f"{INVALID}: msize {m.msize} is too small (at least {MIN_MSIZE})")
            self.msize = msize
        return Rversion(m.tag, msize, answer)

    def attach(self, m: Tattach) -> Message:
        if m.fid in self.fids:
            raise StyxError.make(INVALID, f"fid {m.fid} is already in use")
        if m.afid != NOFID:
            raise StyxError.make(INVALID, "authentication not required; attach with afid NOFID")
        if m.aname not in ("", "/"):
            raise StyxError.make(NOT_FOUND, f"no tree named {m.aname!r} (attach to '' or '/')")
        self.add(m.fid, _Fid(self.tree.root, m.uname))
        return Rattach(m.tag, self.tree.root.qid)

    def walk(self, m: Twalk) -> Message:
        """walk(5): Rerror if the first name fails, else the qids so far; newfid only on success."""
        fid = self.known(m.fid)
        if fid.file is not None:
            raise StyxError.make(INVALID, f"fid {m.fid} is open and cannot be walked")
        if m.newfid != m.fid and m.newfid in self.fids:
            raise StyxError.make(INVALID, f"newfid {m.newfid} is already in use")
        tree = self.tree
        node = fid.node
        tree.check(node)
        qids = []
        for index, name in enumerate(m.names):
            try:
                node = tree.walk(node, name)
            except StyxError:
                if index == 0:
                    raise
                break
            qids.append(node.qid)
        if len(qids) == len(m.names):
            self.add(m.newfid, _Fid(node, fid.uname))
        return Rwalk(m.tag, tuple(qids))

    def open(self, m: Topen) -> Message:
        fid = self.known(m.fid)
        if fid.file is not None:
            raise StyxError.make(INVALID, f"fid {m.fid} is already open")
        fid.file = self.tree.open(fid.node, m.mode, self.peer)
        return Ropen(m.tag, fid.node.qid, self.io_unit())

    def read_dir(self, fid: _Fid, offset: int, count: int) -> bytes:
        """Whole stat entries from a snapshot taken at offset 0; offsets must fall between entries."""
        tree = self.tree
        if offset == 0:
            tree.check(fid.node)
            fid.entries = [tree.stat(child, fid.uname).pack() for child in tree.children(fid.node)]
        position, index, entries = 0, 0, fid.entries
        while index < len(entries) and position < offset:
            position += len(entries[index])
            index += 1
        if position != offset:
            raise StyxError.make(INVALID, f"directory read at offset {offset}, which is not between entries")
        chunks: list[bytes] = []
        used = 0
        while index < len(entries) and used + len(entries[index]) <= count:
            chunks.append(entries[index])
            used += len(entries[index])
            index += 1
        if not chunks and index < len(entries):
            raise StyxError.make(INVALID, f"read count {count} is too small for a directory entry")
        return b"".join(chunks)

    # -- requests answered by tasks -------------------------------------------------------------

    def deliverer(self, m: Tread, pending: _Pending, started: float) -> Callable[[bytes | StyxError], None]:
        """The callback that answers a waiting read (unless it was flushed meanwhile)."""

        def deliver(result: bytes | StyxError) -> None:
            if self.pending.get(m.tag) is pending:
                del self.pending[m.tag]
            if pending.flushed:
                return
            pending.flushed = True  # answered: nothing more may go out for this tag
            if isinstance(result, StyxError):
                self.finish(m, Rerror(m.tag, str(result)), started)
            else:
                self.finish(m, Rread(m.tag, result), started)

        return deliver

    def spawn(self, m: Message, started: float, *, flushable: bool) -> None:
        pending = _Pending(flushable)
        self.pending[m.tag] = pending
        task = asyncio.get_running_loop().create_task(self.complete(m, pending, started))
        pending.task = task

        def done(_: asyncio.Task[None]) -> None:
            if self.pending.get(m.tag) is pending:
                del self.pending[m.tag]

        task.add_done_callback(done)

    async def complete(self, m: Message, pending: _Pending, started: float) -> None:
        try:
            reply = await self.answer(m)
        except asyncio.CancelledError:
            if pending.flushed:
                if _log.isEnabledFor(logging.INFO):
                    _log.info("%s %s -> flushed", self.name, fcall.summary(m))
                return
            raise
        except StyxError as exc:
            reply = Rerror(m.tag, str(exc))
        except Exception as exc:
            _log.exception("%s: %s failed", self.name, fcall.summary(m))
            reply = Rerror(m.tag, error_text(exc))
        if self.pending.get(m.tag) is pending:
            del self.pending[m.tag]
        if not pending.flushed:
            self.finish(m, reply, started)

    async def answer(self, m: Message) -> Message:
        if isinstance(m, Tread):
            fid = self.opened(m.fid)
            assert fid.file is not None
            return Rread(m.tag, await fid.file.read(m.offset, min(m.count, self.io_unit())))
        if isinstance(m, Twrite):
            fid = self.opened(m.fid)
            assert fid.file is not None
            return Rwrite(m.tag, await fid.file.write(m.offset, m.data))
        if isinstance(m, Tflush):
            old = self.pending.get(m.oldtag)
            if old is not None and old.task is not None:
                if old.flushable:
                    old.flushed = True
                    old.task.cancel()
                await asyncio.wait({old.task})
            return Rflush(m.tag)
        raise StyxError.make(INVALID, f"unexpected {type(m).__name__}")

    def abort_all(self) -> None:
        """Withdraw every request in flight without replies (Tversion, or the connection closing)."""
        pending, self.pending = self.pending, {}
        for entry in pending.values():
            entry.flushed = True
            if entry.cancel is not None:
                entry.cancel()
            if entry.task is not None:
                entry.task.cancel()


class StyxServer:
    """Serves a :class:`Tree` over one listening socket; ``await start()``, later ``await close()``."""

    def __init__(
        self,
        registry: ModelRegistry | None = None,
        *,
        models_root: str | os.PathLike[str] | None = None,
        backend: str = "native",
        load_params: LoadParams | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.limits = limits if limits is not None else Limits()
        self.registry = registry if registry is not None else default_registry()
        self.tree = Tree(
            self.registry,
            models_root=models_root,
            backend=backend,
            load_params=load_params,
            max_tokens=self.limits.max_tokens,
            max_queued=self.limits.queued,
        )
        self.address: Address | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._count = 0
        self._unix_path: str | None = None

    async def start(self, listen: str = DEFAULT_ADDRESS) -> Address:
        """Listen on a dial string; returns the address bound (the real port when 0 was asked for)."""
        address = parse_address(listen)
        loop = asyncio.get_running_loop()
        if address.network == "unix":
            _clear_stale_socket(address.path)
            self._server = await loop.create_unix_server(self._protocol, path=address.path)
            self._unix_path = address.path
            self.address = address
        else:
            self._server = await loop.create_server(self._protocol, address.host, address.port)
            port = self._server.sockets[0].getsockname()[1]
            self.address = Address("tcp", host=address.host, port=port)
        _log.info("serving 9P2000 on %s", self.address)
        return self.address

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    def _protocol(self) -> _Connection:
        self._count += 1
        return _Connection(self, f"#{self._count}")

    def admit(self, connection: _Connection) -> bool:
        """Count a new connection in, unless that would pass the limit."""
        if len(self._connections) >= self.limits.connections:
            return False
        self._connections.add(connection)
        return True

    def forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)

    async def close(self) -> None:
        """Stop listening, drop every connection, stop generation and free the models loaded here."""
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.abort()
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        await self.tree.close()
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)
            self._unix_path = None
        _log.info("server closed")


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse to replace anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat_module.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
    else:
        raise OSError(f"another server is listening on {path}")
    finally:
        probe.close()


class ServerThread:
    """A :class:`StyxServer` on its own event loop in a daemon thread; a context manager."""

    def __init__(self, server: StyxServer, listen: str = "tcp!127.0.0.1!0") -> None:
        self.server = server
        self.listen = listen
        self.loop: asyncio.AbstractEventLoop | None = None
        self.address: Address | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def start(self) -> Address:
        """Start the thread and return the address once the server listens."""
        self._thread = threading.Thread(target=self._main, name="styx-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self.address is not None
        return self.address

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.address = await self.server.start(self.listen)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()

    def stop(self) -> None:
        """Close the server (freeing what it loaded) and end the thread."""
        if self.loop is not None and self._stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
