"""The contract every backend keeps, run against each of them through the public id functions.

A small synthetic model keeps this fast; what differs between backends is only ``backend``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.synthetic_gguf import SyntheticSpec, write_model

import llambo
from llambo.api import FinishReason, SamplingParams
from llambo.generation import TextStream, generate
from llambo.registry import default_registry

TEXTS = ["hello the world", "  two  spaces\tand a tab\n", "ünïcödé ✓ 漢字", "<|im_start|>user\nhi<|im_end|>"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("contract") / "tiny.gguf", SyntheticSpec(n_ctx=128))


@pytest.fixture
def model_id(model_path: Path, backend: str) -> Iterator[int]:
    model_id = llambo.load_model(model_path, backend=backend, n_threads=1)
    try:
        yield model_id
    finally:
        llambo.free_model(model_id)


def test_info_describes_the_model_and_names_the_backend(model_id: int, backend: str) -> None:
    info = json.loads(llambo.get_model_info(model_id))
    assert info["backend"] == backend
    assert info["architecture"] == "llama"
    assert info["n_layer"] == 2
    assert info["n_ctx"] == 128
    assert info["has_chat_template"] is True
    assert set(info["special_tokens"]) == {"bos", "eos", "eot", "pad", "unk"}
    assert info["refs"] == 1


@pytest.mark.parametrize("text", TEXTS)
def test_detokenize_inverts_tokenize(model_id: int, text: str) -> None:
    tokens = llambo.tokenize(model_id, text)
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert llambo.detokenize(model_id, tokens) == text


def test_greedy_generation_is_deterministic_and_bounded(model_id: int) -> None:
    first = llambo.infer(model_id, "hello the", max_tokens=12, temperature=0)
    assert first == llambo.infer(model_id, "hello the", max_tokens=12, temperature=0)
    model = default_registry().get(model_id)
    result = generate(model, "hello the", SamplingParams(temperature=0, max_tokens=12))
    assert result.text == first
    assert len(result.tokens) <= 12
    assert result.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    if result.finish_reason is FinishReason.LENGTH:
        assert len(result.tokens) == 12


def test_seeded_sampling_repeats(model_id: int) -> None:
    runs = {llambo.infer(model_id, "the", max_tokens=10, temperature=1.0, seed=7) for _ in range(3)}
    assert len(runs) == 1


def test_stream_pieces_join_to_the_whole_text(model_id: int) -> None:
    model = default_registry().get(model_id)
    params = SamplingParams(temperature=0, max_tokens=16)
    stream = TextStream(model, "an", params)
    pieces = list(stream)
    assert stream.result is not None
    assert "".join(pieces) == stream.result.text == generate(model, "an", params).text
    assert all(piece for piece in pieces)


def test_stop_string_ends_the_text_before_it(model_id: int) -> None:
    model = default_registry().get(model_id)
    full = generate(model, "in", SamplingParams(temperature=0, max_tokens=24)).text
    if len(full) < 4:
        pytest.skip(f"the synthetic model produced too little text to cut: {full!r}")
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    result = generate(model, "in", SamplingParams(temperature=0, max_tokens=24, stop=(stop,)))
    assert result.text == full[: full.index(stop)]
    assert result.finish_reason is FinishReason.STOP


def test_loading_again_shares_the_id(model_path: Path, backend: str, model_id: int) -> None:
    again = llambo.load_model(model_path, backend=backend, n_threads=1)
    try:
        assert again == model_id
        assert json.loads(llambo.get_model_info(model_id))["refs"] == 2
    finally:
        llambo.free_model(again)


def test_errors_are_the_same(model_path: Path, backend: str, model_id: int, tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        llambo.infer(model_id, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        llambo.infer(model_id, "x", max_tokens=-1)
    with pytest.raises(ValueError):
        llambo.infer(model_id, "x", temperature=-0.5)
    with pytest.raises(ValueError):
        llambo.infer(model_id, "x", top_p=0)
    with pytest.raises(TypeError, match="unknown sampling parameter"):
        llambo.infer(model_id, "x", temprature=0.5)
    with pytest.raises(llambo.InvalidModelId):
        llambo.tokenize(31, "x")
    with pytest.raises(FileNotFoundError):
        llambo.load_model(tmp_path / "missing.gguf", backend=backend)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(llambo.ModelLoadError, match="not a GGUF"):
        llambo.load_model(bad, backend=backend)
    small = llambo.load_model(model_path, backend=backend, n_ctx=16, n_threads=1)
    try:
        with pytest.raises(llambo.ContextOverflowError, match="16"):
            llambo.infer(small, "hello the world " * 10, max_tokens=4)
    finally:
        llambo.free_model(small)
