"""Token sampling for the reference backend, in the order and with the semantics of llama.cpp's chain.

The native backend builds ``penalties -> greedy`` when ``temperature == 0`` and otherwise
``penalties -> top_k -> top_p -> min_p -> temp -> dist`` (each filter only when enabled); this module
does the same steps on numpy arrays, following ``src/llama-sampler.cpp``:

* penalties: each distinct token among the last ``repeat_last_n`` accepted ones has its logit divided
  by ``repeat_penalty`` when positive, multiplied when not (frequency and presence penalties are 0);
* top_k keeps the ``k`` largest logits, sorted; top_p keeps the shortest sorted prefix whose softmax
  mass reaches ``p``; min_p keeps logits ``>= max + log(min_p)``; each keeps at least one token;
* temperature divides the logits; dist draws one uniform number per call and walks the cumulative
  softmax of the candidates.

The random stream is numpy's (a ``Generator`` seeded with ``params.seed``), not llama.cpp's
``mt19937``, so a seed repeats exactly within this backend but does not reproduce native draws.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from ..api import SamplingParams

__all__ = ["Sampler"]

F32Array = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.intp]

_TOP_P_FIRST_SORT = 256  # like llama.cpp, try the 256 best tokens before sorting the whole vocabulary


class Sampler:
    """Picks tokens from logits; ``sample`` also accepts the token it picks, as llama_sampler_sample does.

    ``n_ctx`` is the window of ``repeat_last_n == -1`` (the whole context); without it that window
    is unbounded.
    """

    def __init__(self, params: SamplingParams, n_vocab: int, *, n_ctx: int | None = None) -> None:
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        if n_vocab <= 0:
            raise ValueError(f"n_vocab must be positive, got {n_vocab}")
        self.params = params
        self.n_vocab = n_vocab
        self.penalised = params.repeat_penalty != 1.0 and params.repeat_last_n != 0
        window = n_ctx if params.repeat_last_n < 0 else params.repeat_last_n
        self._history: deque[int] = deque(maxlen=window)
        self._rng = np.random.default_rng(params.seed)

    def reset(self) -> None:
        """Forget the accepted tokens and restart the random stream from the seed."""
        self._history.clear()
        self._rng = np.random.default_rng(self.params.seed)

    def accept(self, token: int) -> None:
        """Record a token for the repetition penalty (``sample`` already does this for its own picks)."""
        if self.penalised:
            self._history.append(int(token))

    def accept_prompt(self, tokens: Iterable[int]) -> None:
        """Accept prompt tokens, as the native session does after prefill (only the window is kept)."""
        for token in tokens:
            self.accept(token)

    def sample(self, logits: npt.ArrayLike) -> int:
        """The next token for ``logits`` (n_vocab,), which are not modified; the token is accepted."""
        values = np.asarray(logits, dtype=np.float32)
        if values.shape != (self.n_vocab,):
            raise ValueError(f"logits must have shape ({self.n_vocab},), got {values.shape}")
        if self.penalised and self._history:
            values = self._penalise(values)
        # Greedy takes the first of equal maxima, like llama.cpp's greedy sampler.
        token = int(np.argmax(values)) if self.params.greedy else self._draw(values)
        self.accept(token)
        return token

    def _penalise(self, logits: F32Array) -> F32Array:
        out: F32Array = logits.copy()  # (n_vocab,)
        ids = np.fromiter(set(self._history), dtype=np.intp)  # each distinct token once
        picked = out[ids]
        penalty = np.float32(self.params.repeat_penalty)
        out[ids] = np.where(picked <= 0, picked * penalty, picked / penalty)
        return out

    def _draw(self, logits: F32Array) -> int:
        params = self.params
        ids: IdArray = np.arange(logits.size, dtype=np.intp)  # candidates, in their current order
        values = logits  # (n_candidates,)
        is_sorted = False
        if params.top_k > 0:
            ids, values = _top_k(ids, values, params.top_k)
            is_sorted = True
        if params.top_p < 1.0:
            ids, values = _top_p(ids, values, params.top_p, is_sorted)
            is_sorted = True
        if params.min_p > 0.0:
            ids, values = _min_p(ids, values, params.min_p)
        values = values / np.float32(params.temperature)
        # dist: one uniform draw per call (even with one candidate), then the cumulative walk.
        target = self._rng.random()
        weights = np.exp(values - values.max())  # (n_candidates,) float32 like expf
        cumulative = np.cumsum(weights, dtype=np.float64)
        index = int(np.searchsorted(cumulative, cumulative[-1] * target, side="left"))
        return int(ids[min(index, ids.size - 1)])


def _sorted_desc(ids: IdArray, values: F32Array, k: int) -> tuple[IdArray, F32Array]:
    """The ``k`` best candidates, best first (stable among equal logits)."""
    if k < values.size:
        best = np.argpartition(-values, k - 1)[:k]
        order = best[np.argsort(-values[best], kind="stable")]
    else:
        order = np.argsort(-values, kind="stable")
    return ids[order], values[order]


def _top_k(ids: IdArray, values: F32Array, k: int) -> tuple[IdArray, F32Array]:
    return _sorted_desc(ids, values, min(k, values.size))


def _top_p(ids: IdArray, values: F32Array, p: float, is_sorted: bool) -> tuple[IdArray, F32Array]:
    """The shortest best-first prefix whose probability mass reaches ``p`` (at least one token)."""
    weights = np.exp(values - values.max())  # softmax over the current candidates, in float32
    total = weights.sum(dtype=np.float32)
    if not is_sorted:
        k = min(_TOP_P_FIRST_SORT, values.size)
        head_ids, head_values = _sorted_desc(ids, values, k)
        head = np.cumsum(np.exp(head_values - values.max()) / total, dtype=np.float32)
        if k == values.size or head[-1] >= p:
            ids, values, cumulative = head_ids, head_values, head
        else:
            ids, values = _sorted_desc(ids, values, values.size)
            cumulative = np.cumsum(np.exp(values - values.max()) / total, dtype=np.float32)
    else:
        cumulative = np.cumsum(weights / total, dtype=np.float32)
    reached = np.flatnonzero(cumulative >= np.float32(p))
    keep = int(reached[0]) + 1 if reached.size else values.size
    return ids[:keep], values[:keep]


def _min_p(ids: IdArray, values: F32Array, min_p: float) -> tuple[IdArray, F32Array]:
    """Candidates whose probability is at least ``min_p`` times the best one's (order kept)."""
    threshold = values.max() + np.float32(math.log(min_p))
    keep = values >= threshold  # the maximum always passes
    return ids[keep], values[keep]
