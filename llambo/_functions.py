"""The functional API on model ids: load and free models, tokenize, generate, describe.

Every argument is checked here, in Python, before any backend runs; the models themselves live in
:func:`llambo.registry.default_registry`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, overload

from .api import InferenceRequest, InferenceResult, LoadParams, SamplingParams
from .chat import chat_prompt
from .generation import generate
from .registry import default_registry
from .selection import resolve_backend

__all__ = ["detokenize", "free_model", "get_model_info", "infer", "list_models", "load_model", "tokenize"]


def _check_id(model_id: object) -> int:
    if isinstance(model_id, bool) or not isinstance(model_id, int):
        raise TypeError(f"model_id must be an int, got {type(model_id).__name__}")
    return model_id


def _check_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, got {type(value).__name__}")
    return value


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def load_model(
    path: str | os.PathLike[str],
    use_mmap: bool = True,
    n_gpu_layers: int = 0,
    *,
    backend: str | None = None,
    n_ctx: int = 0,
    n_threads: int = 0,
    n_batch: int = 512,
) -> int:
    """Load a GGUF model and return its id (the same id again for the same file and settings).

    ``backend``: ``"auto"`` (native, else the reference with a warning), ``"native"`` or
    ``"reference"``; None reads ``$LLAMBO_BACKEND`` (default auto).
    """
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    params = LoadParams(
        use_mmap=use_mmap, n_gpu_layers=n_gpu_layers, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch
    )
    return default_registry().load(path, params, resolve_backend(backend))


def free_model(model_id: int) -> None:
    """Undo one :func:`load_model`; the model is freed when the last load of it is undone."""
    default_registry().free(_check_id(model_id))


def tokenize(model_id: int, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
    """Text to the model's token ids."""
    _check_id(model_id)
    _check_str("text", text)
    _check_bool("add_special", add_special)
    _check_bool("parse_special", parse_special)
    return (
        default_registry().get(model_id).tokenize(text, add_special=add_special, parse_special=parse_special)
    )


def detokenize(model_id: int, tokens: Sequence[int]) -> str:
    """The model's token ids back to text."""
    _check_id(model_id)
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise TypeError(f"tokens must be a sequence of ints, got {type(tokens).__name__}")
    for token in tokens:
        if isinstance(token, bool) or not isinstance(token, int):
            raise TypeError(f"tokens must be ints, got {type(token).__name__}")
    return default_registry().get(model_id).detokenize(tokens)


@overload
def infer(
    model_id: int, prompt: str, max_tokens: int = 128, temperature: float = 0.8, **sampling: Any
) -> str: ...


@overload
def infer(model_id: InferenceRequest) -> InferenceResult: ...


def infer(
    model_id: int | InferenceRequest,
    prompt: str | None = None,
    max_tokens: int = 128,
    temperature: float = 0.8,
    **sampling: Any,
) -> str | InferenceResult:
    """Generate a continuation of ``prompt`` (keyword arguments: the fields of SamplingParams).

    Given one :class:`InferenceRequest` instead, run it (loading its model path for the call if
    it names a file) and return the whole :class:`InferenceResult`.
    """
    if isinstance(model_id, InferenceRequest):
        if prompt is not None or sampling:
            raise TypeError("infer(request) takes the request alone; put the sampling in request.sampling")
        return _run_request(model_id)
    _check_id(model_id)
    _check_str("prompt", prompt)
    params = SamplingParams.from_kwargs(max_tokens=max_tokens, temperature=temperature, **sampling)
    assert prompt is not None
    return generate(default_registry().get(model_id), prompt, params).text


def _run_request(request: InferenceRequest) -> InferenceResult:
    registry = default_registry()
    if isinstance(request.model, int):
        registry.retain(request.model)  # held for the call, so a concurrent free cannot close it
        model_id = request.model
    else:
        model_id = load_model(request.model)
    try:
        model = registry.get(model_id)
        if request.messages is not None:
            prompt = chat_prompt(model, request.messages)
        else:
            assert request.prompt is not None
            prompt = request.prompt
        return generate(model, prompt, request.sampling)
    finally:
        registry.free(model_id)


def get_model_info(model_id: int) -> str:
    """The model's description as JSON, with its ``model_id`` and ``refs`` (outstanding loads)."""
    _check_id(model_id)
    registry = default_registry()
    data = registry.get(model_id).info().to_dict()
    data["model_id"] = model_id
    data["refs"] = registry.refs(model_id)
    return json.dumps(data, indent=2, ensure_ascii=False)


def list_models() -> list[dict[str, Any]]:
    """Every loaded model: id, path, backend, refs and load parameters."""
    return [entry.to_dict() for entry in default_registry().entries()]
