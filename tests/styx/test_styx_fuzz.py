"""Random and mutated 9P messages against a live server: it never dies, never sends a malformed
reply, and still serves a well-formed client afterwards."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from styx_raw import (
    ORDWR,
    OREAD,
    OTRUNC,
    OWRITE,
    RERROR,
    Raw,
    msg,
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

from llambo.api import LoadParams
from llambo.registry import ModelRegistry
from llambo.styx.server import Limits, ServerThread, StyxServer

REPLY_TYPES = frozenset(range(101, 128, 2))  # every R-message type (Rerror is 107)
HEALTH_EVERY = 100  # examples between two checks with a well-formed client


@dataclass
class Target:
    address: str
    model_path: str
    examples: int = 0


@pytest.fixture(scope="module")
def target(model_dir: Path) -> Iterator[Target]:
    """One server for the whole fuzz run, with model 0 loaded many times over so that the random
    ``free 0`` commands among the messages rarely take it away."""
    registry = ModelRegistry()
    model_path = str(model_dir / "tiny.gguf")
    for _ in range(100):
        registry.load(model_path, LoadParams(n_threads=1))
    limits = Limits(max_tokens=16, queued=16, pending=64, fids=64, connections=16)
    thread = ServerThread(
        StyxServer(registry, models_root=model_dir, load_params=LoadParams(n_threads=1), limits=limits)
    )
    thread.start()
    try:
        yield Target(str(thread.address), model_path)
    finally:
        thread.stop()
        registry.close_all()


def _corpus(model_path: str) -> list[bytes]:
    """Valid messages that reach every handler (fid 0 is the attached root)."""
    request = json.dumps({"prompt": "fuzz", "max_tokens": 4, "temperature": 0.5, "seed": 3}).encode()
    return [
        tversion(8192),
        tversion(65536, "9P2000.u"),
        tauth(3, 9),
        tattach(4, 1),
        twalk(5, 0, 1, "ctl"),
        twalk(6, 0, 2, "models", "0", "data"),
        twalk(7, 0, 3, "clone"),
        twalk(8, 0, 4, "models", "0", "status"),
        twalk(9, 0, 5, "models"),
        twalk(10, 0, 6),
        topen(11, 1, ORDWR),
        topen(12, 2, ORDWR | OTRUNC),
        topen(13, 3, OREAD),
        topen(14, 4, OREAD),
        topen(15, 5, OREAD),
        topen(16, 6, OWRITE),
        tread(17, 1, 0, 8000),
        tread(18, 2, 0, 100),
        tread(19, 5, 0, 8000),
        tread(20, 4, 10, 3),
        twrite(21, 1, 0, f"load {model_path} n_threads=1".encode()),
        twrite(22, 2, 0, b"hello|4|0.5"),
        twrite(23, 2, 0, request),
        twrite(24, 1, 0, b"free 1"),
        twrite(25, 3, 0, f"load {model_path}".encode()),
        tstat(26, 2),
        twstat(27, 2, stat_entry(length=0)),
        twstat(28, 1, stat_entry(name="renamed")),
        tclunk(29, 3),
        tremove(30, 4),
        tcreate(31, 0, "new"),
        tflush(32, 18),
        tflush(33, 999),
    ]


def _mutate(data: bytes, draw: st.DrawFn) -> bytes:
    """Flip, drop, insert or overwrite bytes; sometimes keep the size field consistent."""
    buffer = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "grow", "set", "field"]))
        if action == "flip" and buffer:
            index = draw(st.integers(0, len(buffer) - 1))
            buffer[index] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut" and len(buffer) > 7:
            del buffer[draw(st.integers(7, len(buffer) - 1)) :]
        elif action == "grow":
            buffer += draw(st.binary(min_size=1, max_size=16))
        elif action == "set" and len(buffer) > 7:
            index = draw(st.integers(4, len(buffer) - 1))
            buffer[index] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, 1]))
        elif action == "field" and len(buffer) >= 15:
            index = draw(st.integers(7, len(buffer) - 4))
            value = draw(st.sampled_from([0, 1, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, 65536]))
            buffer[index : index + 4] = struct.pack("<I", value)
    if draw(st.booleans()) and len(buffer) >= 4:
        buffer[:4] = struct.pack("<I", len(buffer))  # a consistent frame: the codec must catch it
    return bytes(buffer)


@st.composite
def messages(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    kind = draw(
        st.sampled_from(["mutated", "mutated", "mutated", "valid", "valid", "random", "random", "junk"])
    )
    if kind == "valid":
        return draw(st.sampled_from(corpus))
    if kind == "mutated":
        return _mutate(draw(st.sampled_from(corpus)), draw)
    if kind == "random":
        mtype = draw(st.one_of(st.integers(100, 127), st.integers(0, 255)))
        return msg(mtype, draw(st.integers(0, 0xFFFF)), draw(st.binary(max_size=64)))
    return draw(st.binary(min_size=1, max_size=24))  # anything, size field included


def _check_replies(data: bytes) -> int:
    """Every reply is a whole, well-formed R-message; the number of replies."""
    position, count = 0, 0
    while position < len(data):
        assert position + 7 <= len(data), "a truncated reply header"
        size, kind, _ = struct.unpack_from("<IBH", data, position)
        assert 7 <= size <= 65536, f"reply size {size}"
        assert position + size <= len(data), "a truncated reply"
        assert kind in REPLY_TYPES, f"reply type {kind}"
        if kind == RERROR:
            (length,) = struct.unpack_from("<H", data, position + 7)
            assert 9 + length == size
            data[position + 9 : position + size].decode("utf-8")
        position += size
        count += 1
    return count


# Fids 1..5 walked (and most opened) so that mutated reads and writes reach the file handlers.
SETUP = b"".join(
    [
        twalk(2, 0, 1, "ctl"),
        topen(3, 1, ORDWR),
        twalk(4, 0, 2, "models", "0", "data"),
        topen(5, 2, ORDWR),
        twalk(6, 0, 3, "clone"),
        twalk(7, 0, 4, "models", "0", "status"),
        topen(8, 4, OREAD),
        twalk(9, 0, 5, "models"),
        topen(10, 5, OREAD),
    ]
)


def _exchange(address: str, payload: bytes, start: str) -> bytes:
    _, host, port = address.split("!")
    sock = socket.create_connection((host, int(port)), timeout=20)
    try:
        if start != "bare":
            payload = tversion(8192) + tattach(1, 0) + (SETUP if start == "setup" else b"") + payload
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # the server sees the end, aborts what waits, and closes
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
        return bytes(received)
    except ConnectionResetError:
        return b""
    finally:
        sock.close()


def _healthy(address: str, model_path: str) -> None:
    raw = Raw(address, timeout=20).session()
    try:
        model_id = raw.load(model_path)
        raw.walk_open(1, f"models/{model_id}/data", ORDWR)
        raw.write(1, b"still there?|4|0")
        raw.read_all(1)
        raw.walk_open(2, "ctl", OWRITE)
        raw.write(2, f"free {model_id}".encode())
    finally:
        raw.close()


@seed(20240509)
@settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzz_never_kills_the_server(target: Target, data: st.DataObject) -> None:
    corpus = _corpus(target.model_path)
    batch = data.draw(st.lists(messages(corpus), min_size=1, max_size=12))
    start = data.draw(st.sampled_from(["bare", "attach", "setup", "setup"]))
    replies = _exchange(target.address, b"".join(batch), start)
    _check_replies(replies)
    target.examples += 1
    if target.examples % HEALTH_EVERY == 0:
        _healthy(target.address, target.model_path)


def test_server_still_serves_after_the_fuzz(target: Target) -> None:
    started = time.monotonic()
    _healthy(target.address, target.model_path)
    assert time.monotonic() - started < 10
