"""One generation on a native model's context: a llama.cpp sampler chain, prefill, sample, feed."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..api import SamplingParams
from ..errors import GenerationError, InvalidRequest
from . import llama_h

if TYPE_CHECKING:
    from .model import NativeModel

__all__ = ["NativeSession", "build_sampler", "decode_error"]

_Token = ctypes.c_int32

_DECODE_STATUS = {
    1: "no KV cache slot for the batch (the context is full)",
    2: "aborted",
    -1: "invalid input batch",
}


def decode_error(status: int, n_tokens: int) -> GenerationError:
    meaning = _DECODE_STATUS.get(status, "fatal error")
    return GenerationError(f"llama_decode failed on {n_tokens} token(s) with status {status}: {meaning}")


def build_sampler(lib: ctypes.CDLL, params: SamplingParams, n_vocab: int, n_ctx: int) -> int:
    """A sampler chain in llama.cpp's order: penalties, top_k, top_p, min_p, then temp + dist or greedy."""
    chain_params = lib.llama_sampler_chain_default_params()
    chain_params.no_perf = False
    chain = lib.llama_sampler_chain_init(chain_params)
    if not chain:
        raise GenerationError("llama_sampler_chain_init failed")

    def add(sampler: int | None, name: str) -> None:
        if not sampler:
            raise GenerationError(f"llama.cpp could not create the {name} sampler")
        lib.llama_sampler_chain_add(chain, sampler)  # the chain owns it from here

    try:
        if params.repeat_penalty != 1.0 and params.repeat_last_n != 0:
            last_n = n_ctx if params.repeat_last_n < 0 else params.repeat_last_n
            add(
                lib.llama_sampler_init_penalties(n_vocab, last_n, params.repeat_penalty, 0.0, 0.0),
                "penalties",
            )
        if params.greedy:
            add(lib.llama_sampler_init_greedy(), "greedy")
        else:
            if params.top_k > 0:
                add(lib.llama_sampler_init_top_k(params.top_k), "top_k")
            if params.top_p < 1.0:
                add(lib.llama_sampler_init_top_p(params.top_p, 1), "top_p")
            if params.min_p > 0.0:
                add(lib.llama_sampler_init_min_p(params.min_p, 1), "min_p")
            add(lib.llama_sampler_init_temp(params.temperature), "temp")
            seed = llama_h.LLAMA_DEFAULT_SEED if params.seed is None else params.seed
            add(lib.llama_sampler_init_dist(seed), "dist")
    except BaseException:
        lib.llama_sampler_free(chain)
        raise
    return int(chain)


class NativeSession:
    """One generation on a model's context, which it holds until :meth:`close`.

    The per-token path (``sample``/``feed``) touches only prebound ctypes functions, prebuilt
    arguments and a preallocated one-token batch.
    """

    _closed = True  # until __init__ completes: a half-built session has nothing to give back
    _ready = False

    def __init__(self, model: NativeModel, params: SamplingParams) -> None:
        assert model._lib is not None
        self._model = model
        self._params = params
        self._lib = lib = model._lib
        self._sampler = build_sampler(lib, params, model.n_vocab, model.n_ctx)
        self._penalised = params.repeat_penalty != 1.0 and params.repeat_last_n != 0
        self._ctx_arg = ctypes.c_void_p(model._ctx)
        self._sampler_arg = ctypes.c_void_p(self._sampler)
        self._decode: Callable[..., int] = lib.llama_decode
        self._sample: Callable[..., int] = lib.llama_sampler_sample
        self._one = (_Token * 1)()
        self._one_batch = lib.llama_batch_get_one(self._one, 1)  # points into self._one
        self._closed = False

    def prefill(self, tokens: Sequence[int]) -> None:
        """Evaluate the prompt from an empty context, in batches of the model's ``n_batch``."""
        if self._closed:
            raise InvalidRequest("the session is closed")
        model = self._model
        ids = model._token_ids(tokens)
        self._ready = False
        lib = self._lib
        lib.llama_sampler_reset(self._sampler_arg)  # a new generation: forget accepted tokens, reseed
        lib.llama_perf_context_reset(self._ctx_arg)  # so perf() describes this generation
        model._evaluate(lib, ids)
        if self._penalised:
            # The repetition penalty looks back over the prompt too, as llama.cpp's tools do.
            window = len(ids) if self._params.repeat_last_n < 0 else self._params.repeat_last_n
            accept = lib.llama_sampler_accept
            for token in ids[-window:]:
                accept(self._sampler_arg, token)
        self._ready = True

    def sample(self) -> int:
        """Sample the next token from the last logits; llama_sampler_sample also accepts it."""
        if not self._ready:
            raise InvalidRequest(
                "sample() needs prefill() first" if not self._closed else "the session is closed"
            )
        token: int = self._sample(self._sampler_arg, self._ctx_arg, -1)
        return token

    def feed(self, token: int) -> None:
        """Evaluate one more token (the hot path: no allocation, one C call)."""
        if not self._ready:
            raise InvalidRequest(
                "feed() needs prefill() first" if not self._closed else "the session is closed"
            )
        self._one[0] = token
        status = self._decode(self._ctx_arg, self._one_batch)
        if status:
            self._ready = False  # the logits are not to be trusted (sampling them could abort)
            raise decode_error(status, 1)

    def close(self) -> None:
        """Free the sampler and give the context back; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._ready = False
        try:
            self._lib.llama_sampler_free(self._sampler)
        finally:
            self._model._end_session()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # the interpreter may be tearing down
            self.close()

    def __enter__(self) -> NativeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
