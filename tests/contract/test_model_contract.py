"""The object API (``llambo.Model``), chat and ``infer(request)``: the same contract on each backend.

Like test_contract.py, everything goes through ``import llambo`` on a small synthetic model.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.synthetic_gguf import SyntheticSpec, write_model

import llambo

USER = [{"role": "user", "content": "hello the world"}]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("objects") / "tiny.gguf", SyntheticSpec(n_ctx=128))


@pytest.fixture(scope="module")
def untemplated_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SyntheticSpec(n_ctx=128, chat_template=False)
    return write_model(tmp_path_factory.mktemp("objects") / "plain.gguf", spec)


@pytest.fixture
def model(model_path: Path, backend: str) -> Iterator[llambo.Model]:
    with llambo.Model(model_path, backend=backend, n_threads=1) as model:
        yield model


def test_the_model_reports_its_backend_and_shares_its_id(model: llambo.Model, backend: str) -> None:
    assert model.backend == backend
    assert model.info().backend == backend
    assert json.loads(llambo.get_model_info(model.id))["backend"] == backend
    assert llambo.tokenize(model.id, "hello") == model.tokenize("hello")
    assert model.n_ctx == 128
    assert backend in repr(model)


def test_generate_stream_and_infer_agree(model: llambo.Model) -> None:
    result = model.generate("hello the", temperature=0, max_tokens=12)
    assert isinstance(result, llambo.InferenceResult)
    assert result.backend == model.backend
    assert result.text == llambo.infer(model.id, "hello the", max_tokens=12, temperature=0)
    stream = model.stream("hello the", temperature=0, max_tokens=12)
    pieces = list(stream)
    assert stream.result is not None
    assert "".join(pieces) == stream.result.text == result.text
    assert stream.result.tokens == result.tokens
    assert result.timings.generated_tokens == len(result.tokens)


def test_chat_renders_the_models_template(model: llambo.Model) -> None:
    prompt = model.chat_prompt(USER)
    assert prompt == "<|im_start|>user\nhello the world<|im_end|>\n<|im_start|>assistant\n"
    reply = model.chat(USER, temperature=0, max_tokens=10)
    assert reply.text == model.generate(prompt, temperature=0, max_tokens=10).text
    assert "".join(model.chat_stream(USER, temperature=0, max_tokens=10)) == reply.text


def test_chat_without_a_template_needs_one_named(untemplated_path: Path, backend: str) -> None:
    with llambo.Model(untemplated_path, backend=backend, n_threads=1) as model:
        assert model.chat_template() is None
        with pytest.raises(llambo.InvalidRequest, match=r"no chat template.*template='chatml'"):
            model.chat(USER, max_tokens=2)
        chatml = model.chat_prompt(USER, template="chatml")
        assert chatml.startswith("<|im_start|>user\nhello the world<|im_end|>")
        custom = model.chat_prompt(USER, template="{% for m in messages %}[{{ m.content }}]{% endfor %}")
        assert custom == "[hello the world]"
        assert model.chat(USER, template="chatml", temperature=0, max_tokens=4).finish_reason


def test_infer_runs_a_request_by_id_or_path(model: llambo.Model, model_path: Path) -> None:
    sampling = llambo.SamplingParams(temperature=0, max_tokens=8)
    by_id = llambo.infer(llambo.InferenceRequest(model=model.id, prompt="hello", sampling=sampling))
    assert by_id.text == model.generate("hello", temperature=0, max_tokens=8).text
    chat = llambo.infer(llambo.InferenceRequest(model=model.id, messages=tuple(USER), sampling=sampling))
    assert chat.text == model.chat(USER, temperature=0, max_tokens=8).text
    assert json.loads(llambo.get_model_info(model.id))["refs"] == 1  # the request's hold was undone
    by_path = llambo.infer(llambo.InferenceRequest(model=str(model_path), prompt="hello", sampling=sampling))
    assert by_path.text and by_path.backend in ("native", "reference")
    with pytest.raises(TypeError, match="request alone"):
        llambo.infer(llambo.InferenceRequest(model=model.id, prompt="x"), "y")  # type: ignore[call-overload]
    with pytest.raises(llambo.InvalidRequest, match="exactly one"):
        llambo.InferenceRequest(model=model.id)


def test_ids_and_objects_share_the_registry(model: llambo.Model, model_path: Path, backend: str) -> None:
    model_id = llambo.load_model(model_path, backend=backend, n_threads=1)
    assert model_id == model.id
    wrapped = llambo.Model.from_id(model_id)
    assert json.loads(llambo.get_model_info(model_id))["refs"] == 3
    wrapped.close()
    wrapped.close()  # idempotent
    llambo.free_model(model_id)
    assert json.loads(llambo.get_model_info(model.id))["refs"] == 1
    with pytest.raises(llambo.InvalidModelId, match="closed"):
        wrapped.generate("x")


def test_closing_or_collecting_a_model_frees_its_load(model_path: Path, backend: str) -> None:
    with llambo.Model(model_path, backend=backend, n_threads=1) as model:
        model_id = model.id
    assert model.closed
    with pytest.raises(llambo.InvalidModelId):
        llambo.get_model_info(model_id)
    dropped = llambo.Model(model_path, backend=backend, n_threads=1)
    model_id = dropped.id
    del dropped
    gc.collect()
    with pytest.raises(llambo.InvalidModelId):
        llambo.get_model_info(model_id)


def test_bad_arguments_fail_before_the_backend(model: llambo.Model) -> None:
    with pytest.raises(TypeError, match="unknown sampling parameter"):
        model.generate("x", temprature=0.5)
    with pytest.raises(ValueError):
        model.generate("x", top_p=1.5)
    with pytest.raises(TypeError):
        model.chat("hello")  # type: ignore[arg-type]
    with pytest.raises(llambo.InvalidRequest, match="at least one message"):
        model.chat([])
    with pytest.raises(llambo.ContextOverflowError, match="128"):
        model.generate("hello the world " * 60, max_tokens=4)
