"""A GGUF model run by llama.cpp: its vocabulary, one inference context, sessions and a description.

One ``llama_context`` is created per model at load time and shared by every request, one at a time:
:meth:`NativeModel.session` takes the context's lock and :meth:`NativeSession.close` gives it back.
The alternative, a context per request, was measured on 2 cores with the default model (medians of
3 runs, 2 threads per context): a lone client ran 4 greedy 16-token requests in 1.2 s on the shared
context against 1.7 s with a context each (creating one costs ~56 ms), while 8 threads x 4 requests
took 10.9 s shared against 8.4 s (overlapping decodes of a model this small fill idle cores). The
shared context is kept: faster for a single client, and its memory is fixed, where a context per
request adds a KV cache and compute buffers (~100 MB at 4096 tokens for this model) per request.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import operator
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..api import (
    INFO_SPECIAL_TOKENS,
    ChatMessage,
    LoadParams,
    ModelInfo,
    SamplingParams,
    summarise_metadata_value,
)
from ..errors import (
    ContextOverflowError,
    GenerationError,
    InvalidRequest,
    ModelLoadError,
)
from ..gguf_file import check_gguf_file, file_type_name
from . import llama_h
from .library import NativeLibrary, load_library
from .loadlog import captured_log, reason
from .session import NativeSession, decode_error

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["NativeModel"]

# ---------------------------------------------------------------------------------------------
# Names for llama.cpp's numbers
# ---------------------------------------------------------------------------------------------


def _vocab_type_name(value: int) -> str:
    try:
        return llama_h.llama_vocab_type(value).name.removeprefix("LLAMA_VOCAB_TYPE_")
    except ValueError:
        return str(value)


def _load_mode(params: LoadParams) -> int:
    """``use_mmap``/``use_mlock`` as the header's ``llama_load_mode`` (every combination has one)."""
    mode = llama_h.llama_load_mode
    if params.use_mmap:
        return mode.LLAMA_LOAD_MODE_MMAP_MLOCK if params.use_mlock else mode.LLAMA_LOAD_MODE_MMAP
    return mode.LLAMA_LOAD_MODE_MLOCK if params.use_mlock else mode.LLAMA_LOAD_MODE_NONE


# ---------------------------------------------------------------------------------------------
# Closing every model at interpreter exit
# ---------------------------------------------------------------------------------------------

_LIVE: weakref.WeakSet[NativeModel] = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hook_registered = False


def _close_live_models() -> None:
    for model in list(_LIVE):
        try:
            model.close()
        except Exception:
            logging.getLogger(__name__).debug("closing %s at exit failed", model, exc_info=True)


def _register_exit_hook() -> None:
    """Close live models at exit; registered after the library loads so that it runs before its hooks."""
    global _exit_hook_registered
    with _exit_hook_lock:
        if not _exit_hook_registered:
            atexit.register(_close_live_models)
            _exit_hook_registered = True


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

_Token = ctypes.c_int32
_TOKEN_SIZE = ctypes.sizeof(_Token)
_PIECE_BUFFER = 32


class NativeModel:
    """A GGUF model loaded by llama.cpp with one inference context (see the module docstring)."""

    backend = "native"

    # Class-level defaults so that close() and __del__ work on a partially built instance.
    _lib: ctypes.CDLL | None = None
    _model: int | None = None
    _ctx: int | None = None
    _closed = True

    def __init__(self, path: str | os.PathLike[str], params: LoadParams | None = None) -> None:
        self.path = Path(os.fspath(path)).expanduser()
        self.params = params if params is not None else LoadParams()
        if not isinstance(self.params, LoadParams):
            raise TypeError(f"params must be LoadParams, got {type(self.params).__name__}")
        self._state_lock = threading.Lock()
        self._users = 0
        self._ctx_lock = threading.Lock()
        self._ctx_owner: int | None = None
        check_gguf_file(self.path)
        native = load_library()
        _register_exit_hook()
        self._native: NativeLibrary = native
        self._lib = lib = native.lib
        self._closed = False
        try:
            self._model, self._ctx = self._load(lib)
        except BaseException:
            self._closed = True
            self._free()
            raise
        self._vocab: int = lib.llama_model_get_vocab(self._model)
        self._n_vocab: int = lib.llama_vocab_n_tokens(self._vocab)
        self._n_layer: int = lib.llama_model_n_layer(self._model)
        self._n_batch: int = lib.llama_n_batch(self._ctx)
        # llama.cpp rounds the context up to a multiple of 256; the size asked for is the one enforced.
        self._n_ctx: int = min(self._requested_ctx, lib.llama_n_ctx(self._ctx))
        self._memory: int = lib.llama_get_memory(self._ctx)
        self._pieces: list[bytes | None] = [None] * self._n_vocab
        self._eog: dict[int, bool] = {}
        _LIVE.add(self)

    def _load(self, lib: ctypes.CDLL) -> tuple[int, int]:
        """Load the weights and create the context; raise ModelLoadError with llama.cpp's reason."""
        params = self.params
        model_params = lib.llama_model_default_params()
        model_params.n_gpu_layers = params.n_gpu_layers  # negative: every layer
        model_params.load_mode = _load_mode(params)
        with captured_log() as lines:
            model = lib.llama_model_load_from_file(os.fsencode(self.path), model_params)
        if not model:
            raise ModelLoadError(f"llama.cpp could not load {self.path}: {reason(lines)}")
        self._model = model
        self._requested_ctx = params.effective_ctx(lib.llama_model_n_ctx_train(model))
        threads = params.effective_threads()
        ctx_params = lib.llama_context_default_params()
        ctx_params.n_ctx = self._requested_ctx
        ctx_params.n_batch = params.n_batch
        ctx_params.n_ubatch = params.n_batch
        ctx_params.n_seq_max = 1
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        ctx_params.flash_attn_type = llama_h.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_AUTO
        ctx_params.no_perf = False
        with captured_log() as lines:
            ctx = lib.llama_init_from_model(model, ctx_params)
        if not ctx:
            raise ModelLoadError(
                f"llama.cpp loaded {self.path} but could not create a context of "
                f"{self._requested_ctx} tokens: {reason(lines)}"
            )
        return model, ctx

    # -- lifetime -----------------------------------------------------------------------------

    @contextmanager
    def _in_use(self) -> Iterator[ctypes.CDLL]:
        """Keep the model alive for the block (a close() meanwhile frees it at the end)."""
        self._enter()
        try:
            assert self._lib is not None
            yield self._lib
        finally:
            self._leave()

    def _enter(self) -> None:
        with self._state_lock:
            if self._closed:
                raise InvalidRequest(f"the model {self.path.name} is closed")
            self._users += 1

    def _leave(self) -> None:
        with self._state_lock:
            self._users -= 1
            free = self._closed and self._users == 0
        if free:
            self._free()

    def close(self) -> None:
        """Free the context and the model; idempotent. With a session open, they go when it closes."""
        state = self.__dict__.get("_state_lock")
        if state is None:
            return
        with state:
            if self._closed:
                return
            self._closed = True
            free = self._users == 0
        if free:
            self._free()

    def _free(self) -> None:
        lib, ctx, model = self._lib, self._ctx, self._model
        self._ctx = self._model = None
        self._pieces = []
        _LIVE.discard(self)
        if lib is None:
            return
        if ctx:
            lib.llama_free(ctx)
        if model:
            lib.llama_model_free(model)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # the interpreter may be tearing down
            self.close()

    def __enter__(self) -> NativeModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"n_ctx={self.__dict__.get('_n_ctx')}"
        return f"<NativeModel {self.path.name} {state}>"

    @property
    def closed(self) -> bool:
        return self._closed

    # -- sizes --------------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        """Tokens the context holds (the size asked for; llama.cpp may allocate a little more)."""
        return self._n_ctx

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    @property
    def n_batch(self) -> int:
        """Tokens evaluated per ``llama_decode`` call when a prompt is evaluated."""
        return self._n_batch

    # -- vocabulary ---------------------------------------------------------------------------

    def _token_ids(self, tokens: Sequence[int]) -> list[int]:
        """Validated token ids: ints in ``[0, n_vocab)`` (llama.cpp aborts on others)."""
        if isinstance(tokens, (str, bytes)):
            raise TypeError(f"tokens must be a sequence of ints, got {type(tokens).__name__}")
        try:
            ids = [operator.index(t) for t in tokens]
        except TypeError:
            raise TypeError("tokens must be a sequence of ints") from None
        if ids and (min(ids) < 0 or max(ids) >= self._n_vocab):
            bad = [t for t in ids if not 0 <= t < self._n_vocab]
            raise InvalidRequest(f"token ids out of range [0, {self._n_vocab}): {bad[:5]}")
        return ids

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Text to token ids (BOS added when ``add_special`` and the model wants one)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        data = text.encode("utf-8")
        with self._in_use() as lib:
            capacity = len(data) + 2
            buffer = (_Token * capacity)()
            count = lib.llama_tokenize(
                self._vocab, data, len(data), buffer, capacity, add_special, parse_special
            )
            if count < 0:
                if count == -(2**31):
                    raise InvalidRequest(f"the text ({len(data)} bytes) has too many tokens to count")
                capacity = -count
                buffer = (_Token * capacity)()
                count = lib.llama_tokenize(
                    self._vocab, data, len(data), buffer, capacity, add_special, parse_special
                )
            if count < 0:
                raise GenerationError(f"llama_tokenize failed with {count} on {len(data)} bytes of text")
            return buffer[:count]

    def detokenize(
        self, tokens: Sequence[int], *, remove_special: bool = False, unparse_special: bool = False
    ) -> str:
        """Token ids to text, as llama.cpp renders them (invalid UTF-8 becomes U+FFFD)."""
        ids = self._token_ids(tokens)
        if not ids:
            return ""
        array = (_Token * len(ids))(*ids)
        with self._in_use() as lib:
            capacity = max(64, 8 * len(ids))
            for _ in range(2):
                buffer = ctypes.create_string_buffer(capacity)
                count = lib.llama_detokenize(
                    self._vocab, array, len(ids), buffer, capacity, remove_special, unparse_special
                )
                if count >= 0:
                    return buffer.raw[:count].decode("utf-8", "replace")
                capacity = -count
        raise GenerationError(f"llama_detokenize failed with {count} on {len(ids)} tokens")

    def token_bytes(self, token: int) -> bytes:
        """The bytes ``token`` adds to generated text (control tokens add none); cached per token."""
        if token >= 0:
            try:
                piece = self._pieces[token]
            except IndexError:
                pass
            else:
                if piece is not None:
                    return piece
        return self._read_piece(token)

    def _read_piece(self, token: int) -> bytes:
        token = operator.index(token)
        if not 0 <= token < self._n_vocab:
            raise InvalidRequest(f"token id {token} out of range [0, {self._n_vocab})")
        with self._in_use() as lib:
            buffer = ctypes.create_string_buffer(_PIECE_BUFFER)
            count = lib.llama_token_to_piece(self._vocab, token, buffer, _PIECE_BUFFER, 0, False)
            if count < 0:
                buffer = ctypes.create_string_buffer(-count)
                count = lib.llama_token_to_piece(self._vocab, token, buffer, -count, 0, False)
            if count < 0:
                raise GenerationError(f"llama_token_to_piece failed with {count} on token {token}")
            piece = buffer.raw[:count]
            self._pieces[token] = piece
        return piece

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends generation (EOS, EOT, ...); cached per token."""
        known = self._eog.get(token)
        if known is not None:
            return known
        token = operator.index(token)
        if not 0 <= token < self._n_vocab:
            return False
        with self._in_use() as lib:
            result = bool(lib.llama_vocab_is_eog(self._vocab, token))
        self._eog[token] = result
        return result

    # -- the context --------------------------------------------------------------------------

    def _acquire_context(self) -> None:
        """Take the context for this thread (raises rather than deadlock if it already has it)."""
        me = threading.get_ident()
        if self._ctx_owner == me:
            raise GenerationError(
                "this thread already has a session open on this model; finish or close it first"
            )
        self._ctx_lock.acquire()
        if self._closed:  # closed while this thread waited: its memory goes when the caller leaves
            self._ctx_lock.release()
            raise InvalidRequest(f"the model {self.path.name} is closed")
        self._ctx_owner = me

    def _release_context(self) -> None:
        self._ctx_owner = None
        self._ctx_lock.release()

    @contextmanager
    def _context(self) -> Iterator[ctypes.CDLL]:
        """The model kept alive and its context held by this thread for the block."""
        with self._in_use() as lib:
            self._acquire_context()
            try:
                yield lib
            finally:
                self._release_context()

    def _evaluate(self, lib: ctypes.CDLL, ids: list[int]) -> None:
        """Evaluate ``ids`` from an empty context in batches of ``n_batch`` (the context is held)."""
        if not ids:
            raise InvalidRequest("there are no tokens to evaluate")
        if len(ids) > self._n_ctx:
            raise ContextOverflowError(
                f"{len(ids)} tokens do not fit the context of {self._n_ctx}; "
                "shorten the input or load the model with a larger n_ctx"
            )
        # Only the metadata is cleared: cells left from earlier requests are masked out anyway, and
        # wiping the data too would write the whole KV cache (~94 MB at 4096 tokens) per request.
        lib.llama_memory_clear(self._memory, False)
        array = (_Token * len(ids))(*ids)
        step = self._n_batch
        for start in range(0, len(ids), step):
            count = min(step, len(ids) - start)
            chunk = (_Token * count).from_buffer(array, start * _TOKEN_SIZE)
            status = lib.llama_decode(self._ctx, lib.llama_batch_get_one(chunk, count))
            if status:
                raise decode_error(status, count)

    def session(self, params: SamplingParams) -> NativeSession:
        """A generation session holding this model's context until it is closed."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        self._enter()
        try:
            self._acquire_context()
        except BaseException:
            self._leave()
            raise
        try:
            return NativeSession(self, params)
        except BaseException:
            self._release_context()
            self._leave()
            raise

    def _end_session(self) -> None:
        self._release_context()
        self._leave()

    def logits(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """The last position's logits (``n_vocab`` float32) after evaluating ``tokens`` afresh."""
        import numpy as np

        ids = self._token_ids(tokens)
        with self._context() as lib:
            self._evaluate(lib, ids)
            pointer = lib.llama_get_logits_ith(self._ctx, -1)
            if not pointer:
                raise GenerationError("llama.cpp returned no logits for the last position")
            row: npt.NDArray[np.float32] = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
            return np.array(row, dtype=np.float32, copy=True)

    # -- description --------------------------------------------------------------------------

    def chat_template(self) -> str | None:
        """The model's default chat template, or None."""
        with self._in_use() as lib:
            template = lib.llama_model_chat_template(self._model, None)
        return template.decode("utf-8", "replace") if template is not None else None

    def builtin_chat_prompt(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> str:
        """The prompt from libllama's built-in template support (``llama_chat_apply_template``).

        llama.cpp recognises the model's template family by its markers; no jinja is run, so a
        template's own logic (e.g. a default system message) is not applied.
        """
        with self._in_use() as lib:
            template = lib.llama_model_chat_template(self._model, None)
            if template is None:
                raise InvalidRequest("this model has no chat template for llama.cpp to recognise")
            encoded = [(m.role.encode("utf-8"), m.content.encode("utf-8")) for m in messages]
            chat = (llama_h.llama_chat_message * len(encoded))(
                *(llama_h.llama_chat_message(role, content) for role, content in encoded)
            )
            size = 2 * sum(len(r) + len(c) for r, c in encoded) + 256
            for _ in range(2):
                buffer = ctypes.create_string_buffer(size)
                needed = lib.llama_chat_apply_template(
                    template, chat, len(encoded), add_generation_prompt, buffer, size
                )
                if needed < 0:
                    raise InvalidRequest("llama.cpp does not recognise this model's chat template")
                if needed <= size:
                    return buffer.raw[:needed].decode("utf-8", "replace")
                size = needed
        raise GenerationError("llama_chat_apply_template kept asking for a larger buffer")

    def metadata(self) -> dict[str, str]:
        """Every GGUF key/value llama.cpp exposes, as full strings, sorted by key."""
        with self._in_use() as lib:
            model = self._model
            result = {}
            for index in range(lib.llama_model_meta_count(model)):
                key = _read_string(lib.llama_model_meta_key_by_index, model, index)
                value = _read_string(lib.llama_model_meta_val_str_by_index, model, index)
                if key is not None and value is not None:
                    result[key] = value
        return dict(sorted(result.items()))

    def info(self) -> ModelInfo:
        """Describe the model (JSON-serialisable through ``to_json``)."""
        meta = self.metadata()
        with self._in_use() as lib:
            model, vocab = self._model, self._vocab
            requested = self.params.n_gpu_layers
            n_layer = self._n_layer
            offloaded = n_layer if requested < 0 else min(requested, n_layer)
            if not self._native.supports_gpu_offload:
                offloaded = 0
            special = {
                "bos": lib.llama_vocab_bos(vocab),
                "eos": lib.llama_vocab_eos(vocab),
                "eot": lib.llama_vocab_eot(vocab),
                "pad": _int_or_none(meta.get("tokenizer.ggml.padding_token_id")),
                "unk": _int_or_none(meta.get("tokenizer.ggml.unknown_token_id")),
            }
            return ModelInfo(
                path=str(self.path),
                backend=self.backend,
                architecture=meta.get("general.architecture", "unknown"),
                name=meta.get("general.name", self.path.stem),
                n_params=lib.llama_model_n_params(model),
                file_size=_file_size(self.path),
                file_type=file_type_name(meta.get("general.file_type")),
                n_ctx_train=lib.llama_model_n_ctx_train(model),
                n_ctx=self._n_ctx,
                n_embd=lib.llama_model_n_embd(model),
                n_layer=n_layer,
                n_head=lib.llama_model_n_head(model),
                n_head_kv=lib.llama_model_n_head_kv(model),
                vocab_type=_vocab_type_name(lib.llama_vocab_type(vocab)),
                n_vocab=self._n_vocab,
                special_tokens={
                    name: None if special[name] in (None, llama_h.LLAMA_TOKEN_NULL) else special[name]
                    for name in INFO_SPECIAL_TOKENS
                },
                has_chat_template=lib.llama_model_chat_template(model, None) is not None,
                n_gpu_layers=offloaded,
                metadata={key: summarise_metadata_value(value) for key, value in meta.items()},
            )

    def perf(self) -> dict[str, float]:
        """llama.cpp's own counters for the last generation (milliseconds and token counts)."""
        with self._in_use() as lib:
            data = lib.llama_perf_context(self._ctx)
        return {name: getattr(data, name) for name, _ in llama_h.llama_perf_context_data._fields_}


def _read_string(function: Callable[..., int], model: int | None, index: int) -> str | None:
    """Call a snprintf-like metadata getter, growing the buffer to the length it reports."""
    size = 256
    while True:
        buffer = ctypes.create_string_buffer(size)
        length = function(model, index, buffer, size)
        if length < 0:
            return None
        if length < size:
            return buffer.raw[:length].decode("utf-8", "replace")
        size = length + 1


def _file_size(path: Path) -> int:
    """The file's size now (0 if it has been removed since it was loaded: the mapping lives on)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
