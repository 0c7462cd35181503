"""A raw 9P2000 client for the tests: messages built byte by byte with struct, replies taken apart
the same way. It shares no code with llambo.styx.fcall on purpose, so the server is checked
against the manual's layouts, not against its own codec.
"""

from __future__ import annotations

import select
import socket
import struct
from dataclasses import dataclass
from typing import Any

# message types (intro(5))
TVERSION, RVERSION, TAUTH, RAUTH, TATTACH, RATTACH = 100, 101, 102, 103, 104, 105
RERROR, TFLUSH, RFLUSH, TWALK, RWALK, TOPEN, ROPEN = 107, 108, 109, 110, 111, 112, 113
TCREATE, RCREATE, TREAD, RREAD, TWRITE, RWRITE = 114, 115, 116, 117, 118, 119
TCLUNK, RCLUNK, TREMOVE, RREMOVE, TSTAT, RSTAT, TWSTAT, RWSTAT = 120, 121, 122, 123, 124, 125, 126, 127

NOTAG = 0xFFFF
NOFID = 0xFFFFFFFF
OREAD, OWRITE, ORDWR, OEXEC, OTRUNC, ORCLOSE = 0, 1, 2, 3, 0x10, 0x40
QTDIR = 0x80
DMDIR = 0x80000000


def s(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<H", len(data)) + data


def msg(kind: int, tag: int, body: bytes = b"") -> bytes:
    return struct.pack("<IBH", 7 + len(body), kind, tag) + body


def tversion(msize: int = 8192, version: str = "9P2000", tag: int = NOTAG) -> bytes:
    return msg(TVERSION, tag, struct.pack("<I", msize) + s(version))


def tauth(tag: int, afid: int, uname: str = "glenda", aname: str = "") -> bytes:
    return msg(TAUTH, tag, struct.pack("<I", afid) + s(uname) + s(aname))


def tattach(tag: int, fid: int, afid: int = NOFID, uname: str = "glenda", aname: str = "") -> bytes:
    return msg(TATTACH, tag, struct.pack("<II", fid, afid) + s(uname) + s(aname))


def tflush(tag: int, oldtag: int) -> bytes:
    return msg(TFLUSH, tag, struct.pack("<H", oldtag))


def twalk(tag: int, fid: int, newfid: int, *names: str) -> bytes:
    return msg(TWALK, tag, struct.pack("<IIH", fid, newfid, len(names)) + b"".join(s(n) for n in names))


def topen(tag: int, fid: int, mode: int) -> bytes:
    return msg(TOPEN, tag, struct.pack("<IB", fid, mode))


def tcreate(tag: int, fid: int, name: str, perm: int = 0o666, mode: int = OREAD) -> bytes:
    return msg(TCREATE, tag, struct.pack("<I", fid) + s(name) + struct.pack("<IB", perm, mode))


def tread(tag: int, fid: int, offset: int, count: int) -> bytes:
    return msg(TREAD, tag, struct.pack("<IQI", fid, offset, count))


def twrite(tag: int, fid: int, offset: int, data: bytes) -> bytes:
    return msg(TWRITE, tag, struct.pack("<IQI", fid, offset, len(data)) + data)


def tclunk(tag: int, fid: int) -> bytes:
    return msg(TCLUNK, tag, struct.pack("<I", fid))


def tremove(tag: int, fid: int) -> bytes:
    return msg(TREMOVE, tag, struct.pack("<I", fid))


def tstat(tag: int, fid: int) -> bytes:
    return msg(TSTAT, tag, struct.pack("<I", fid))


def stat_entry(
    *,
    kind: int = 0xFFFF,
    dev: int = 0xFFFFFFFF,
    qid: tuple[int, int, int] = (0xFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF),
    mode: int = 0xFFFFFFFF,
    atime: int = 0xFFFFFFFF,
    mtime: int = 0xFFFFFFFF,
    length: int = 0xFFFFFFFFFFFFFFFF,
    name: str = "",
    uid: str = "",
    gid: str = "",
    muid: str = "",
) -> bytes:
    """A stat entry (its own size[2] first); the defaults are wstat's "don't touch" values."""
    body = (
        struct.pack("<HI", kind, dev)
        + struct.pack("<BIQ", *qid)
        + struct.pack("<IIIQ", mode, atime, mtime, length)
        + s(name)
        + s(uid)
        + s(gid)
        + s(muid)
    )
    return struct.pack("<H", len(body)) + body


def twstat(tag: int, fid: int, entry: bytes) -> bytes:
    return msg(TWSTAT, tag, struct.pack("<IH", fid, len(entry)) + entry)


# -- taking replies apart ----------------------------------------------------------------------


@dataclass
class Reply:
    kind: int
    tag: int
    body: bytes

    def error(self) -> str:
        assert self.kind == RERROR, f"expected Rerror, got type {self.kind}"
        (size,) = struct.unpack_from("<H", self.body)
        assert 2 + size == len(self.body)
        return self.body[2:].decode()

    def expect(self, kind: int) -> Reply:
        if self.kind == RERROR:
            raise AssertionError(f"expected type {kind}, got Rerror {self.error()!r}")
        assert self.kind == kind, f"expected type {kind}, got {self.kind}"
        return self


def qid_at(data: bytes, offset: int) -> tuple[int, int, int]:
    kind, version, path = struct.unpack_from("<BIQ", data, offset)
    return kind, version, path


def parse_rversion(reply: Reply) -> tuple[int, str]:
    reply.expect(RVERSION)
    msize, size = struct.unpack_from("<IH", reply.body)
    assert len(reply.body) == 6 + size
    return msize, reply.body[6:].decode()


def parse_rwalk(reply: Reply) -> list[tuple[int, int, int]]:
    reply.expect(RWALK)
    (count,) = struct.unpack_from("<H", reply.body)
    assert len(reply.body) == 2 + 13 * count
    return [qid_at(reply.body, 2 + 13 * i) for i in range(count)]


def parse_ropen(reply: Reply) -> tuple[tuple[int, int, int], int]:
    reply.expect(ROPEN)
    assert len(reply.body) == 17
    return qid_at(reply.body, 0), struct.unpack_from("<I", reply.body, 13)[0]


def parse_rread(reply: Reply) -> bytes:
    reply.expect(RREAD)
    (count,) = struct.unpack_from("<I", reply.body)
    assert len(reply.body) == 4 + count
    return reply.body[4:]


def parse_rwrite(reply: Reply) -> int:
    reply.expect(RWRITE)
    assert len(reply.body) == 4
    count: int = struct.unpack("<I", reply.body)[0]
    return count


def _string_at(data: bytes, offset: int) -> tuple[str, int]:
    (size,) = struct.unpack_from("<H", data, offset)
    return data[offset + 2 : offset + 2 + size].decode(), offset + 2 + size


def parse_entry(data: bytes, offset: int = 0) -> tuple[dict[str, Any], int]:
    """One stat entry at ``offset`` (size[2] first); the entry and the offset past it."""
    (size,) = struct.unpack_from("<H", data, offset)
    end = offset + 2 + size
    assert end <= len(data), "stat entry runs past the data"
    kind, dev = struct.unpack_from("<HI", data, offset + 2)
    qid = qid_at(data, offset + 8)
    mode, atime, mtime, length = struct.unpack_from("<IIIQ", data, offset + 21)
    position = offset + 41
    names = []
    for _ in range(4):
        text, position = _string_at(data, position)
        names.append(text)
    assert position == end, "stat size does not match its fields"
    entry = dict(type=kind, dev=dev, qid=qid, mode=mode, atime=atime, mtime=mtime, length=length)
    entry.update(zip(("name", "uid", "gid", "muid"), names, strict=True))
    return entry, end


def parse_rstat(reply: Reply) -> dict[str, Any]:
    reply.expect(RSTAT)
    (outer,) = struct.unpack_from("<H", reply.body)
    assert len(reply.body) == 2 + outer
    (inner,) = struct.unpack_from("<H", reply.body, 2)
    assert inner == outer - 2, "Rstat's n[2] must be the stat's own size + 2"
    entry, end = parse_entry(reply.body, 2)
    assert end == len(reply.body)
    return entry


def parse_dir(data: bytes) -> list[dict[str, Any]]:
    entries, position = [], 0
    while position < len(data):
        entry, position = parse_entry(data, position)
        entries.append(entry)
    return entries


# -- a connection ------------------------------------------------------------------------------


class Raw:
    """A socket speaking hand-built 9P; replies can be awaited one by one or by tag."""

    def __init__(self, address: str, timeout: float = 20.0) -> None:
        if address.startswith("unix!"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address[5:])
        else:
            _, host, port = address.split("!")
            self.sock = socket.create_connection((host, int(port)), timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.stash: list[Reply] = []
        self.next_tag = 1

    def tag(self) -> int:
        self.next_tag += 1
        return self.next_tag

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed by the server")
            data += chunk
        return bytes(data)

    def recv(self) -> Reply:
        """The next reply on the wire (or a stashed one)."""
        if self.stash:
            return self.stash.pop(0)
        (size,) = struct.unpack("<I", self._exactly(4))
        assert size >= 7, f"reply size {size}"
        rest = self._exactly(size - 4)
        kind, tag = struct.unpack_from("<BH", rest)
        return Reply(kind, tag, rest[3:])

    def recv_tag(self, tag: int) -> Reply:
        """The reply with ``tag``; others that arrive first are kept for later."""
        for index, reply in enumerate(self.stash):
            if reply.tag == tag:
                return self.stash.pop(index)
        while True:
            (size,) = struct.unpack("<I", self._exactly(4))
            rest = self._exactly(size - 4)
            kind, got = struct.unpack_from("<BH", rest)
            reply = Reply(kind, got, rest[3:])
            if got == tag:
                return reply
            self.stash.append(reply)

    def rpc(self, data: bytes) -> Reply:
        (tag,) = struct.unpack_from("<H", data, 5)
        self.send(data)
        return self.recv_tag(tag)

    def pending(self, wait: float = 0.2) -> bool:
        """Whether bytes (a reply, or the close) arrive within ``wait`` seconds."""
        if self.stash:
            return True
        readable, _, _ = select.select([self.sock], [], [], wait)
        return bool(readable)

    def is_closed(self, wait: float = 5.0) -> bool:
        """Whether the server closes the connection within ``wait`` seconds (replies skipped)."""
        self.sock.settimeout(wait)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        finally:
            self.sock.settimeout(self.timeout)

    def close(self) -> None:
        self.sock.close()

    # -- conveniences built on the raw messages ------------------------------------------------

    def session(self, msize: int = 8192, root: int = 0, uname: str = "glenda") -> Raw:
        assert parse_rversion(self.rpc(tversion(msize)))[1] == "9P2000"
        self.rpc(tattach(self.tag(), root, uname=uname)).expect(RATTACH)
        return self

    def walk_open(self, fid: int, path: str, mode: int, root: int = 0) -> int:
        names = [p for p in path.split("/") if p]
        qids = parse_rwalk(self.rpc(twalk(self.tag(), root, fid, *names)))
        assert len(qids) == len(names), f"walk to {path} stopped after {len(qids)}"
        parse_ropen(self.rpc(topen(self.tag(), fid, mode)))
        return fid

    def read(self, fid: int, offset: int = 0, count: int = 8000) -> bytes:
        return parse_rread(self.rpc(tread(self.tag(), fid, offset, count)))

    def read_all(self, fid: int, count: int = 8000) -> bytes:
        data = bytearray()
        while True:
            chunk = self.read(fid, len(data), count)
            if not chunk:
                return bytes(data)
            data += chunk

    def write(self, fid: int, data: bytes, offset: int = 0) -> int:
        return parse_rwrite(self.rpc(twrite(self.tag(), fid, offset, data)))

    def clunk(self, fid: int) -> None:
        self.rpc(tclunk(self.tag(), fid)).expect(RCLUNK)

    def cat(self, path: str, fid: int = 90) -> bytes:
        self.walk_open(fid, path, OREAD)
        try:
            return self.read_all(fid)
        finally:
            self.clunk(fid)

    def load(self, path: str, *extra: str, fid: int = 91) -> int:
        """Load through ctl and read back the id, on one fid."""
        self.walk_open(fid, "ctl", ORDWR)
        try:
            self.write(fid, " ".join(["load", path, *extra]).encode())
            return int(self.read(fid).decode())
        finally:
            self.clunk(fid)
