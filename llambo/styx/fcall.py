"""9P2000 messages and their wire format (Plan 9 manual, section 5): dataclasses to bytes and back.

A message is ``size[4] type[1] tag[2]`` and then its fields, all integers little-endian, strings
as ``len[2]`` plus UTF-8. :func:`unpack` checks every length against the bytes actually present,
so a truncated or hostile message raises :class:`ProtocolError` (never IndexError, never a large
allocation), and a message with bytes left over is refused too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import ClassVar, TypeAlias

__all__ = [
    "DMAPPEND",
    "DMDIR",
    "DMEXCL",
    "IOHDRSZ",
    "MAXWELEM",
    "NOFID",
    "NOTAG",
    "OEXEC",
    "ORCLOSE",
    "ORDWR",
    "OREAD",
    "OTRUNC",
    "OWRITE",
    "QTDIR",
    "QTFILE",
    "VERSION",
    "Message",
    "ProtocolError",
    "Qid",
    "Rattach",
    "Rauth",
    "Rclunk",
    "Rcreate",
    "Rerror",
    "Rflush",
    "Ropen",
    "Rread",
    "Rremove",
    "Rstat",
    "Rversion",
    "Rwalk",
    "Rwrite",
    "Rwstat",
    "Stat",
    "Tattach",
    "Tauth",
    "Tclunk",
    "Tcreate",
    "Tflush",
    "Topen",
    "Tread",
    "Tremove",
    "Tstat",
    "Tversion",
    "Twalk",
    "Twrite",
    "Twstat",
    "header",
    "pack",
    "summary",
    "unpack",
    "unpack_entries",
]

VERSION = "9P2000"
NOTAG = 0xFFFF
NOFID = 0xFFFFFFFF
MAXWELEM = 16
IOHDRSZ = 24  # the most a Tread/Twrite header takes: what msize leaves for data is msize - IOHDRSZ
HEADER = 7  # size[4] type[1] tag[2]

# open(5) modes
OREAD, OWRITE, ORDWR, OEXEC = 0, 1, 2, 3
OTRUNC, OCEXEC, ORCLOSE = 0x10, 0x20, 0x40

# qid types and mode bits (intro(5), stat(5))
QTDIR, QTAPPEND, QTEXCL, QTAUTH, QTFILE = 0x80, 0x40, 0x20, 0x08, 0x00
DMDIR, DMAPPEND, DMEXCL = 0x80000000, 0x40000000, 0x20000000

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEAD = struct.Struct("<IBH")
_QID = struct.Struct("<BIQ")
_STAT_FIXED = struct.Struct("<HI13sIIIQ")  # type dev qid mode atime mtime length
_IO = struct.Struct("<IBHI")  # size type tag count: the head of Rread


class ProtocolError(Exception):
    """A message that is malformed: too short, too long, a bad length or UTF-8, an unknown type."""


# -- building blocks -----------------------------------------------------------------------------


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError(f"a 9P string holds at most 65535 bytes, got {len(data)}")
    return _U16.pack(len(data)) + data


@dataclass(frozen=True, slots=True)
class Qid:
    """The server's identity for a file: type (QTDIR, ...), version and a unique path."""

    type: int
    version: int
    path: int

    def pack(self) -> bytes:
        return _QID.pack(self.type, self.version, self.path)


@dataclass(frozen=True, slots=True)
class Stat:
    """A directory entry (stat(5)); ``~0`` / empty fields mean "don't touch" in a wstat."""

    type: int
    dev: int
    qid: Qid
    mode: int
    atime: int
    mtime: int
    length: int
    name: str
    uid: str
    gid: str
    muid: str

    @classmethod
    def null(cls) -> Stat:
        """The wstat that changes nothing (every field "don't touch")."""
        return cls(
            0xFFFF, 0xFFFFFFFF, Qid(0xFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF), 0xFFFFFFFF,
            0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF, "", "", "", "",
        )  # fmt: skip

    def pack(self) -> bytes:
        """The entry as stored in a directory read: its own size[2] first."""
        body = (
            _STAT_FIXED.pack(
                self.type, self.dev, self.qid.pack(), self.mode, self.atime, self.mtime, self.length
            )
            + _string(self.name)
            + _string(self.uid)
            + _string(self.gid)
            + _string(self.muid)
        )
        return _U16.pack(len(body)) + body


class _Reader:
    """Reads fields from a message body, raising ProtocolError when they run past its end."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, size: int, what: str) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise ProtocolError(f"message too short for {what}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self, what: str) -> int:
        value: int = _U8.unpack(self.take(1, what))[0]
        return value

    def u16(self, what: str) -> int:
        value: int = _U16.unpack(self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = _U32.unpack(self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = _U64.unpack(self.take(8, what))[0]
        return value

    def string(self, what: str) -> str:
        raw = self.take(self.u16(what), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not valid UTF-8") from None

    def qid(self, what: str = "qid") -> Qid:
        kind, version, path = _QID.unpack(self.take(13, what))
        return Qid(kind, version, path)

    def entry(self) -> Stat:
        """A stat entry as a directory read holds it: ``size[2]`` and then the fields."""
        size = self.u16("stat size")
        inner = _Reader(self.take(size, "stat"), 0)
        fixed = inner.take(_STAT_FIXED.size, "stat fields")
        kind, dev, qid_raw, mode, atime, mtime, length = _STAT_FIXED.unpack(fixed)
        qid = _Reader(qid_raw, 0).qid()
        names = [inner.string(field) for field in ("name", "uid", "gid", "muid")]
        inner.end()
        return Stat(kind, dev, qid, mode, atime, mtime, length, *names)

    def stat(self) -> Stat:
        """``n[2]`` and then one entry that fills exactly those n bytes (Rstat, Twstat)."""
        outer = self.u16("stat length")
        inner = _Reader(self.take(outer, "stat"), 0)
        result = inner.entry()
        inner.end()
        return result

    def end(self) -> None:
        extra = len(self.data) - self.pos
        if extra:
            raise ProtocolError(f"message has {extra} bytes past its last field")


# -- the messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tversion:
    TYPE: ClassVar[int] = 100
    tag: int
    msize: int
    version: str

    def body(self) -> bytes:
        return _U32.pack(self.msize) + _string(self.version)


@dataclass(frozen=True, slots=True)
class Rversion:
    TYPE: ClassVar[int] = 101
    tag: int
    msize: int
    version: str

    def body(self) -> bytes:
        return _U32.pack(self.msize) + _string(self.version)


@dataclass(frozen=True, slots=True)
class Tauth:
    TYPE: ClassVar[int] = 102
    tag: int
    afid: int
    uname: str
    aname: str

    def body(self) -> bytes:
        return _U32.pack(self.afid) + _string(self.uname) + _string(self.aname)


@dataclass(frozen=True, slots=True)
class Rauth:
    TYPE: ClassVar[int] = 103
    tag: int
    aqid: Qid

    def body(self) -> bytes:
        return self.aqid.pack()


@dataclass(frozen=True, slots=True)
class Tattach:
    TYPE: ClassVar[int] = 104
    tag: int
    fid: int
    afid: int
    uname: str
    aname: str

    def body(self) -> bytes:
        return _U32.pack(self.fid) + _U32.pack(self.afid) + _string(self.uname) + _string(self.aname)


@dataclass(frozen=True, slots=True)
class Rattach:
    TYPE: ClassVar[int] = 105
    tag: int
    qid: Qid

    def body(self) -> bytes:
        return self.qid.pack()


@dataclass(frozen=True, slots=True)
class Rerror:
    TYPE: ClassVar[int] = 107
    tag: int
    ename: str

    def body(self) -> bytes:
        return _string(self.ename)


@dataclass(frozen=True, slots=True)
class Tflush:
    TYPE: ClassVar[int] = 108
    tag: int
    oldtag: int

    def body(self) -> bytes:
        return _U16.pack(self.oldtag)


@dataclass(frozen=True, slots=True)
class Rflush:
    TYPE: ClassVar[int] = 109
    tag: int

    def body(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class Twalk:
    TYPE: ClassVar[int] = 110
    tag: int
    fid: int
    newfid: int
    names: tuple[str, ...]

    def body(self) -> bytes:
        if len(self.names) > MAXWELEM:
            raise ValueError(f"a walk takes at most {MAXWELEM} names")
        head = _U32.pack(self.fid) + _U32.pack(self.newfid) + _U16.pack(len(self.names))
        return head + b"".join(_string(name) for name in self.names)


@dataclass(frozen=True, slots=True)
class Rwalk:
    TYPE: ClassVar[int] = 111
    tag: int
    qids: tuple[Qid, ...]

    def body(self) -> bytes:
        return _U16.pack(len(self.qids)) + b"".join(qid.pack() for qid in self.qids)


@dataclass(frozen=True, slots=True)
class Topen:
    TYPE: ClassVar[int] = 112
    tag: int
    fid: int
    mode: int

    def body(self) -> bytes:
        return _U32.pack(self.fid) + _U8.pack(self.mode)


@dataclass(frozen=True, slots=True)
class Ropen:
    TYPE: ClassVar[int] = 113
    tag: int
    qid: Qid
    iounit: int

    def body(self) -> bytes:
        return self.qid.pack() + _U32.pack(self.iounit)


@dataclass(frozen=True, slots=True)
class Tcreate:
    TYPE: ClassVar[int] = 114
    tag: int
    fid: int
    name: str
    perm: int
    mode: int

    def body(self) -> bytes:
        return _U32.pack(self.fid) + _string(self.name) + _U32.pack(self.perm) + _U8.pack(self.mode)


@dataclass(frozen=True, slots=True)
class Rcreate:
    TYPE: ClassVar[int] = 115
    tag: int
    qid: Qid
    iounit: int

    def body(self) -> bytes:
        return self.qid.pack() + _U32.pack(self.iounit)


@dataclass(frozen=True, slots=True)
class Tread:
    TYPE: ClassVar[int] = 116
    tag: int
    fid: int
    offset: int
    count: int

    def body(self) -> bytes:
        return _U32.pack(self.fid) + _U64.pack(self.offset) + _U32.pack(self.count)


@dataclass(frozen=True, slots=True)
class Rread:
    TYPE: ClassVar[int] = 117
    tag: int
    data: bytes

    def body(self) -> bytes:
        return _U32.pack(len(self.data)) + self.data


@dataclass(frozen=True, slots=True)
class Twrite:
    TYPE: ClassVar[int] = 118
    tag: int
    fid: int
    offset: int
    data: bytes

    def body(self) -> bytes:
        return _U32.pack(self.fid) + _U64.pack(self.offset) + _U32.pack(len(self.data)) + self.data


@dataclass(frozen=True, slots=True)
class Rwrite:
    TYPE: ClassVar[int] = 119
    tag: int
    count: int

    def body(self) -> bytes:
        return _U32.pack(self.count)


@dataclass(frozen=True, slots=True)
class Tclunk:
    TYPE: ClassVar[int] = 120
    tag: int
    fid: int

    def body(self) -> bytes:
        return _U32.pack(self.fid)


@dataclass(frozen=True, slots=True)
class Rclunk:
    TYPE: ClassVar[int] = 121
    tag: int

    def body(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class Tremove:
    TYPE: ClassVar[int] = 122
    tag: int
    fid: int

    def body(self) -> bytes:
        return _U32.pack(self.fid)


@dataclass(frozen=True, slots=True)
class Rremove:
    TYPE: ClassVar[int] = 123
    tag: int

    def body(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class Tstat:
    TYPE: ClassVar[int] = 124
    tag: int
    fid: int

    def body(self) -> bytes:
        return _U32.pack(self.fid)


@dataclass(frozen=True, slots=True)
class Rstat:
    TYPE: ClassVar[int] = 125
    tag: int
    stat: Stat

    def body(self) -> bytes:
        entry = self.stat.pack()
        return _U16.pack(len(entry)) + entry


@dataclass(frozen=True, slots=True)
class Twstat:
    TYPE: ClassVar[int] = 126
    tag: int
    fid: int
    stat: Stat

    def body(self) -> bytes:
        entry = self.stat.pack()
        return _U32.pack(self.fid) + _U16.pack(len(entry)) + entry


@dataclass(frozen=True, slots=True)
class Rwstat:
    TYPE: ClassVar[int] = 127
    tag: int

    def body(self) -> bytes:
        return b""


Message: TypeAlias = (
    Tversion | Rversion | Tauth | Rauth | Tattach | Rattach | Rerror | Tflush | Rflush | Twalk | Rwalk
    | Topen | Ropen | Tcreate | Rcreate | Tread | Rread | Twrite | Rwrite | Tclunk | Rclunk | Tremove
    | Rremove | Tstat | Rstat | Twstat | Rwstat
)  # fmt: skip


def pack(message: Message) -> bytes:
    """The bytes of one message, size field included."""
    if isinstance(message, Rread):  # the hot path: no intermediate body
        data = message.data
        return _IO.pack(HEADER + 4 + len(data), Rread.TYPE, message.tag, len(data)) + data
    body = message.body()
    return _HEAD.pack(HEADER + len(body), message.TYPE, message.tag) + body


# -- decoding ----------------------------------------------------------------------------------


def _walk_names(reader: _Reader) -> tuple[str, ...]:
    count = reader.u16("nwname")
    if count > MAXWELEM:
        raise ProtocolError(f"a walk names at most {MAXWELEM} elements, got {count}")
    return tuple(reader.string("wname") for _ in range(count))


def _walk_qids(reader: _Reader) -> tuple[Qid, ...]:
    count = reader.u16("nwqid")
    if count > MAXWELEM:
        raise ProtocolError(f"a walk reply holds at most {MAXWELEM} qids, got {count}")
    return tuple(reader.qid() for _ in range(count))


def _data(reader: _Reader) -> bytes:
    count = reader.u32("count")
    if count != len(reader.data) - reader.pos:
        raise ProtocolError(f"count {count} does not match the {len(reader.data) - reader.pos} data bytes")
    return reader.take(count, "data")


def _decode(kind: int, tag: int, r: _Reader) -> Message:
    message: Message
    if kind == Tread.TYPE:
        message = Tread(tag, r.u32("fid"), r.u64("offset"), r.u32("count"))
    elif kind == Rread.TYPE:
        message = Rread(tag, _data(r))
    elif kind == Twrite.TYPE:
        message = Twrite(tag, r.u32("fid"), r.u64("offset"), _data(r))
    elif kind == Rwrite.TYPE:
        message = Rwrite(tag, r.u32("count"))
    elif kind in (Tversion.TYPE, Rversion.TYPE):
        msize, version = r.u32("msize"), r.string("version")
        message = Tversion(tag, msize, version) if kind == Tversion.TYPE else Rversion(tag, msize, version)
    elif kind == Tauth.TYPE:
        message = Tauth(tag, r.u32("afid"), r.string("uname"), r.string("aname"))
    elif kind == Rauth.TYPE:
        message = Rauth(tag, r.qid())
    elif kind == Tattach.TYPE:
        message = Tattach(tag, r.u32("fid"), r.u32("afid"), r.string("uname"), r.string("aname"))
    elif kind == Rattach.TYPE:
        message = Rattach(tag, r.qid())
    elif kind == Rerror.TYPE:
        message = Rerror(tag, r.string("ename"))
    elif kind == Tflush.TYPE:
        message = Tflush(tag, r.u16("oldtag"))
    elif kind == Twalk.TYPE:
        message = Twalk(tag, r.u32("fid"), r.u32("newfid"), _walk_names(r))
    elif kind == Rwalk.TYPE:
        message = Rwalk(tag, _walk_qids(r))
    elif kind == Topen.TYPE:
        message = Topen(tag, r.u32("fid"), r.u8("mode"))
    elif kind in (Ropen.TYPE, Rcreate.TYPE):
        qid, iounit = r.qid(), r.u32("iounit")
        message = Ropen(tag, qid, iounit) if kind == Ropen.TYPE else Rcreate(tag, qid, iounit)
    elif kind == Tcreate.TYPE:
        message = Tcreate(tag, r.u32("fid"), r.string("name"), r.u32("perm"), r.u8("mode"))
    elif kind in (Tclunk.TYPE, Tremove.TYPE, Tstat.TYPE):
        fid = r.u32("fid")
        message = Tclunk(tag, fid) if kind == Tclunk.TYPE else Tstat(tag, fid)
        if kind == Tremove.TYPE:
            message = Tremove(tag, fid)
    elif kind == Rstat.TYPE:
        message = Rstat(tag, r.stat())
    elif kind == Twstat.TYPE:
        message = Twstat(tag, r.u32("fid"), r.stat())
    elif kind == Rflush.TYPE:
        message = Rflush(tag)
    elif kind == Rclunk.TYPE:
        message = Rclunk(tag)
    elif kind == Rremove.TYPE:
        message = Rremove(tag)
    elif kind == Rwstat.TYPE:
        message = Rwstat(tag)
    else:
        raise ProtocolError(f"unknown message type {kind}")
    r.end()
    return message


def unpack(data: bytes) -> Message:
    """Decode one whole message (its size field first); ProtocolError if it is malformed."""
    if len(data) < HEADER:
        raise ProtocolError(f"a message is at least {HEADER} bytes, got {len(data)}")
    size, kind, tag = _HEAD.unpack_from(data)
    if size != len(data):
        raise ProtocolError(f"size field {size} does not match the message length {len(data)}")
    return _decode(kind, tag, _Reader(data, HEADER))


def unpack_entries(data: bytes) -> list[Stat]:
    """The stat entries of a directory read; ProtocolError if they do not fill it exactly."""
    reader = _Reader(data, 0)
    entries = []
    while reader.pos < len(data):
        entries.append(reader.entry())
    return entries


def header(data: bytes) -> tuple[int, int] | None:
    """``(type, tag)`` of a message that may not decode, or None if it is shorter than a header."""
    if len(data) < HEADER:
        return None
    _, kind, tag = _HEAD.unpack_from(data)
    return kind, tag


def summary(message: Message) -> str:
    """A short one-line description for logs (data shown as a byte count, not its contents)."""
    name = type(message).__name__
    if isinstance(message, (Rread, Twrite)):
        extra = f" offset={message.offset}" if isinstance(message, Twrite) else ""
        fid = f" fid={message.fid}" if isinstance(message, Twrite) else ""
        return f"{name} tag={message.tag}{fid}{extra} count={len(message.data)}"
    if isinstance(message, (Rstat, Twstat)):
        fid = f" fid={message.fid}" if isinstance(message, Twstat) else ""
        return f"{name} tag={message.tag}{fid} name={message.stat.name!r}"
    parts = []
    for field in fields(message):
        value = getattr(message, field.name)
        if isinstance(value, Qid):
            text = _qid_text(value)
        elif isinstance(value, tuple):
            text = "(" + " ".join(_qid_text(v) if isinstance(v, Qid) else repr(v) for v in value) + ")"
        else:
            text = repr(value) if isinstance(value, str) else str(value)
        parts.append(f"{field.name}={text}")
    return f"{name} {' '.join(parts)}"


def _qid_text(qid: Qid) -> str:
    return f"({qid.path:#x} {qid.version} {qid.type:#x})"
