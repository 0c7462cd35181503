"""A GGUF model run by the numpy reference: tokenizer, float32 transformer, sampler, description.

It satisfies the same :class:`~llambo.api.LoadedModel` contract as the native model, and like it
serves one generation at a time: :meth:`ReferenceModel.session` takes the model's lock (its KV
cache is the one piece of state a generation owns) and :meth:`ReferenceSession.close` gives it back.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..api import (
    INFO_SPECIAL_TOKENS,
    BackendName,
    LoadParams,
    ModelInfo,
    SamplingParams,
    summarise_metadata_value,
)
from ..errors import GenerationError, InvalidRequest
from ..gguf_file import check_gguf_file, file_type_name
from .gguf_weights import GGUFFile, load_weights
from .sampling import Sampler
from .tokenizer import Tokenizer
from .transformer import Transformer

__all__ = ["ReferenceBackend", "ReferenceModel", "ReferenceSession"]

_VOCAB_TYPES = {"gpt2": "BPE", "llama": "SPM"}
_METADATA_SKIPPED_PREFIX = "tokenizer.ggml."  # vocabulary arrays: summarised, never listed in full


class ReferenceModel:
    """A GGUF model in float32 numpy arrays with one KV cache (see the module docstring)."""

    backend = "reference"

    def __init__(self, path: str | Path, params: LoadParams | None = None) -> None:
        self.path = Path(path).expanduser().resolve()
        self.params = params = params or LoadParams()
        check_gguf_file(self.path)
        self.hparams, self.weights, self._metadata = load_weights(self.path)
        self.tokenizer = Tokenizer.from_file(self.path)
        self._n_ctx = params.effective_ctx(self.hparams.n_ctx_train)
        self.transformer = Transformer(
            self.hparams, self.weights, self._n_ctx, max_batch=max(1, params.n_batch)
        )
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"ReferenceModel({str(self.path)!r}, n_ctx={self._n_ctx})"

    def __enter__(self) -> ReferenceModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def n_vocab(self) -> int:
        return self.tokenizer.n_vocab

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidRequest(f"the model {self.path.name} is closed")

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Text to token ids, exactly as llama.cpp tokenizes it."""
        self._check_open()
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(
        self, tokens: Sequence[int], *, remove_special: bool = False, unparse_special: bool = False
    ) -> str:
        """Token ids back to text, exactly as llama.cpp detokenizes them."""
        self._check_open()
        return self.tokenizer.decode(tokens, remove_special=remove_special, unparse_special=unparse_special)

    def token_bytes(self, token: int) -> bytes:
        return self.tokenizer.token_bytes(token)

    def is_eog(self, token: int) -> bool:
        return self.tokenizer.is_eog(token)

    def _acquire(self) -> None:
        me = threading.get_ident()
        if self._owner == me:
            raise GenerationError("this thread already has a session open on this model; close it first")
        self._lock.acquire()
        if self._closed:
            self._lock.release()
            raise InvalidRequest(f"the model {self.path.name} is closed")
        self._owner = me

    def _release(self) -> None:
        self._owner = None
        self._lock.release()

    def session(self, params: SamplingParams) -> ReferenceSession:
        """A generation session holding this model's KV cache until it is closed."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        self._check_open()
        self._acquire()
        try:
            return ReferenceSession(self, params)
        except BaseException:
            self._release()
            raise

    def logits(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """The last position's logits after evaluating ``tokens`` from an empty cache."""
        self._check_open()
        self._acquire()
        try:
            self.transformer.reset()
            return np.array(self.transformer.forward(tokens, 0), dtype=np.float32, copy=True)
        finally:
            self._release()

    def chat_template(self) -> str | None:
        template = self._metadata.get("tokenizer.chat_template")
        return template if isinstance(template, str) else None

    def metadata(self) -> dict[str, str]:
        """Every GGUF key/value as short text (long arrays summarised)."""
        return {key: summarise_metadata_value(value) for key, value in self._metadata.items()}

    def info(self) -> ModelInfo:
        """Describe the model in the same terms as the native backend."""
        self._check_open()
        hp, meta = self.hparams, self._metadata
        with GGUFFile(self.path) as gfile:  # info is rare: re-read the tensor table, not the weights
            n_params = sum(int(np.prod(tensor.shape)) for tensor in gfile.tensors.values())
        name = meta.get("general.name")
        return ModelInfo(
            path=str(self.path),
            backend=self.backend,
            architecture=hp.arch,
            name=name if isinstance(name, str) else self.path.stem,
            n_params=n_params,
            file_size=self.path.stat().st_size,
            file_type=file_type_name(_text_or_none(meta.get("general.file_type"))),
            n_ctx_train=hp.n_ctx_train,
            n_ctx=self._n_ctx,
            n_embd=hp.n_embd,
            n_layer=hp.n_layer,
            n_head=hp.n_head,
            n_head_kv=hp.n_head_kv,
            vocab_type=_VOCAB_TYPES.get(self.tokenizer.model, self.tokenizer.model.upper()),
            n_vocab=self.n_vocab,
            special_tokens={name: self.tokenizer.special_tokens.get(name) for name in INFO_SPECIAL_TOKENS},
            has_chat_template=self.chat_template() is not None,
            n_gpu_layers=0,
            metadata=self.metadata(),
        )

    def close(self) -> None:
        """Drop the weights and cache; idempotent."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
            del self.transformer
            del self.weights


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)


class ReferenceSession:
    """One generation on a reference model: the sampler and the position in the KV cache."""

    def __init__(self, model: ReferenceModel, params: SamplingParams) -> None:
        self._model = model
        self._transformer = model.transformer
        self._params = params
        self._sampler = Sampler(params, model.n_vocab, n_ctx=model.n_ctx)
        self._logits: npt.NDArray[np.float32] | None = None
        self._closed = False

    def prefill(self, tokens: Sequence[int]) -> None:
        """Evaluate the prompt from an empty cache; the penalty window sees it, as in the native path."""
        if self._closed:
            raise InvalidRequest("the session is closed")
        self._sampler.reset()
        self._transformer.reset()
        self._logits = self._transformer.forward(tokens, 0)
        self._sampler.accept_prompt(tokens)

    def sample(self) -> int:
        """The next token from the last logits (accepted into the sampler)."""
        if self._logits is None:
            raise InvalidRequest("sample() needs prefill() first")
        return self._sampler.sample(self._logits)

    def feed(self, token: int) -> None:
        """Evaluate one more token."""
        if self._logits is None:
            raise InvalidRequest("feed() needs prefill() first")
        self._logits = self._transformer.forward([token], self._transformer.n_past)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._logits = None
        self._model._release()

    def __enter__(self) -> ReferenceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ReferenceBackend:
    """The numpy backend: always available where numpy is."""

    name: BackendName = "reference"

    def availability(self) -> str | None:
        return None

    def load(self, path: Path, params: LoadParams) -> ReferenceModel:
        return ReferenceModel(path, params)
