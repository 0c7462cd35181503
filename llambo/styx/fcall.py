"""9P2000 messages and their wire format (Plan 9 manual, section 5): dataclasses to bytes and back.

A message is ``size[4] type[1] tag[2]`` and then its fields, all integers little-endian, strings
as ``len[2]`` plus UTF-8. :func:`unpack` checks every length against the bytes actually present,
so a truncated or hostile message raises :class:`ProtocolError` (never IndexError, never a large
allocation), and a message with bytes left over is refused too.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, ClassVar, TypeAlias, cast, get_args

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
#
# Each message declares its TYPE and its LAYOUT: one code per field after the tag, in order.
# B H I Q: an integer of 1, 2, 4 or 8 bytes; s: a string; q: a qid; S: a stat (n[2] and an entry);
# D: count[4] and that many bytes, the rest of the message; N: walk names (nwname[2], wname...);
# W: walk qids (nwqid[2], qid...). The codec of each type is built from its layout below.


@dataclass(frozen=True, slots=True)
class Tversion:
    TYPE: ClassVar[int] = 100
    LAYOUT: ClassVar[str] = "Is"
    tag: int
    msize: int
    version: str


@dataclass(frozen=True, slots=True)
class Rversion:
    TYPE: ClassVar[int] = 101
    LAYOUT: ClassVar[str] = "Is"
    tag: int
    msize: int
    version: str


@dataclass(frozen=True, slots=True)
class Tauth:
    TYPE: ClassVar[int] = 102
    LAYOUT: ClassVar[str] = "Iss"
    tag: int
    afid: int
    uname: str
    aname: str


@dataclass(frozen=True, slots=True)
class Rauth:
    TYPE: ClassVar[int] = 103
    LAYOUT: ClassVar[str] = "q"
    tag: int
    aqid: Qid


@dataclass(frozen=True, slots=True)
class Tattach:
    TYPE: ClassVar[int] = 104
    LAYOUT: ClassVar[str] = "IIss"
    tag: int
    fid: int
    afid: int
    uname: str
    aname: str


@dataclass(frozen=True, slots=True)
class Rattach:
    TYPE: ClassVar[int] = 105
    LAYOUT: ClassVar[str] = "q"
    tag: int
    qid: Qid


@dataclass(frozen=True, slots=True)
class Rerror:
    TYPE: ClassVar[int] = 107
    LAYOUT: ClassVar[str] = "s"
    tag: int
    ename: str


@dataclass(frozen=True, slots=True)
class Tflush:
    TYPE: ClassVar[int] = 108
    LAYOUT: ClassVar[str] = "H"
    tag: int
    oldtag: int


@dataclass(frozen=True, slots=True)
class Rflush:
    TYPE: ClassVar[int] = 109
    LAYOUT: ClassVar[str] = ""
    tag: int


@dataclass(frozen=True, slots=True)
class Twalk:
    TYPE: ClassVar[int] = 110
    LAYOUT: ClassVar[str] = "IIN"
    tag: int
    fid: int
    newfid: int
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rwalk:
    TYPE: ClassVar[int] = 111
    LAYOUT: ClassVar[str] = "W"
    tag: int
    qids: tuple[Qid, ...]


@dataclass(frozen=True, slots=True)
class Topen:
    TYPE: ClassVar[int] = 112
    LAYOUT: ClassVar[str] = "IB"
    tag: int
    fid: int
    mode: int


@dataclass(frozen=True, slots=True)
class Ropen:
    TYPE: ClassVar[int] = 113
    LAYOUT: ClassVar[str] = "qI"
    tag: int
    qid: Qid
    iounit: int


@dataclass(frozen=True, slots=True)
class Tcreate:
    TYPE: ClassVar[int] = 114
    LAYOUT: ClassVar[str] = "IsIB"
    tag: int
    fid: int
    name: str
    perm: int
    mode: int


@dataclass(frozen=True, slots=True)
class Rcreate:
    TYPE: ClassVar[int] = 115
    LAYOUT: ClassVar[str] = "qI"
    tag: int
    qid: Qid
    iounit: int


@dataclass(frozen=True, slots=True)
class Tread:
    TYPE: ClassVar[int] = 116
    LAYOUT: ClassVar[str] = "IQI"
    tag: int
    fid: int
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class Rread:
    TYPE: ClassVar[int] = 117
    LAYOUT: ClassVar[str] = "D"
    tag: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Twrite:
    TYPE: ClassVar[int] = 118
    LAYOUT: ClassVar[str] = "IQD"
    tag: int
    fid: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Rwrite:
    TYPE: ClassVar[int] = 119
    LAYOUT: ClassVar[str] = "I"
    tag: int
    count: int


@dataclass(frozen=True, slots=True)
class Tclunk:
    TYPE: ClassVar[int] = 120
    LAYOUT: ClassVar[str] = "I"
    tag: int
    fid: int


@dataclass(frozen=True, slots=True)
class Rclunk:
    TYPE: ClassVar[int] = 121
    LAYOUT: ClassVar[str] = ""
    tag: int


@dataclass(frozen=True, slots=True)
class Tremove:
    TYPE: ClassVar[int] = 122
    LAYOUT: ClassVar[str] = "I"
    tag: int
    fid: int


@dataclass(frozen=True, slots=True)
class Rremove:
    TYPE: ClassVar[int] = 123
    LAYOUT: ClassVar[str] = ""
    tag: int


@dataclass(frozen=True, slots=True)
class Tstat:
    TYPE: ClassVar[int] = 124
    LAYOUT: ClassVar[str] = "I"
    tag: int
    fid: int


@dataclass(frozen=True, slots=True)
class Rstat:
    TYPE: ClassVar[int] = 125
    LAYOUT: ClassVar[str] = "S"
    tag: int
    stat: Stat


@dataclass(frozen=True, slots=True)
class Twstat:
    TYPE: ClassVar[int] = 126
    LAYOUT: ClassVar[str] = "IS"
    tag: int
    fid: int
    stat: Stat


@dataclass(frozen=True, slots=True)
class Rwstat:
    TYPE: ClassVar[int] = 127
    LAYOUT: ClassVar[str] = ""
    tag: int


Message: TypeAlias = (
    Tversion | Rversion | Tauth | Rauth | Tattach | Rattach | Rerror | Tflush | Rflush | Twalk | Rwalk
    | Topen | Ropen | Tcreate | Rcreate | Tread | Rread | Twrite | Rwrite | Tclunk | Rclunk | Tremove
    | Rremove | Tstat | Rstat | Twstat | Rwstat
)  # fmt: skip
_MESSAGES: tuple[type[Message], ...] = get_args(Message)


# -- the codecs, one per message type, built from its layout -------------------------------------


def _put_stat(stat: Stat) -> bytes:
    entry = stat.pack()
    return _U16.pack(len(entry)) + entry


def _put_names(names: tuple[str, ...]) -> bytes:
    if len(names) > MAXWELEM:
        raise ValueError(f"a walk takes at most {MAXWELEM} names")
    return _U16.pack(len(names)) + b"".join(_string(name) for name in names)


def _put_qids(qids: tuple[Qid, ...]) -> bytes:
    return _U16.pack(len(qids)) + b"".join(qid.pack() for qid in qids)


def _walk_names(reader: _Reader, what: str) -> tuple[str, ...]:
    count = reader.u16("nwname")
    if count > MAXWELEM:
        raise ProtocolError(f"a walk names at most {MAXWELEM} elements, got {count}")
    return tuple(reader.string("wname") for _ in range(count))


def _walk_qids(reader: _Reader, what: str) -> tuple[Qid, ...]:
    count = reader.u16("nwqid")
    if count > MAXWELEM:
        raise ProtocolError(f"a walk reply holds at most {MAXWELEM} qids, got {count}")
    return tuple(reader.qid() for _ in range(count))


def _data(reader: _Reader, what: str) -> bytes:
    count = reader.u32("count")
    if count != len(reader.data) - reader.pos:
        raise ProtocolError(f"count {count} does not match the {len(reader.data) - reader.pos} data bytes")
    return reader.take(count, "data")


_FIXED = "BHIQ"  # the codes a struct format packs as they are
_PUT: dict[str, Callable[[Any], bytes]] = {  # value -> bytes (D is packed with the integers before it)
    "B": _U8.pack, "H": _U16.pack, "I": _U32.pack, "Q": _U64.pack, "s": _string, "q": Qid.pack,
    "S": _put_stat, "N": _put_names, "W": _put_qids,
}  # fmt: skip
_GET: dict[str, Callable[[_Reader, str], Any]] = {  # (reader, field name for errors) -> value
    "B": _Reader.u8, "H": _Reader.u16, "I": _Reader.u32, "Q": _Reader.u64, "s": _Reader.string,
    "q": lambda r, what: r.qid(), "S": lambda r, what: r.stat(), "D": _data, "N": _walk_names,
    "W": _walk_qids,
}  # fmt: skip

Pack: TypeAlias = Callable[[Any], bytes]
Unpack: TypeAlias = Callable[[int, bytes], Message]


def _codec(cls: type[Message]) -> tuple[Pack, Unpack]:
    """pack and unpack for one message type: one struct when its fields are all integers, perhaps
    followed by data (every message of the hot path); field by field otherwise."""
    names = tuple(field.name for field in fields(cls))[1:]
    layout, kind, make = cls.LAYOUT, cls.TYPE, cast("Callable[..., Message]", cls)
    if len(layout) != len(names) or ("D" in layout and (layout[-1] != "D" or names[-1] != "data")):
        raise TypeError(f"{cls.__name__}: LAYOUT {layout!r} does not fit the fields {names}")
    steps = [(_GET[code], name) for code, name in zip(layout, names, strict=True)]

    def unpack_fields(tag: int, data: bytes) -> Message:  # the general case; its errors say where
        reader = _Reader(data, HEADER)
        values = [get(reader, name) for get, name in steps]
        reader.end()
        return make(tag, *values)

    fixed = layout.removesuffix("D")
    if not names or fixed.strip(_FIXED):
        puts = [(_PUT[code], name) for code, name in zip(layout, names, strict=True)]

        def pack_fields(message: Any) -> bytes:
            body = b""
            for put, name in puts:
                body += put(getattr(message, name))
            return _HEAD.pack(HEADER + len(body), kind, message.tag) + body

        return pack_fields, unpack_fields

    if fixed == layout:
        whole = struct.Struct("<IBH" + fixed)
        pack_whole, size, body = whole.pack, whole.size, struct.Struct("<" + fixed).unpack_from
        if len(names) == 1:  # Rwrite, Tclunk, ...: one getattr is much cheaper than a tuple and a *
            name = names[0]

            def pack_fixed(message: Any) -> bytes:
                return pack_whole(size, kind, message.tag, getattr(message, name))

        else:
            get = attrgetter("tag", *names)

            def pack_fixed(message: Any) -> bytes:
                return pack_whole(size, kind, *get(message))

        def unpack_fixed(tag: int, data: bytes) -> Message:
            if len(data) != size:
                return unpack_fields(tag, data)
            return make(tag, *body(data, HEADER))

        return pack_fixed, unpack_fixed

    head = struct.Struct("<IBH" + fixed + "I")  # and then count bytes of data
    pack_head, size, counted = head.pack, head.size, struct.Struct("<" + fixed + "I").unpack_from
    if fixed:
        get_fixed = attrgetter("tag", *names[:-1])

        def pack_data(message: Any) -> bytes:
            data: bytes = message.data
            return pack_head(size + len(data), kind, *get_fixed(message), len(data)) + data

    else:  # Rread, the hottest message of all: nothing to fetch but the tag

        def pack_data(message: Any) -> bytes:
            data: bytes = message.data
            return pack_head(size + len(data), kind, message.tag, len(data)) + data

    def unpack_data(tag: int, data: bytes) -> Message:
        if len(data) < size:
            return unpack_fields(tag, data)
        *values, count = counted(data, HEADER)
        if count != len(data) - size:
            raise ProtocolError(f"count {count} does not match the {len(data) - size} data bytes")
        return make(tag, *values, data[size:])

    return pack_data, unpack_data


_PACK: dict[type[Message], Pack] = {}
_UNPACK: dict[int, Unpack] = {}
for _cls in _MESSAGES:
    _PACK[_cls], _UNPACK[_cls.TYPE] = _codec(_cls)
del _cls


def pack(message: Message) -> bytes:
    """The bytes of one message, size field included."""
    return _PACK[type(message)](message)


def unpack(data: bytes) -> Message:
    """Decode one whole message (its size field first); ProtocolError if it is malformed."""
    if len(data) < HEADER:
        raise ProtocolError(f"a message is at least {HEADER} bytes, got {len(data)}")
    size, kind, tag = _HEAD.unpack_from(data)
    if size != len(data):
        raise ProtocolError(f"size field {size} does not match the message length {len(data)}")
    decode = _UNPACK.get(kind)
    if decode is None:
        raise ProtocolError(f"unknown message type {kind}")
    return decode(tag, data)


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
