"""``llambo.Model``: one loaded model as an object, over the same registry as the id functions.

A Model holds one load of its id: ``Model(path).id`` works with :func:`llambo.infer` and friends,
and :meth:`Model.from_id` wraps an id from :func:`llambo.load_model` (adding a load of its own).
Closing the Model, leaving its ``with`` block or letting it be collected undoes exactly its load.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .api import InferenceResult, LoadedModel, LoadParams, ModelInfo, SamplingParams
from .chat import Messages, chat_prompt
from .errors import InvalidModelId
from .generation import TextStream, generate
from .registry import ModelRegistry, default_registry
from .selection import resolve_backend

__all__ = ["Model"]


def _release(registry: ModelRegistry, model_id: int, done: list[bool], lock: threading.Lock) -> None:
    """Undo a Model's load once (from close() or its finaliser, whichever comes first)."""
    with lock:
        if done[0]:
            return
        done[0] = True
    with contextlib.suppress(InvalidModelId, RuntimeError):  # freed already, or the interpreter is exiting
        registry.free(model_id)


class Model:
    """A loaded GGUF model: generate, stream, chat, tokenize; a context manager.

    ``path=None`` loads the default model (SmolLM2-135M-Instruct), fetching it the first time.
    ``backend`` is ``"auto"``, ``"native"`` or ``"reference"`` (default: ``$LLAMBO_BACKEND`` or auto).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        backend: str | None = None,
        n_gpu_layers: int = 0,
        use_mmap: bool = True,
        n_ctx: int = 0,
        n_threads: int = 0,
        n_batch: int = 512,
    ) -> None:
        if path is None:
            from .default_model import ensure_default_model

            path = ensure_default_model()
        params = LoadParams(
            use_mmap=use_mmap, n_gpu_layers=n_gpu_layers, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch
        )
        registry = default_registry()
        self._adopt(registry, registry.load(path, params, resolve_backend(backend)))

    def _adopt(self, registry: ModelRegistry, model_id: int) -> None:
        self._registry = registry
        self.id = model_id
        self._model: LoadedModel = registry.get(model_id)
        self._done = [False]
        self._finalizer = weakref.finalize(self, _release, registry, model_id, self._done, threading.Lock())

    @classmethod
    def from_id(cls, model_id: int) -> Model:
        """A Model for an id from :func:`llambo.load_model`; it adds a load that its close() undoes."""
        registry = default_registry()
        registry.retain(model_id)
        model = cls.__new__(cls)
        model._adopt(registry, model_id)
        return model

    # -- what it is --------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """``"native"`` or ``"reference"``: what runs this model."""
        return self._model.backend

    @property
    def path(self) -> Path:
        return self._model.path

    @property
    def n_ctx(self) -> int:
        """The context window, in tokens (prompt plus generated text)."""
        return self._model.n_ctx

    @property
    def closed(self) -> bool:
        return self._done[0]

    def info(self) -> ModelInfo:
        """Describe the model (:meth:`ModelInfo.to_json` for JSON)."""
        return self._live().info()

    def chat_template(self) -> str | None:
        """The model's own chat template (GGUF ``tokenizer.chat_template``), if it has one."""
        return self._live().chat_template()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"id={self.id}"
        return f"Model({str(self.path)!r}, backend={self.backend!r}, {state})"

    # -- text ----------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Text to token ids."""
        return self._live().tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Token ids back to text."""
        return self._live().detokenize(list(tokens))

    def generate(self, prompt: str | Sequence[int], **sampling: Any) -> InferenceResult:
        """Generate a continuation of ``prompt`` (keywords: the fields of :class:`SamplingParams`)."""
        return generate(self._live(), prompt, SamplingParams.from_kwargs(**sampling))

    def stream(self, prompt: str | Sequence[int], **sampling: Any) -> TextStream:
        """Like :meth:`generate`, as an iterator of text pieces (its ``result`` is set at the end)."""
        return TextStream(self._live(), prompt, SamplingParams.from_kwargs(**sampling))

    def chat_prompt(self, messages: Messages, *, template: str | None = None) -> str:
        """The prompt text :meth:`chat` would generate from."""
        return chat_prompt(self._live(), messages, template=template)

    def chat(self, messages: Messages, *, template: str | None = None, **sampling: Any) -> InferenceResult:
        """The assistant's reply to ``messages`` (dicts or ChatMessage), under the model's template.

        ``template`` overrides the model's own: a jinja string or a built-in name (``"chatml"``).
        """
        params = SamplingParams.from_kwargs(**sampling)
        return generate(self._live(), self.chat_prompt(messages, template=template), params)

    def chat_stream(self, messages: Messages, *, template: str | None = None, **sampling: Any) -> TextStream:
        """Like :meth:`chat`, as an iterator of text pieces."""
        params = SamplingParams.from_kwargs(**sampling)
        return TextStream(self._live(), self.chat_prompt(messages, template=template), params)

    # -- lifetime ------------------------------------------------------------------------------

    def _live(self) -> LoadedModel:
        if self._done[0]:
            raise InvalidModelId(f"this Model (id {self.id}, {self.path.name}) is closed")
        return self._model

    def close(self) -> None:
        """Undo this object's load (the model is freed when no other load holds it); idempotent."""
        self._finalizer()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
