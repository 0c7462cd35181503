"""The llambo tree over a raw socket: ctl, clone, data (formats, streaming, fresh reads), info, status."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from styx_raw import (
    ORDWR,
    OREAD,
    OWRITE,
    RFLUSH,
    Raw,
    parse_dir,
    parse_rread,
    parse_rwalk,
    tflush,
    topen,
    tread,
    tstat,
    twalk,
    twrite,
)
from styx_support import StartServer, model_busy

from llambo.api import SamplingParams
from llambo.generation import generate
from llambo.registry import ModelRegistry
from llambo.styx.server import Limits

Connect = Callable[[], Raw]


def expected(registry: ModelRegistry, model_id: int, prompt: str, **params: object) -> str:
    """What the model generates for this request when called directly from Python."""
    return generate(registry.get(model_id), prompt, SamplingParams.from_kwargs(**params)).text


# -- ctl ------------------------------------------------------------------------------------------------


def test_ctl_load_read_list_and_free(raw: Raw, tiny: str, registry: ModelRegistry) -> None:
    assert raw.cat("ctl") == b""
    model_id = raw.load(tiny)
    assert raw.load(tiny) == model_id  # the same file and settings: the same id, refs 2
    assert raw.cat("ctl") == f"{model_id} {tiny} native 2\n".encode()
    assert registry.refs(model_id) == 2
    raw.walk_open(1, "ctl", OWRITE)
    raw.write(1, f"free {model_id}\n".encode())
    assert raw.cat("ctl") == f"{model_id} {tiny} native 1\n".encode()
    raw.write(1, f"free {model_id}".encode())
    assert raw.cat("ctl") == b""
    assert len(parse_rwalk(raw.rpc(twalk(raw.tag(), 0, 2, "models", str(model_id))))) == 1
    assert registry.entries() == []


def test_ctl_load_options(raw: Raw, tiny: str, registry: ModelRegistry) -> None:
    model_id = raw.load(tiny, "false", "0", "n_ctx=128", "n_threads=1")
    params = registry.get(model_id).params
    assert (params.use_mmap, params.n_gpu_layers, params.n_ctx, params.n_threads) == (False, 0, 128, 1)
    assert raw.load(tiny) != model_id  # other settings: another model


def test_ctl_read_on_the_loading_fid_gives_the_id_even_with_a_shared_file_position(
    raw: Raw, tiny: str
) -> None:
    raw.walk_open(1, "ctl", ORDWR)
    listing = raw.read(1, 0)
    command = f"load {tiny}".encode()
    raw.write(1, command, offset=len(listing))
    # like plan9port's `9p rdwr`: the read comes at the offset the write left
    assert raw.read(1, len(listing) + len(command)) == b"0\n"
    assert raw.read(1, len(listing) + len(command) + 2) == b""


@pytest.mark.parametrize(
    ("command", "word"),
    [
        ("load", "invalid argument"),
        ("load {root}/missing.gguf", "not found"),
        ("load /etc/passwd", "permission denied"),
        ("load {root}/../outside.gguf", "permission denied"),
        ("load {root}/tiny.gguf maybe", "invalid argument"),
        ("load {root}/tiny.gguf 1 lots", "invalid argument"),
        ("load {root}/tiny.gguf colour=blue", "invalid argument"),
        ("load {root}/tiny.gguf n_gpu_layers=-7", "invalid argument"),
        ("load {root}/tiny.gguf backend=quantum", "invalid argument"),
        ("load '{root}/tiny.gguf", "invalid argument"),
        ("free", "invalid argument"),
        ("free seven", "invalid argument"),
        ("free 9", "not found"),
        ("explode", "invalid argument"),
    ],
)
def test_ctl_errors(raw: Raw, model_dir: Path, command: str, word: str) -> None:
    raw.walk_open(1, "ctl", OWRITE)
    reply = raw.rpc(twrite(raw.tag(), 1, 0, command.format(root=model_dir).encode()))
    assert reply.error().startswith(word + ":"), reply.error()


def test_models_root_refuses_symlinks_that_lead_outside(raw: Raw, model_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.gguf"
    outside.write_bytes((model_dir / "tiny.gguf").read_bytes())
    link = model_dir / "link.gguf"
    link.symlink_to(outside)
    try:
        raw.walk_open(1, "ctl", OWRITE)
        reply = raw.rpc(twrite(raw.tag(), 1, 0, f"load {link}".encode()))
        assert reply.error().startswith("permission denied")
        inside = model_dir / "inside.gguf"
        inside.symlink_to(model_dir / "tiny.gguf")
        try:
            assert raw.load(str(inside)) == raw.load("tiny.gguf")  # relative to the root; same file
        finally:
            inside.unlink()
    finally:
        link.unlink()


def test_paths_with_blanks_are_quoted(raw: Raw, model_dir: Path) -> None:
    spaced = model_dir / "with space's.gguf"
    spaced.write_bytes((model_dir / "tiny.gguf").read_bytes())
    try:
        model_id = raw.load("'with space''s.gguf'")
        assert raw.cat("ctl") == f"{model_id} '{model_dir}/with space''s.gguf' native 1\n".encode()
    finally:
        os.unlink(spaced)


# -- clone -----------------------------------------------------------------------------------------


def test_clone_reserves_loads_and_releases(connect: Connect, tiny: str, registry: ModelRegistry) -> None:
    first, second = connect().session(), connect().session()
    first.walk_open(1, "clone", ORDWR)
    second.walk_open(1, "clone", ORDWR)
    ids = {int(first.read(1)), int(second.read(1))}
    assert ids == {0, 1}  # two opens at once never share an id
    mine = int(first.read(1))
    first.write(1, f"load {tiny}".encode())
    assert first.read(1) == f"{mine}\n".encode()
    assert "busy" in first.rpc(twrite(first.tag(), 1, 0, f"load {tiny}".encode())).error()
    first.clunk(1)  # loaded: the model stays
    second.clunk(1)  # never loaded: the id goes back
    assert [e.id for e in registry.entries()] == [mine]
    assert parse_dir(first.cat("models"))[0]["name"] == str(mine)
    third = connect().session()
    third.walk_open(1, "clone", OREAD)
    assert int(third.read(1)) == 1 - mine  # the released id is the lowest free one again
    third.clunk(1)
    first.walk_open(2, "ctl", OWRITE)
    first.write(2, f"free {mine}".encode())


def test_clone_refuses_other_commands(raw: Raw) -> None:
    raw.walk_open(1, "clone", ORDWR)
    assert "invalid argument" in raw.rpc(twrite(raw.tag(), 1, 0, b"free 0")).error()


def test_clone_when_every_id_is_taken(start_server: StartServer, tiny: str) -> None:
    from llambo.styx.server import ServerThread, StyxServer

    small = ModelRegistry(max_models=1)
    thread = ServerThread(StyxServer(small, models_root=Path(tiny).parent))
    thread.start()
    try:
        raw = Raw(str(thread.address)).session()
        raw.walk_open(1, "clone", OREAD)
        parse_rwalk(raw.rpc(twalk(raw.tag(), 0, 2, "clone")))
        assert "busy" in raw.rpc(topen(raw.tag(), 2, OREAD)).error()
        raw.close()
    finally:
        thread.stop()
        small.close_all()


# -- data ------------------------------------------------------------------------------------------


def test_data_original_format_streams_on_the_same_fid(raw: Raw, tiny: str, registry: ModelRegistry) -> None:
    model_id = raw.load(tiny)
    raw.walk_open(1, f"models/{model_id}/data", ORDWR)
    assert raw.write(1, b"a|b|hello|12|0\n") == 15  # the prompt is everything before the last two |
    text = raw.read_all(1, count=7).decode()
    assert text == expected(registry, model_id, "a|b|hello", max_tokens=12, temperature=0)


def test_data_json_format(raw: Raw, tiny: str, registry: ModelRegistry) -> None:
    model_id = raw.load(tiny)
    raw.walk_open(1, f"models/{model_id}/data", ORDWR)
    request = {"prompt": "Once", "max_tokens": 10, "temperature": 0.9, "top_k": 5, "top_p": 0.9}
    request |= {"min_p": 0.1, "repeat_penalty": 1.1, "seed": 42, "stop": ["zz"]}
    raw.write(1, json.dumps(request).encode())
    got = raw.read_all(1).decode()
    params = {k: v for k, v in request.items() if k != "prompt"}
    params["stop"] = ("zz",)
    assert got == expected(registry, model_id, "Once", **params)


def test_each_write_starts_a_new_request(raw: Raw, tiny: str, registry: ModelRegistry) -> None:
    model_id = raw.load(tiny)
    raw.walk_open(1, f"models/{model_id}/data", ORDWR)
    raw.write(1, b"first|6|0")
    first = raw.read_all(1)
    raw.write(1, b"second|6|0", offset=999)  # write offsets are ignored
    second = raw.read_all(1)
    assert first.decode() == expected(registry, model_id, "first", max_tokens=6, temperature=0)
    assert second.decode() == expected(registry, model_id, "second", max_tokens=6, temperature=0)


def test_reads_after_a_write_start_where_the_client_position_is(raw: Raw, tiny: str) -> None:
    model_id = raw.load(tiny)
    raw.walk_open(1, f"models/{model_id}/data", ORDWR)
    request = b"hi|8|0\n"
    raw.write(1, request)
    position, text = len(request), bytearray()
    while chunk := raw.read(1, position):  # a Linux fd opened O_RDWR reads on from the write
        text += chunk
        position += len(chunk)
    raw.write(1, request)
    assert raw.read_all(1) == bytes(text)


@pytest.mark.parametrize(
    "request_text",
    [
        b"no pipes here",
        b"prompt|many|0.5",
        b"prompt|10|warm",
        b"prompt|10|-1",
        b"prompt|-3|0.5",
        b"prompt|99999|0.5",
        b"|10|0.5",
        b"   \n",
        b"\xff\xfe|1|0",
        b'{"prompt": "x", "colour": 1}',
        b'{"prompt": 5}',
        b'{"max_tokens": 5}',
        b"[1, 2]",
        b'{"prompt": "x", "temperature": "hot"}',
        b'{"prompt": "x", "top_p": 0}',
        b'{"prompt": "x"',
    ],
)
def test_bad_requests_fail_the_write(raw: Raw, tiny: str, request_text: bytes) -> None:
    model_id = raw.load(tiny)
    raw.walk_open(1, f"models/{model_id}/data", ORDWR)
    reply = raw.rpc(twrite(raw.tag(), 1, 0, request_text))
    assert reply.error().startswith("invalid argument: "), reply.error()
    assert raw.read(1) == b""  # no request was started


def test_fresh_read_with_no_request_returns_nothing_at_once(raw: Raw, tiny: str) -> None:
    model_id = raw.load(tiny)
    assert raw.cat(f"models/{model_id}/data") == b""


def test_fresh_read_gets_this_connections_latest_request(
    connect: Connect, tiny: str, registry: ModelRegistry
) -> None:
    mine, theirs = connect().session(), connect().session()
    model_id = mine.load(tiny)
    mine.walk_open(1, f"models/{model_id}/data", OWRITE)
    mine.write(1, b"mine|8|0")
    mine.clunk(1)  # like `echo 'mine|8|0' > data`
    theirs.walk_open(1, f"models/{model_id}/data", OWRITE)
    theirs.write(1, b"theirs|8|0")
    theirs.clunk(1)
    assert mine.cat(f"models/{model_id}/data").decode() == expected(
        registry, model_id, "mine", max_tokens=8, temperature=0
    )
    assert theirs.cat(f"models/{model_id}/data").decode() == expected(
        registry, model_id, "theirs", max_tokens=8, temperature=0
    )
    third = connect().session()  # never wrote: the model's latest request
    assert third.cat(f"models/{model_id}/data").decode() == expected(
        registry, model_id, "theirs", max_tokens=8, temperature=0
    )


def test_fresh_read_streams_a_request_still_running(
    connect: Connect, tiny: str, registry: ModelRegistry
) -> None:
    writer, reader = connect().session(), connect().session()
    model_id = writer.load(tiny)
    with model_busy(registry, model_id):
        writer.walk_open(1, f"models/{model_id}/data", OWRITE)
        writer.write(1, b"wait|5|0")
        writer.clunk(1)
        reader.walk_open(1, f"models/{model_id}/data", OREAD)
        reader.send(tread(77, 1, 0, 100))
        assert not reader.pending(0.3)  # blocks until text is available
    text = bytearray(parse_rread(reader.recv_tag(77)))
    while chunk := reader.read(1, len(text)):
        text += chunk
    assert text.decode() == expected(registry, model_id, "wait", max_tokens=5, temperature=0)


def test_flush_of_a_blocked_read(raw: Raw, tiny: str, registry: ModelRegistry) -> None:
    model_id = raw.load(tiny)
    raw.walk_open(1, f"models/{model_id}/data", ORDWR)
    with model_busy(registry, model_id):
        raw.write(1, b"flush me|6|0")
        raw.send(tread(80, 1, 0, 100))
        assert not raw.pending(0.3)
        raw.send(tflush(81, 80))
        reply = raw.recv()
        assert (reply.tag, reply.kind) == (81, RFLUSH)
        assert not raw.pending(0.3)  # the flushed read never gets a reply
    text = raw.read_all(1).decode()  # the request itself goes on
    assert text == expected(registry, model_id, "flush me", max_tokens=6, temperature=0)
    raw.rpc(tstat(82, 0))


def test_a_generation_error_fails_the_read(raw: Raw, model_dir: Path) -> None:
    model_id = raw.load(str(model_dir / "tiny.gguf"), "n_ctx=32")
    raw.walk_open(1, f"models/{model_id}/data", ORDWR)
    assert (
        "invalid argument" in raw.rpc(twrite(raw.tag(), 1, 0, ("word " * 40 + "|4|0").encode())).error()
    )  # the prompt does not fit the context: the write fails


def test_data_of_a_freed_model_is_gone(raw: Raw, tiny: str) -> None:
    model_id = raw.load(tiny)
    parse_rwalk(raw.rpc(twalk(raw.tag(), 0, 1, "models", str(model_id), "data")))
    raw.walk_open(2, "ctl", OWRITE)
    raw.write(2, f"free {model_id}".encode())
    assert "not found" in raw.rpc(topen(raw.tag(), 1, ORDWR)).error()
    assert "not found" in raw.rpc(tstat(raw.tag(), 1)).error()


def test_max_tokens_and_queue_limits(start_server: StartServer, tiny: str, registry: ModelRegistry) -> None:
    server = start_server(Limits(max_tokens=16, queued=2))
    raw = Raw(str(server.address)).session()
    try:
        model_id = raw.load(tiny)
        for fid in (1, 2, 3):
            raw.walk_open(fid, f"models/{model_id}/data", ORDWR)
        assert "limit of 16" in raw.rpc(twrite(raw.tag(), 1, 0, b"x|17|0")).error()
        with model_busy(registry, model_id):
            raw.write(1, b"x|16|0")
            raw.write(2, b"y|16|0")
            assert raw.rpc(twrite(raw.tag(), 3, 0, b"z|16|0")).error().startswith("busy")
        assert raw.read_all(1) and raw.read_all(2)
    finally:
        raw.close()


# -- info and status -------------------------------------------------------------------------------


def test_info_is_the_model_info_as_json(raw: Raw, tiny: str, registry: ModelRegistry) -> None:
    model_id = raw.load(tiny)
    info = json.loads(raw.cat(f"models/{model_id}/info"))
    assert info == {**registry.get(model_id).info().to_dict(), "model_id": model_id, "refs": 1}


def test_status_counts_requests_and_tokens(raw: Raw, tiny: str, registry: ModelRegistry) -> None:
    model_id = raw.load(tiny)

    def status() -> dict[str, str]:
        lines = raw.cat(f"models/{model_id}/status").decode().splitlines()
        return dict(line.split(" ", 1) for line in lines)

    assert status() == {
        "state": "idle",
        "requests": "0",
        "tokens": "0",
        "tokens_per_second": "0.00",
        "backend": "native",
    }
    raw.walk_open(1, f"models/{model_id}/data", ORDWR)
    with model_busy(registry, model_id):
        raw.write(1, b"count me|7|0")
        assert status()["state"] == "busy"
    raw.read_all(1)
    after = status()
    assert after["state"] == "idle" and after["requests"] == "1" and after["tokens"] == "7"
    assert float(after["tokens_per_second"]) > 0


# -- many clients -----------------------------------------------------------------------------------


def test_twenty_clients_stream_from_one_model_without_crossed_output(
    address: str, tiny: str, registry: ModelRegistry
) -> None:
    loader = Raw(address).session()
    model_id = loader.load(tiny)
    prompts = [f"client {n} says" for n in range(20)]
    wanted = {p: expected(registry, model_id, p, max_tokens=24, temperature=0) for p in prompts}
    assert len(set(wanted.values())) > 10  # the answers differ, so crossing would show
    results: dict[str, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(prompts))

    def client(prompt: str) -> None:
        try:
            raw = Raw(address).session()
            raw.walk_open(1, f"models/{model_id}/data", ORDWR)
            barrier.wait()
            raw.write(1, json.dumps({"prompt": prompt, "max_tokens": 24, "temperature": 0}).encode())
            data, position = bytearray(), 0
            while chunk := raw.read(1, position, 5):  # small reads: many interleaved replies
                data += chunk
                position += len(chunk)
            results[prompt] = data.decode()
            raw.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(p,)) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert results == wanted
    loader.close()


def test_many_reads_in_flight_on_one_connection(raw: Raw, tiny: str, registry: ModelRegistry) -> None:
    model_id = raw.load(tiny)
    prompts = [f"tag {n}" for n in range(8)]
    for fid in range(1, len(prompts) + 1):
        raw.walk_open(fid, f"models/{model_id}/data", ORDWR)
    with model_busy(registry, model_id):
        for fid, prompt in enumerate(prompts, start=1):
            raw.write(fid, f"{prompt}|6|0".encode())
            raw.send(tread(200 + fid, fid, 0, 4096))
    firsts = {fid: parse_rread(raw.recv_tag(200 + fid)) for fid in range(1, len(prompts) + 1)}
    for fid, prompt in enumerate(prompts, start=1):
        rest = bytearray(firsts[fid])
        while chunk := raw.read(fid, len(rest)):
            rest += chunk
        assert rest.decode() == expected(registry, model_id, prompt, max_tokens=6, temperature=0)


def test_a_load_finishes_and_is_owned_even_if_its_client_leaves(connect: Connect, tiny: str) -> None:
    leaving = connect().session()
    leaving.walk_open(1, "ctl", OWRITE)
    leaving.send(twrite(leaving.tag(), 1, 0, f"load {tiny}".encode()))
    leaving.close()
    watcher = connect().session()
    deadline = time.monotonic() + 10
    while watcher.cat("ctl") == b"":
        assert time.monotonic() < deadline, "the load never finished"
        time.sleep(0.02)
    # the fixture checks that closing the server frees it: the server counts it as its own


def test_ctl_on_one_open_file_like_9p_rdwr(raw: Raw, tiny: str, model_dir: Path) -> None:
    first = raw.load(tiny)
    second = raw.load(str(model_dir / "other.gguf"))
    raw.walk_open(1, "ctl", ORDWR)
    listing = raw.read(1, 0)
    assert listing.count(b"\n") == 2
    raw.write(1, f"free {second}".encode(), offset=len(listing))
    assert raw.read(1, 0) == f"{first} {tiny} native 1\n".encode()
    raw.write(1, f"load {model_dir / 'other.gguf'}".encode(), offset=9999)
    assert raw.read(1, 0) == f"{second}\n".encode()
