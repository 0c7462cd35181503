"""llambo.styx.client: the protocol calls, the llambo shortcuts, and its errors."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from styx_support import StartServer, model_busy

from llambo.api import SamplingParams
from llambo.generation import generate
from llambo.registry import ModelRegistry
from llambo.styx import Client, StyxError
from llambo.styx.fcall import ORDWR, QTDIR


def test_load_ask_stream_and_free(address: str, tiny: str, registry: ModelRegistry) -> None:
    with Client(address) as client:
        model_id = client.load(tiny, n_threads=1)
        assert client.models() == [{"id": model_id, "path": tiny, "backend": "native", "refs": 1}]
        direct = generate(registry.get(model_id), "Hello", SamplingParams(max_tokens=12, temperature=0)).text
        assert client.ask(model_id, "Hello", max_tokens=12, temperature=0) == direct
        assert "".join(client.stream(model_id, "Hello", 12, 0.0)) == direct
        assert client.info(model_id)["name"] == "synthetic-llama"
        assert client.status(model_id)["requests"] == "2"
        client.free(model_id)
        assert client.models() == []


def test_protocol_calls(address: str) -> None:
    with Client(address, msize=4096) as client:
        assert client.msize == 4096
        assert client.stat(client.root).qid.type == QTDIR
        fid = client.new_fid()
        qids = client.walk(client.root, fid, ["ctl"])
        assert len(qids) == 1
        qid, iounit = client.open(fid, ORDWR)
        assert qid == qids[0] and iounit == 4096 - 24
        assert client.read(fid, 0) == b""
        client.clunk(fid)
        assert [entry.name for entry in client.list_dir("/")] == ["ctl", "clone", "models"]
        assert client.stat_path("models").qid.type == QTDIR


def test_errors_raise_styx_error(address: str, model_dir: Path) -> None:
    with Client(address) as client:
        with pytest.raises(StyxError, match=r"^not found"):
            client.read_file("models/3/info")
        with pytest.raises(StyxError, match=r"^permission denied"):
            client.load("/etc/hostname")
        with pytest.raises(StyxError, match=r"^not found"):
            client.load(str(model_dir / "absent.gguf"))
        model_id = client.load(str(model_dir / "tiny.gguf"))
        with pytest.raises(StyxError, match=r"^invalid argument"):
            client.ask(model_id, "", max_tokens=3)
        client.free(model_id)


def test_stream_blocks_until_text_comes(address: str, tiny: str, registry: ModelRegistry) -> None:
    with Client(address) as client:
        model_id = client.load(tiny)
        expected = client.ask(model_id, "Stream", max_tokens=20, temperature=0)
        stream = client.stream(model_id, "Stream", max_tokens=20, temperature=0)
        with model_busy(registry, model_id):
            first: list[str] = []
            reader = threading.Thread(target=lambda: first.append(next(stream)))
            reader.start()
            reader.join(0.3)
            assert reader.is_alive() and not first  # waiting: the model is busy
        reader.join(10)
        assert (first[0] + "".join(stream)) == expected
        client.free(model_id)


def test_clients_over_a_unix_socket(start_server: StartServer, tmp_path: Path, tiny: str) -> None:
    server = start_server(listen=f"unix!{tmp_path}/s")
    with Client(f"unix!{tmp_path}/s") as client:
        model_id = client.load(tiny)
        assert client.ask(model_id, "x", max_tokens=3, temperature=0) is not None
        client.free(model_id)
    assert server.address is not None


def test_abandoned_stream_does_not_leak_fids(address: str, tiny: str, registry: ModelRegistry) -> None:
    with Client(address) as client:
        model_id = client.load(tiny)
        for _ in range(3):
            stream = client.stream(model_id, "x", max_tokens=50, temperature=0)
            next(stream)
            stream.close()
        with model_busy(registry, model_id):
            pass
        assert client.ask(model_id, "y", max_tokens=2, temperature=0) is not None
        client.free(model_id)


def test_models_unquotes_paths_with_blanks(address: str, model_dir: Path) -> None:
    spaced = model_dir / "it's spaced.gguf"
    spaced.write_bytes((model_dir / "tiny.gguf").read_bytes())
    try:
        with Client(address) as client:
            model_id = client.load(str(spaced))
            assert client.models() == [{"id": model_id, "path": str(spaced), "backend": "native", "refs": 1}]
            client.free(model_id)
    finally:
        spaced.unlink()
