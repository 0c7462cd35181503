"""The codec: every message packs to the manual's layout (checked against hand-built bytes) and back."""

from __future__ import annotations

import struct

import pytest
import styx_raw as raw

from llambo.styx import fcall
from llambo.styx.fcall import (
    NOFID,
    NOTAG,
    ProtocolError,
    Qid,
    Rattach,
    Rauth,
    Rclunk,
    Rcreate,
    Rerror,
    Rflush,
    Ropen,
    Rread,
    Rremove,
    Rstat,
    Rversion,
    Rwalk,
    Rwrite,
    Rwstat,
    Stat,
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

QID = Qid(0x80, 7, 0x1234)
STAT = Stat(1, 2, QID, 0o755 | fcall.DMDIR, 3, 4, 5, "name", "uid", "gid", "muid")

ALL = [
    Tversion(NOTAG, 8192, "9P2000"),
    Rversion(NOTAG, 8192, "9P2000"),
    Tauth(1, 5, "glenda", ""),
    Rauth(1, QID),
    Tattach(2, 0, NOFID, "glenda", "/"),
    Rattach(2, QID),
    Rerror(3, "not found: x"),
    Tflush(4, 3),
    Rflush(4),
    Twalk(5, 0, 1, ("models", "0", "data")),
    Rwalk(5, (QID, QID)),
    Topen(6, 1, fcall.ORDWR | fcall.OTRUNC),
    Ropen(6, QID, 8168),
    Tcreate(7, 0, "new", 0o666, fcall.OWRITE),
    Rcreate(7, QID, 0),
    Tread(8, 1, 1 << 40, 8168),
    Rread(8, b"some text \xe2\x9c\x93"),
    Twrite(9, 1, 3, b"load x"),
    Rwrite(9, 6),
    Tclunk(10, 1),
    Rclunk(10),
    Tremove(11, 1),
    Rremove(11),
    Tstat(12, 1),
    Rstat(12, STAT),
    Twstat(13, 1, Stat.null()),
    Rwstat(13),
]


@pytest.mark.parametrize("message", ALL, ids=lambda m: type(m).__name__)
def test_round_trip(message: fcall.Message) -> None:
    data = fcall.pack(message)
    assert struct.unpack_from("<I", data)[0] == len(data)
    assert data[4] == message.TYPE
    assert fcall.unpack(data) == message
    assert fcall.summary(message).startswith(type(message).__name__)


def test_layouts_match_hand_built_bytes() -> None:
    assert fcall.pack(Tversion(NOTAG, 8192, "9P2000")) == raw.tversion(8192)
    assert fcall.pack(Tattach(2, 0, NOFID, "glenda", "")) == raw.tattach(2, 0)
    assert fcall.pack(Twalk(5, 0, 1, ("a", "b"))) == raw.twalk(5, 0, 1, "a", "b")
    assert fcall.pack(Topen(6, 1, 2)) == raw.topen(6, 1, 2)
    assert fcall.pack(Tread(8, 1, 9, 100)) == raw.tread(8, 1, 9, 100)
    assert fcall.pack(Twrite(9, 1, 0, b"xyz")) == raw.twrite(9, 1, 0, b"xyz")
    assert fcall.pack(Tflush(4, 3)) == raw.tflush(4, 3)
    assert fcall.pack(Twstat(13, 1, Stat.null())) == raw.twstat(13, 1, raw.stat_entry())
    entry = raw.stat_entry(
        kind=1, dev=2, qid=(0x80, 7, 0x1234), mode=0o755 | raw.DMDIR, atime=3, mtime=4, length=5,
        name="name", uid="uid", gid="gid", muid="muid",
    )  # fmt: skip
    assert STAT.pack() == entry
    assert fcall.unpack_entries(STAT.pack() * 2) == [STAT, STAT]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x07\x00\x00",
        struct.pack("<IBH", 8, 100, 0),  # size says 8, 7 bytes present
        raw.msg(99, 1),  # unknown type
        raw.msg(124, 1, b"\x00\x00"),  # fid cut short
        raw.msg(124, 1, b"\x00\x00\x00\x00\x00"),  # a byte too many
        raw.msg(110, 1, struct.pack("<IIH", 0, 1, 17) + raw.s("x") * 17),  # more than MAXWELEM
        raw.msg(118, 1, struct.pack("<IQI", 0, 0, 5) + b"abc"),  # count past the data
        raw.msg(118, 1, struct.pack("<IQI", 0, 0, 1) + b"abc"),  # data past the count
        raw.msg(110, 1, struct.pack("<IIH", 0, 1, 1) + struct.pack("<H", 9) + b"ab"),  # string cut
        raw.msg(110, 1, struct.pack("<IIH", 0, 1, 1) + raw.s(b"\xc3\x28")),  # bad UTF-8
        raw.msg(126, 1, struct.pack("<IH", 0, 3) + b"\x01\x00\x00"),  # stat too short
        raw.msg(126, 1, struct.pack("<IH", 0, 60) + raw.stat_entry()[:58] + b"\x00\x00"),  # sizes disagree
    ],
)
def test_malformed_messages_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        fcall.unpack(data)


def test_strings_are_bounded() -> None:
    with pytest.raises(ValueError):
        fcall.pack(Rerror(1, "x" * 70000))
    with pytest.raises(ValueError):
        fcall.pack(Twalk(1, 0, 1, ("a",) * 17))
