"""The contract both backends satisfy: parameters, results, model info and the model protocols.

Everything a caller passes is validated here, in Python, before any backend (native or
reference) sees it, so a bad argument raises TypeError/ValueError and never reaches C.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from .errors import InvalidRequest

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

BackendName = Literal["native", "reference"]
BACKENDS: tuple[BackendName, ...] = ("native", "reference")

_MAX_SEED = 0xFFFFFFFE  # 0xFFFFFFFF means "random" to llama.cpp


def _check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise InvalidRequest(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result):
        raise InvalidRequest(f"{name} must be finite, got {value}")
    return result


@dataclass(frozen=True)
class LoadParams:
    """How a model is loaded; two loads with equal params share one loaded model."""

    use_mmap: bool = True
    use_mlock: bool = False
    n_gpu_layers: int = 0  # -1 offloads every layer
    n_ctx: int = 0  # 0: the model's training context, capped at DEFAULT_MAX_CTX
    n_batch: int = 512
    n_threads: int = 0  # 0: every core (os.cpu_count())

    DEFAULT_MAX_CTX = 4096

    def __post_init__(self) -> None:
        for name in ("use_mmap", "use_mlock"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        _check_int("n_gpu_layers", self.n_gpu_layers, minimum=-1)
        _check_int("n_ctx", self.n_ctx, minimum=0)
        _check_int("n_batch", self.n_batch, minimum=1)
        _check_int("n_threads", self.n_threads, minimum=0)

    def effective_threads(self) -> int:
        """The thread count to run with."""
        return self.n_threads or os.cpu_count() or 1

    def effective_ctx(self, n_ctx_train: int) -> int:
        """The context size to allocate for a model trained with ``n_ctx_train``."""
        if self.n_ctx:
            return self.n_ctx
        return min(n_ctx_train, self.DEFAULT_MAX_CTX) if n_ctx_train > 0 else self.DEFAULT_MAX_CTX


@dataclass(frozen=True)
class SamplingParams:
    """Sampling, applied in llama.cpp's order: penalties, top_k, top_p, min_p, temperature.

    ``temperature == 0`` means greedy. ``top_k == 0``, ``top_p == 1`` and ``min_p == 0`` disable
    those filters; ``repeat_penalty == 1`` disables the penalty. ``seed=None`` picks a random seed.
    """

    max_tokens: int = 128
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None
    stop: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        _check_int("max_tokens", self.max_tokens, minimum=0)
        temperature = _check_float("temperature", self.temperature)
        if temperature < 0:
            raise InvalidRequest(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        _check_int("top_k", self.top_k, minimum=0)
        top_p = _check_float("top_p", self.top_p)
        if not 0 < top_p <= 1:
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p}")
        min_p = _check_float("min_p", self.min_p)
        if not 0 <= min_p <= 1:
            raise InvalidRequest(f"min_p must be in [0, 1], got {self.min_p}")
        if _check_float("repeat_penalty", self.repeat_penalty) <= 0:
            raise InvalidRequest(f"repeat_penalty must be > 0 (1 = off), got {self.repeat_penalty}")
        _check_int("repeat_last_n", self.repeat_last_n, minimum=-1)
        if self.seed is not None:
            seed = _check_int("seed", self.seed, minimum=0)
            if seed > _MAX_SEED:
                raise InvalidRequest(f"seed must be <= {_MAX_SEED}, got {seed}")
        stop: object = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, Iterable):
            raise TypeError(f"stop must be a string or a sequence of strings, got {type(stop).__name__}")
        items = tuple(stop)
        for item in items:
            if not isinstance(item, str):
                raise TypeError(f"stop strings must be str, got {type(item).__name__}")
            if not item:
                raise InvalidRequest("stop strings must not be empty")
        object.__setattr__(self, "stop", items)
        object.__setattr__(self, "temperature", temperature)
        object.__setattr__(self, "top_p", top_p)
        object.__setattr__(self, "min_p", min_p)
        object.__setattr__(self, "repeat_penalty", float(self.repeat_penalty))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SamplingParams:
        """Build from keyword arguments, naming any unknown one (a typo should not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"unknown sampling parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**kwargs)


class FinishReason(str, Enum):
    """Why generation ended."""

    STOP = "stop"  # an end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens reached, or the context window is full


@dataclass(frozen=True)
class Timings:
    """Token counts and wall-clock seconds of one generation."""

    prompt_tokens: int
    prompt_seconds: float
    generated_tokens: int
    generation_seconds: float

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0


@dataclass(frozen=True)
class InferenceResult:
    """The outcome of one generation."""

    text: str
    tokens: tuple[int, ...]
    finish_reason: FinishReason
    backend: str
    timings: Timings

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["finish_reason"] = self.finish_reason.value
        data["tokens"] = list(self.tokens)
        return data


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation."""

    role: str
    content: str

    @classmethod
    def coerce(cls, value: ChatMessage | Mapping[str, str]) -> ChatMessage:
        if isinstance(value, ChatMessage):
            return value
        if (
            isinstance(value, Mapping)
            and isinstance(value.get("role"), str)
            and isinstance(value.get("content"), str)
        ):
            return cls(value["role"], value["content"])
        raise TypeError(f"a chat message needs str 'role' and 'content', got {value!r}")


@dataclass(frozen=True)
class InferenceRequest:
    """One request: a model (path or id), a prompt or chat messages, and sampling parameters."""

    model: str | int | os.PathLike[str]
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequest("an InferenceRequest needs exactly one of prompt or messages")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise TypeError(f"prompt must be str, got {type(self.prompt).__name__}")
        if self.messages is not None:
            object.__setattr__(self, "messages", tuple(ChatMessage.coerce(m) for m in self.messages))
        if isinstance(self.model, bool) or not isinstance(self.model, (str, int, os.PathLike)):
            raise TypeError(f"model must be a path or a model id, got {type(self.model).__name__}")


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is; JSON-serialisable through :meth:`to_dict` / :meth:`to_json`."""

    path: str
    backend: str
    architecture: str
    name: str
    n_params: int
    file_size: int
    file_type: str
    n_ctx_train: int
    n_ctx: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    vocab_type: str
    n_vocab: int
    special_tokens: dict[str, int | None]
    has_chat_template: bool
    n_gpu_layers: int
    metadata: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


# The special tokens ModelInfo reports, the same for every backend (None: the model has none).
INFO_SPECIAL_TOKENS = ("bos", "eos", "eot", "pad", "unk")

METADATA_ARRAY_PREVIEW = 8


def summarise_metadata_value(value: object) -> str:
    """A metadata value as short text: long arrays become their length and first items."""
    if isinstance(value, (list, tuple)):
        if len(value) <= METADATA_ARRAY_PREVIEW:
            return json.dumps(list(value), ensure_ascii=False, default=str)
        head = json.dumps(list(value[:METADATA_ARRAY_PREVIEW]), ensure_ascii=False, default=str)
        return f"[{len(value)} items] {head[:-1]}, ...]"
    text = str(value)
    return text if len(text) <= 256 else text[:256] + f"... ({len(text)} chars)"


@runtime_checkable
class Session(Protocol):
    """One generation's state on a model: the evaluated tokens and a configured sampler.

    The shared generation loop (:mod:`llambo.generation`) drives it: ``prefill`` once, then
    alternately ``sample`` and ``feed``.
    """

    def prefill(self, tokens: Sequence[int]) -> None:
        """Evaluate the prompt from an empty context (in batches)."""

    def sample(self) -> int:
        """Pick the next token from the last logits with this session's sampler, and accept it."""

    def feed(self, token: int) -> None:
        """Evaluate one more token so the next ``sample`` sees it."""

    def close(self) -> None:
        """Release the sampler (and the context, if the session owns one)."""


@runtime_checkable
class LoadedModel(Protocol):
    """A model loaded by one backend; both backends implement exactly this."""

    backend: str
    path: Path
    params: LoadParams

    @property
    def n_ctx(self) -> int: ...

    @property
    def n_vocab(self) -> int: ...

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Text to token ids."""

    def detokenize(
        self, tokens: Sequence[int], *, remove_special: bool = False, unparse_special: bool = False
    ) -> str:
        """Token ids to text."""

    def token_bytes(self, token: int) -> bytes:
        """The exact bytes one token contributes to generated text (special tokens render empty)."""

    def is_eog(self, token: int) -> bool:
        """Whether the token ends generation (EOS, EOT, ...)."""

    def session(self, params: SamplingParams) -> Session:
        """A new generation session; the caller closes it."""

    def logits(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Evaluate ``tokens`` from an empty context and return the last position's logits."""

    def chat_template(self) -> str | None:
        """The model's own chat template (GGUF ``tokenizer.chat_template``), if it has one."""

    def info(self) -> ModelInfo:
        """Describe the model."""

    def close(self) -> None:
        """Free everything; idempotent."""


@runtime_checkable
class BuiltinChatTemplate(Protocol):
    """Optional for a loaded model: a chat prompt from its library's own template support, used
    when jinja2 cannot render the model's template (the native backend has it, through
    ``llama_chat_apply_template``)."""

    def builtin_chat_prompt(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> str:
        """The prompt for ``messages``, rendered without jinja."""


@runtime_checkable
class Backend(Protocol):
    """A way of running models: can it run here, and load a model."""

    name: BackendName

    def availability(self) -> str | None:
        """None when usable, else the reason it is not (e.g. the loader's error)."""

    def load(self, path: Path, params: LoadParams) -> LoadedModel:
        """Load a GGUF file (raises ModelFileNotFound / ModelLoadError)."""
