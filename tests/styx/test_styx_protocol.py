"""9P2000 conformance over a raw socket: every message type, walk/open/read/stat rules, tags, limits."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import pytest
from styx_raw import (
    DMDIR,
    NOFID,
    OEXEC,
    ORCLOSE,
    ORDWR,
    OREAD,
    OTRUNC,
    OWRITE,
    QTDIR,
    RATTACH,
    RCLUNK,
    RERROR,
    RFLUSH,
    RWSTAT,
    Raw,
    msg,
    parse_dir,
    parse_ropen,
    parse_rread,
    parse_rstat,
    parse_rversion,
    parse_rwalk,
    s,
    stat_entry,
    tattach,
    tauth,
    tclunk,
    tcreate,
    tflush,
    topen,
    tread,
    tremove,
    tstat,
    tversion,
    twalk,
    twrite,
    twstat,
)
from styx_support import StartServer, model_busy

from llambo.registry import ModelRegistry
from llambo.styx.server import Limits

Connect = Callable[[], Raw]


# -- version, auth, attach -------------------------------------------------------------------------


def test_version_answers_9p2000_and_the_smaller_msize(connect: Connect) -> None:
    raw = connect()
    assert parse_rversion(raw.rpc(tversion(8192))) == (8192, "9P2000")
    assert parse_rversion(raw.rpc(tversion(1 << 30))) == (Limits().msize, "9P2000")


@pytest.mark.parametrize("version", ["9P2000.u", "9P2000.L", "9P2010"])
def test_version_with_a_suffix_or_a_later_number_gets_9p2000(connect: Connect, version: str) -> None:
    assert parse_rversion(connect().rpc(tversion(8192, version)))[1] == "9P2000"


@pytest.mark.parametrize("version", ["9P1999", "XYZ", "", "9P", "9Pabc"])
def test_unknown_versions_get_unknown_and_no_session(connect: Connect, version: str) -> None:
    raw = connect()
    assert parse_rversion(raw.rpc(tversion(8192, version)))[1] == "unknown"
    assert "Tversion" in raw.rpc(tattach(1, 0)).error()  # still not negotiated
    assert parse_rversion(raw.rpc(tversion(8192)))[1] == "9P2000"  # the connection stays usable


def test_version_rejects_a_tiny_msize(connect: Connect) -> None:
    assert "msize" in connect().rpc(tversion(100)).error()


def test_messages_before_version_get_rerror(connect: Connect) -> None:
    raw = connect()
    assert "Tversion" in raw.rpc(tattach(1, 0)).error()
    raw.session()


def test_version_resets_the_session(raw: Raw) -> None:
    parse_rwalk(raw.rpc(twalk(2, 0, 1, "ctl")))
    parse_rversion(raw.rpc(tversion(8192)))
    assert "unknown fid" in raw.rpc(tstat(3, 0)).error()
    assert "unknown fid" in raw.rpc(tstat(4, 1)).error()


def test_auth_is_refused_and_the_connection_stays(connect: Connect) -> None:
    raw = connect()
    parse_rversion(raw.rpc(tversion()))
    assert raw.rpc(tauth(1, 5)).kind == RERROR
    raw.rpc(tattach(2, 0)).expect(RATTACH)


def test_attach_gives_the_root_directory(connect: Connect) -> None:
    raw = connect()
    parse_rversion(raw.rpc(tversion()))
    reply = raw.rpc(tattach(1, 0)).expect(RATTACH)
    assert reply.body[0] == QTDIR and len(reply.body) == 13
    assert "in use" in raw.rpc(tattach(2, 0)).error()
    assert raw.rpc(tattach(3, 1, afid=7)).kind == RERROR
    assert "not found" in raw.rpc(tattach(4, 2, aname="elsewhere")).error()
    raw.rpc(tattach(5, 3, aname="/")).expect(RATTACH)
    assert raw.rpc(tattach(6, NOFID)).kind == RERROR


# -- walk ----------------------------------------------------------------------------------------


def test_walk_returns_a_qid_per_name(raw: Raw, tiny: str) -> None:
    model_id = raw.load(tiny)
    qids = parse_rwalk(raw.rpc(twalk(2, 0, 1, "models", str(model_id), "data")))
    assert [q[0] for q in qids] == [QTDIR, QTDIR, 0]
    assert len({q[2] for q in qids}) == 3


def test_walk_with_no_names_clones_the_fid(raw: Raw) -> None:
    assert parse_rwalk(raw.rpc(twalk(2, 0, 1))) == []
    assert parse_rstat(raw.rpc(tstat(3, 1)))["name"] == "/"
    assert parse_rwalk(raw.rpc(twalk(4, 1, 1))) == []  # newfid == fid


def test_walk_failing_at_the_first_name_is_an_error(raw: Raw) -> None:
    assert "not found" in raw.rpc(twalk(2, 0, 1, "nothing", "ctl")).error()
    assert "unknown fid" in raw.rpc(tstat(3, 1)).error()


def test_partial_walk_returns_the_qids_so_far_and_leaves_newfid_alone(raw: Raw) -> None:
    assert len(parse_rwalk(raw.rpc(twalk(2, 0, 1, "models", "7", "data")))) == 1
    assert "unknown fid" in raw.rpc(tstat(3, 1)).error()
    # with newfid == fid, the fid is not moved either
    parse_rwalk(raw.rpc(twalk(4, 0, 5)))
    assert len(parse_rwalk(raw.rpc(twalk(6, 5, 5, "models", "nope")))) == 1
    assert parse_rstat(raw.rpc(tstat(7, 5)))["name"] == "/"


def test_walk_past_a_file(raw: Raw) -> None:
    assert len(parse_rwalk(raw.rpc(twalk(2, 0, 1, "ctl", "x")))) == 1
    parse_rwalk(raw.rpc(twalk(3, 0, 2, "ctl")))
    assert raw.rpc(twalk(4, 2, 3, "x")).kind == RERROR


def test_walk_dotdot(raw: Raw, tiny: str) -> None:
    model_id = raw.load(tiny)
    qids = parse_rwalk(raw.rpc(twalk(2, 0, 1, "..", "models", str(model_id), "..", "..", "ctl")))
    assert len(qids) == 6
    assert qids[0] == qids[4]  # .. at the root is the root


def test_walk_refusals(raw: Raw) -> None:
    parse_rwalk(raw.rpc(twalk(2, 0, 1, "ctl")))
    assert "in use" in raw.rpc(twalk(3, 0, 1, "clone")).error()
    parse_ropen(raw.rpc(topen(4, 1, OREAD)))
    assert "open" in raw.rpc(twalk(5, 1, 2)).error()
    too_many = ["models"] * 17
    assert raw.rpc(twalk(6, 0, 3, *too_many)).kind == RERROR
    assert "unknown fid" in raw.rpc(twalk(7, 55, 56)).error()


# -- open ---------------------------------------------------------------------------------------


def test_open_modes_and_iounit(raw: Raw, tiny: str) -> None:
    model_id = raw.load(tiny)
    for number, (path, mode) in enumerate(
        [
            ("ctl", OREAD),
            ("ctl", OWRITE),
            ("ctl", ORDWR),
            ("ctl", OWRITE | OTRUNC),
            (f"models/{model_id}/data", ORDWR | OTRUNC),
            (f"models/{model_id}/info", OREAD),
            ("models", OREAD),
            ("", OEXEC),
        ],
        start=10,
    ):
        names = [p for p in path.split("/") if p]
        parse_rwalk(raw.rpc(twalk(raw.tag(), 0, number, *names)))
        qid, iounit = parse_ropen(raw.rpc(topen(raw.tag(), number, mode)))
        assert iounit == 8192 - 24
        assert (qid[0] == QTDIR) == (path in ("models", ""))


def test_open_refusals(raw: Raw, tiny: str) -> None:
    model_id = raw.load(tiny)
    for number, (path, mode) in enumerate(
        [
            (f"models/{model_id}/info", OWRITE),
            (f"models/{model_id}/status", ORDWR),
            (f"models/{model_id}/status", OREAD | OTRUNC),
            ("models", OWRITE),
            ("", ORDWR),
            ("ctl", OREAD | ORCLOSE),
            ("ctl", OEXEC),
        ],
        start=10,
    ):
        names = [p for p in path.split("/") if p]
        parse_rwalk(raw.rpc(twalk(raw.tag(), 0, number, *names)))
        assert "permission denied" in raw.rpc(topen(raw.tag(), number, mode)).error(), (path, mode)
    parse_ropen(raw.rpc(topen(raw.tag(), 0, OREAD)))
    assert "already open" in raw.rpc(topen(raw.tag(), 0, OREAD)).error()


# -- read and write ------------------------------------------------------------------------------


def test_reads_honour_offsets(raw: Raw, tiny: str) -> None:
    raw.load(tiny)
    raw.walk_open(1, "ctl", OREAD)
    whole = raw.read(1, 0, 8000)
    assert whole.startswith(b"0 ") and whole.endswith(b" native 1\n")
    assert raw.read(1, 0, 5) + raw.read(1, 5, 7) + raw.read(1, 12, 8000) == whole
    assert raw.read(1, len(whole), 100) == b""


def test_read_count_is_clamped_to_the_iounit(raw: Raw, tiny: str) -> None:
    model_id = raw.load(tiny)
    raw.walk_open(1, f"models/{model_id}/info", OREAD)
    reply = raw.rpc(tread(raw.tag(), 1, 0, 0xFFFFFFFF))
    assert 0 < len(parse_rread(reply)) <= 8192 - 24


def test_directory_reads_return_whole_entries(raw: Raw, tiny: str, model_dir: object) -> None:
    raw.load(tiny)
    raw.walk_open(1, "", OREAD)
    whole = raw.read(1, 0, 8000)
    names = [entry["name"] for entry in parse_dir(whole)]
    assert names == ["ctl", "clone", "models"]
    first_size = struct.unpack_from("<H", whole)[0] + 2
    part = raw.read(1, 0, first_size + 10)  # room for one entry and a bit: one entry only
    assert part == whole[:first_size]
    rest = raw.read(1, first_size, 8000)
    assert part + rest == whole
    assert raw.read(1, len(whole), 8000) == b""
    assert "offset" in raw.rpc(tread(raw.tag(), 1, 3, 8000)).error()
    assert "too small" in raw.rpc(tread(raw.tag(), 1, 0, 10)).error()


def test_directory_entries_are_truthful(raw: Raw, tiny: str) -> None:
    model_id = raw.load(tiny)
    raw.walk_open(1, "models", OREAD)
    (entry,) = parse_dir(raw.read_all(1))
    assert entry["name"] == str(model_id) and entry["mode"] == DMDIR | 0o555 and entry["qid"][0] == QTDIR
    raw.walk_open(2, f"models/{model_id}", OREAD)
    entries = {e["name"]: e for e in parse_dir(raw.read_all(2))}
    assert set(entries) == {"data", "info", "status"}
    assert entries["data"]["mode"] == 0o666 and entries["info"]["mode"] == 0o444
    assert entries["data"]["length"] == 0
    info = raw.cat(f"models/{model_id}/info")
    assert entries["info"]["length"] == len(info)
    assert entries["info"]["uid"] == "glenda"


def test_read_and_write_need_the_right_open_mode(raw: Raw) -> None:
    parse_rwalk(raw.rpc(twalk(2, 0, 1, "ctl")))
    assert "not open" in raw.rpc(tread(3, 1, 0, 10)).error()
    parse_ropen(raw.rpc(topen(4, 1, OWRITE)))
    assert "not open for reading" in raw.rpc(tread(5, 1, 0, 10)).error()
    raw.walk_open(6, "ctl", OREAD)
    assert "not open for writing" in raw.rpc(twrite(7, 6, 0, b"free 0")).error()


# -- stat and wstat ----------------------------------------------------------------------------------


def test_stat_has_its_extra_length_and_true_fields(raw: Raw, tiny: str) -> None:
    model_id = raw.load(tiny)
    root = parse_rstat(raw.rpc(tstat(2, 0)))
    assert root["name"] == "/" and root["mode"] == DMDIR | 0o555 and root["qid"][0] == QTDIR
    parse_rwalk(raw.rpc(twalk(3, 0, 1, "models", str(model_id), "status")))
    status = parse_rstat(raw.rpc(tstat(4, 1)))
    assert status["name"] == "status" and status["mode"] == 0o444 and status["qid"][0] == 0
    assert status["length"] == len(raw.cat(f"models/{model_id}/status"))
    parse_rwalk(raw.rpc(twalk(5, 0, 2, "ctl")))
    assert parse_rstat(raw.rpc(tstat(6, 2)))["mode"] == 0o666


def test_wstat_that_changes_nothing_but_length_zero_succeeds(raw: Raw, tiny: str) -> None:
    model_id = raw.load(tiny)
    parse_rwalk(raw.rpc(twalk(2, 0, 1, "models", str(model_id), "data")))
    raw.rpc(twstat(3, 1, stat_entry())).expect(RWSTAT)  # all "don't touch": a sync
    raw.rpc(twstat(4, 1, stat_entry(length=0))).expect(RWSTAT)  # truncate, as `echo > data` does
    raw.rpc(twstat(5, 1, stat_entry(name="data", mode=0o666))).expect(RWSTAT)  # same values
    assert "permission denied" in raw.rpc(twstat(6, 1, stat_entry(name="other"))).error()
    assert "permission denied" in raw.rpc(twstat(7, 1, stat_entry(mode=0o600))).error()
    assert "permission denied" in raw.rpc(twstat(8, 1, stat_entry(length=5))).error()
    parse_rwalk(raw.rpc(twalk(9, 0, 2, "models", str(model_id), "info")))
    assert "permission denied" in raw.rpc(twstat(10, 2, stat_entry(length=0))).error()
    assert "permission denied" in raw.rpc(twstat(11, 0, stat_entry(mtime=12345))).error()


def test_wstat_with_a_bad_stat_is_an_error(raw: Raw) -> None:
    entry = stat_entry()
    bad = entry[:2] + entry[2:-1]  # one byte short of what its size says
    reply = raw.rpc(msg(126, 3, struct.pack("<IH", 0, len(bad)) + bad))
    assert reply.kind == RERROR


# -- clunk, remove, create -------------------------------------------------------------------------


def test_clunk(raw: Raw) -> None:
    parse_rwalk(raw.rpc(twalk(2, 0, 1, "ctl")))
    raw.rpc(tclunk(3, 1)).expect(RCLUNK)
    assert "unknown fid" in raw.rpc(tclunk(4, 1)).error()
    assert "unknown fid" in raw.rpc(tstat(5, 1)).error()


def test_remove_is_refused_but_clunks_the_fid(raw: Raw) -> None:
    parse_rwalk(raw.rpc(twalk(2, 0, 1, "ctl")))
    assert "permission denied" in raw.rpc(tremove(3, 1)).error()
    assert "unknown fid" in raw.rpc(tstat(4, 1)).error()


def test_create_is_refused(raw: Raw) -> None:
    assert "permission denied" in raw.rpc(tcreate(2, 0, "new")).error()
    parse_rstat(raw.rpc(tstat(3, 0)))  # the fid is still there


# -- malformed and hostile messages ------------------------------------------------------------


def test_unknown_and_reply_types_get_rerror(raw: Raw) -> None:
    assert "unknown message type" in raw.rpc(msg(99, 5, b"abc")).error()
    assert raw.rpc(msg(117, 6, struct.pack("<I", 0))).kind == RERROR  # an Rread sent to the server
    assert raw.rpc(msg(106, 7, s("x"))).kind == RERROR  # Terror does not exist
    parse_rstat(raw.rpc(tstat(8, 0)))


def test_truncated_and_overlong_fields_get_rerror(raw: Raw) -> None:
    assert "too short" in raw.rpc(msg(110, 2, struct.pack("<IIH", 0, 1, 2) + s("ctl"))).error()
    assert raw.rpc(msg(118, 3, struct.pack("<IQI", 0, 0, 1000) + b"xy")).kind == RERROR  # huge count
    assert raw.rpc(msg(124, 4, struct.pack("<I", 0) + b"extra")).kind == RERROR
    assert raw.rpc(msg(110, 5, struct.pack("<IIH", 0, 1, 1) + s(b"\xff\xfe"))).kind == RERROR  # bad UTF-8
    assert raw.rpc(msg(124, 6)).kind == RERROR
    parse_rstat(raw.rpc(tstat(7, 0)))


@pytest.mark.parametrize("size", [0, 3, 6, 9000, 0xFFFFFFFF])
def test_a_bad_size_closes_only_that_connection(connect: Connect, size: int) -> None:
    bad, good = connect().session(), connect().session()
    bad.send(struct.pack("<IBH", size, 124, 1) + struct.pack("<I", 0))
    assert bad.is_closed()
    parse_rstat(good.rpc(tstat(2, 0)))
    connect().session()


def test_a_tag_in_use_closes_the_connection(raw: Raw, tiny: str, registry: ModelRegistry) -> None:
    model_id = raw.load(tiny)
    raw.walk_open(1, f"models/{model_id}/data", ORDWR)
    raw.walk_open(2, f"models/{model_id}/data", ORDWR)
    raw.send(tread(40, 1, 0, 100))  # nothing written on this connection yet: answered at once
    assert parse_rread(raw.recv_tag(40)) == b""
    with model_busy(registry, model_id):
        raw.write(1, b"hello|8|0")
        raw.send(tread(41, 1, 0, 100))  # blocks: the model is busy
        assert not raw.pending(0.2)
        raw.send(tread(41, 2, 0, 100))  # the same tag again
        assert raw.is_closed()


def test_unknown_fids(raw: Raw) -> None:
    for message in (tstat(2, 77), tclunk(3, 77), topen(4, 77, OREAD), tread(5, 77, 0, 1), twalk(6, 77, 78)):
        assert "unknown fid" in raw.rpc(message).error()


# -- tags and flush --------------------------------------------------------------------------------


def test_flush_of_an_unknown_tag_is_answered(raw: Raw) -> None:
    raw.rpc(tflush(5, 1234)).expect(RFLUSH)


def test_requests_in_flight_together_are_answered_by_tag(
    raw: Raw, tiny: str, registry: ModelRegistry
) -> None:
    model_id = raw.load(tiny)
    raw.walk_open(1, f"models/{model_id}/data", ORDWR)
    raw.walk_open(2, f"models/{model_id}/data", ORDWR)
    with model_busy(registry, model_id):
        raw.write(1, b"count|4|0")
        raw.write(2, b"other|4|0")
        raw.send(tread(50, 1, 0, 100))
        raw.send(tread(51, 2, 0, 100))
        raw.send(tstat(52, 0))
        assert raw.recv().tag == 52  # answered while both reads are still in flight
        assert not raw.pending(0.2)
    assert {raw.recv().tag, raw.recv().tag} == {50, 51}


def test_flush_of_a_write_in_flight_answers_the_write_first(raw: Raw, tiny: str) -> None:
    raw.walk_open(1, "ctl", ORDWR)
    raw.send(twrite(60, 1, 0, f"load {tiny}".encode()))
    raw.send(tflush(61, 60))
    replies = [raw.recv(), raw.recv()]
    kinds = [(r.tag, r.kind) for r in replies]
    assert kinds[-1] == (61, RFLUSH)
    assert kinds[0][0] == 60  # the write finished (Rwrite) before Rflush


def test_pending_request_limit(start_server: StartServer, tiny: str, registry: ModelRegistry) -> None:
    server = start_server(Limits(pending=2))
    raw = Raw(str(server.address)).session()
    try:
        model_id = raw.load(tiny)
        raw.walk_open(1, f"models/{model_id}/data", ORDWR)
        with model_busy(registry, model_id):
            raw.write(1, b"x|20|0")
            raw.send(tread(70, 1, 0, 10))
            raw.send(tread(71, 1, 0, 10))
            assert "busy" in raw.rpc(tread(72, 1, 0, 10)).error()
            raw.rpc(tflush(73, 70)).expect(RFLUSH)
            raw.rpc(tflush(74, 71)).expect(RFLUSH)
    finally:
        raw.close()


def test_fid_limit(start_server: StartServer) -> None:
    server = start_server(Limits(fids=3))
    raw = Raw(str(server.address)).session()
    try:
        parse_rwalk(raw.rpc(twalk(2, 0, 1)))
        parse_rwalk(raw.rpc(twalk(3, 0, 2)))
        assert "busy" in raw.rpc(twalk(4, 0, 3)).error()
        raw.rpc(tclunk(5, 2)).expect(RCLUNK)
        parse_rwalk(raw.rpc(twalk(6, 0, 3)))
    finally:
        raw.close()


def test_connection_limit(start_server: StartServer) -> None:
    server = start_server(Limits(connections=2))
    address = str(server.address)
    first, second = Raw(address).session(), Raw(address).session()
    third = Raw(address)
    try:
        assert third.is_closed()
        first.close()
        deadline = time.monotonic() + 5
        while True:
            fourth = Raw(address)
            try:
                fourth.session()
                break
            except (ConnectionError, OSError):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            finally:
                fourth.close()
        parse_rstat(second.rpc(tstat(2, 0)))
    finally:
        for raw in (first, second, third):
            raw.close()


def test_unix_socket(start_server: StartServer, tmp_path: object) -> None:
    path = f"{tmp_path}/styx.sock"
    server = start_server(listen=f"unix!{path}")
    raw = Raw(str(server.address)).session()
    try:
        assert raw.cat("ctl") == b""
    finally:
        raw.close()


def test_version_mid_session_aborts_waiting_reads_without_replies(
    raw: Raw, tiny: str, registry: ModelRegistry
) -> None:
    model_id = raw.load(tiny)
    raw.walk_open(1, f"models/{model_id}/data", ORDWR)
    with model_busy(registry, model_id):
        raw.write(1, b"abort me|4|0")
        raw.send(tread(90, 1, 0, 100))
        assert not raw.pending(0.2)
        assert parse_rversion(raw.rpc(tversion(8192))) == (8192, "9P2000")
    assert not raw.pending(0.3)  # the read was aborted: no reply ever comes for tag 90
    raw.rpc(tattach(91, 0)).expect(RATTACH)
