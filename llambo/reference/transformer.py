"""The float32 forward pass of llama-family models (llama, qwen2) in numpy, shaped after llama.cpp.

One block is RMSNorm -> attention (fused QKV matmul, optional biases, RoPE, grouped-query
attention over a preallocated KV cache) -> residual -> RMSNorm -> SwiGLU feed-forward -> residual.
The numerics follow llama.cpp where it matters for parity: RoPE angles are built as ggml builds
them (float32 ``theta *= theta_scale`` per pair), the attention scale is ``1/sqrt(head_dim)`` and
query head ``h`` reads key/value head ``h // (n_head / n_head_kv)``.

Speed: decode is memory-bound, so each layer does four large matmuls (QKV, attention output,
gate+up, down) plus the output projection, on weights stored in the order OpenBLAS's gemv reads
fastest (see ``gguf_weights``), and attention is batched over heads with no Python loop over heads
or positions; the rest of a decode step costs ~1 ms of numpy calls.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..errors import ContextOverflowError, InvalidRequest
from .gguf_weights import HParams, LayerWeights, Weights

__all__ = ["Attention", "Block", "FeedForward", "RMSNorm", "RoPE", "Transformer"]

F32Array = npt.NDArray[np.float32]

DEFAULT_MAX_BATCH = 512
"""Prompt tokens evaluated per step (bounds the attention scores to max_batch x n_ctx per head)."""


class RMSNorm:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis."""

    def __init__(self, weight: F32Array, eps: float) -> None:
        self.weight = weight  # (n_embd,)
        self.eps = float(eps)
        self.inv_n = 1.0 / weight.shape[0]

    def __call__(self, x: F32Array) -> F32Array:  # x: (n, n_embd)
        if x.shape[0] == 1:  # decode: one dot product, the scale as a Python float
            row = x[0]  # (n_embd,)
            scale = 1.0 / math.sqrt(float(row @ row) * self.inv_n + self.eps)
            one: F32Array = self.weight * np.float32(scale)  # (n_embd,)
            one *= row
            return one[None]  # (1, n_embd)
        ms = np.einsum("ij,ij->i", x, x)  # (n,)
        ms *= np.float32(self.inv_n)
        ms += np.float32(self.eps)
        out: F32Array = x * (1.0 / np.sqrt(ms))[:, None]  # (n, n_embd)
        out *= self.weight
        return out


class RoPE:
    """Rotary position embedding with ggml's angle tables, applied in place.

    ``norm`` mode (llama) rotates adjacent pairs ``(x[2i], x[2i+1])``; ``neox`` mode (qwen2) rotates
    ``(x[i], x[i + n_rot/2])``. Pair ``i`` at position ``p`` turns by
    ``p * freq_scale * base^(-2i/n_rot) / freq_factor[i]``; dimensions past ``n_rot`` are untouched.
    """

    def __init__(self, hp: HParams, n_ctx: int, freq_factors: F32Array | None = None) -> None:
        self.n_rot = hp.n_rot
        self.half = half = hp.n_rot // 2
        self.neox = hp.rope_type == "neox"
        theta_scale = np.float32(hp.rope_base) ** (np.float32(-2.0) / np.float32(hp.n_rot))
        # ggml: theta = p; then per pair theta *= theta_scale, all in float32.
        steps = np.empty((n_ctx, half), dtype=np.float32)  # (n_ctx, half)
        steps[:, 0] = np.arange(n_ctx, dtype=np.float32)
        steps[:, 1:] = theta_scale
        theta = np.multiply.accumulate(steps, axis=1, dtype=np.float32)  # (n_ctx, half)
        if freq_factors is not None:
            theta /= freq_factors[:half]
        theta *= np.float32(hp.rope_freq_scale)
        self.cos: F32Array = np.cos(theta)  # (n_ctx, half)
        self.sin: F32Array = np.sin(theta)  # (n_ctx, half)
        # In norm mode a pair (x[2i], x[2i+1]) is a complex64 number and the rotation one multiply.
        self.rot = (self.cos + 1j * self.sin).astype(np.complex64)  # (n_ctx, half)

    def __call__(self, x: F32Array, start_pos: int) -> None:  # x: (n, n_heads, head_dim), in place
        n, half, n_rot = x.shape[0], self.half, self.n_rot
        if not self.neox:
            pairs = x[..., :n_rot].view(np.complex64)  # (n, n_heads, half)
            pairs *= self.rot[start_pos : start_pos + n, None, :]  # (x0 + i x1)(cos + i sin)
            return
        cos = self.cos[start_pos : start_pos + n, None, :]  # (n, 1, half)
        sin = self.sin[start_pos : start_pos + n, None, :]  # (n, 1, half)
        x0, x1 = x[..., :half], x[..., half:n_rot]  # (n, n_heads, half) each
        r0 = x0 * cos
        r0 -= x1 * sin
        r1 = x0 * sin
        r1 += x1 * cos
        x0[...] = r0
        x1[...] = r1


class Attention:
    """Grouped-query self-attention with RoPE, reading and extending one layer's KV cache."""

    def __init__(
        self, layer: LayerWeights, hp: HParams, rope: RoPE, k_cache: F32Array, v_cache: F32Array
    ) -> None:
        self.wqkv = layer.wqkv.T  # (n_embd, n_embd_q + 2 * n_embd_kv)
        self.bqkv = layer.bqkv  # (n_embd_q + 2 * n_embd_kv,) or None
        self.wo = layer.wo.T  # (n_embd_q, n_embd)
        self.rope = rope
        self.k_cache = k_cache  # (n_ctx, n_head_kv, head_dim)
        self.v_cache = v_cache  # (n_ctx, n_head_kv, head_dim)
        self.n_head, self.n_head_kv, self.head_dim = hp.n_head, hp.n_head_kv, hp.head_dim
        self.n_group = hp.n_head // hp.n_head_kv
        self.n_qk = (hp.n_head + hp.n_head_kv) * hp.head_dim
        self.scale = np.float32(1.0 / math.sqrt(hp.head_dim))

    def __call__(self, x: F32Array, start_pos: int, mask: F32Array | None) -> F32Array:
        n = x.shape[0]  # x: (n, n_embd); mask: (n, T) or None when n == 1
        h, h_kv, g, d = self.n_head, self.n_head_kv, self.n_group, self.head_dim
        qkv = x @ self.wqkv  # (n, n_embd_q + 2 * n_embd_kv)
        if self.bqkv is not None:
            qkv += self.bqkv
        qk = qkv[:, : self.n_qk].reshape(n, h + h_kv, d)  # (n, n_head + n_head_kv, head_dim), a view
        self.rope(qk, start_pos)  # Q and K rotated together, in place
        end = start_pos + n
        self.k_cache[start_pos:end] = qk[:, h:]  # (n, n_head_kv, head_dim)
        self.v_cache[start_pos:end] = qkv[:, self.n_qk :].reshape(n, h_kv, d)
        keys = self.k_cache[:end].transpose(1, 2, 0)  # (n_head_kv, head_dim, T)
        values = self.v_cache[:end].transpose(1, 0, 2)  # (n_head_kv, T, head_dim)

        # Query heads grouped under the key/value head they share: (n_head_kv, n_group * n, head_dim).
        q = qk[:, :h] * self.scale  # (n, n_head, head_dim)
        if n == 1:
            q = q.reshape(h_kv, g, d)
        else:
            q = q.reshape(n, h_kv, g, d).transpose(1, 2, 0, 3).reshape(h_kv, g * n, d)
        scores = q @ keys  # (n_head_kv, n_group * n, T)
        if mask is not None:
            grouped = scores.reshape(h_kv, g, n, end)  # a view
            grouped += mask  # (n, T) broadcast over heads
        scores -= np.maximum.reduce(scores, axis=-1, keepdims=True)  # softmax over the T positions
        np.exp(scores, out=scores)
        scores /= np.add.reduce(scores, axis=-1, keepdims=True)
        out = scores @ values  # (n_head_kv, n_group * n, head_dim)
        if n == 1:
            merged = out.reshape(1, h * d)  # (1, n_embd_q)
        else:
            merged = out.reshape(h_kv, g, n, d).transpose(2, 0, 1, 3).reshape(n, h * d)  # (n, n_embd_q)
        result: F32Array = merged @ self.wo  # (n, n_embd)
        return result


class FeedForward:
    """SwiGLU: ``down(silu(gate(x)) * up(x))``, gate and up in one matmul."""

    def __init__(self, layer: LayerWeights) -> None:
        self.w_gate_up = layer.w_gate_up.T  # (n_embd, 2 * n_ff)
        self.w_down = layer.w_down.T  # (n_ff, n_embd)
        self.n_ff = layer.w_down.shape[1]

    def __call__(self, x: F32Array) -> F32Array:  # x: (n, n_embd)
        gate_up = x @ self.w_gate_up  # (n, 2 * n_ff)
        gate, up = gate_up[:, : self.n_ff], gate_up[:, self.n_ff :]  # (n, n_ff) each
        hidden = np.negative(gate)  # silu(g) * u = g * u / (1 + exp(-g))
        np.exp(hidden, out=hidden)
        hidden += 1.0
        np.divide(gate, hidden, out=hidden)
        hidden *= up  # (n, n_ff)
        result: F32Array = hidden @ self.w_down  # (n, n_embd)
        return result


class Block:
    """One transformer layer: pre-norm attention and feed-forward, each with a residual."""

    def __init__(
        self, layer: LayerWeights, hp: HParams, rope: RoPE, k_cache: F32Array, v_cache: F32Array
    ) -> None:
        self.attn_norm = RMSNorm(layer.attn_norm, hp.rms_eps)
        self.attention = Attention(layer, hp, rope, k_cache, v_cache)
        self.ffn_norm = RMSNorm(layer.ffn_norm, hp.rms_eps)
        self.feed_forward = FeedForward(layer)

    def __call__(self, x: F32Array, start_pos: int, mask: F32Array | None) -> F32Array:
        x += self.attention(self.attn_norm(x), start_pos, mask)  # x: (n, n_embd), updated in place
        x += self.feed_forward(self.ffn_norm(x))
        return x


class Transformer:
    """A whole model with its KV cache: token ids in, logits out.

    ``forward(tokens, start_pos)`` evaluates ``tokens`` at positions ``start_pos...`` on top of the
    first ``start_pos`` cached positions (``start_pos <= n_past``; a smaller one rewinds) and returns
    the last position's logits ``(n_vocab,)``, or every position's ``(n, n_vocab)`` with ``all_logits``.
    """

    def __init__(
        self, hparams: HParams, weights: Weights, n_ctx: int, *, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        if n_ctx <= 0 or max_batch <= 0:
            raise InvalidRequest(f"n_ctx ({n_ctx}) and max_batch ({max_batch}) must be positive")
        self.hparams = hp = hparams
        self.weights = weights
        self.n_ctx = n_ctx
        self.max_batch = max_batch
        # np.zeros maps untouched pages lazily: memory grows with the positions actually used.
        shape = (hp.n_layer, n_ctx, hp.n_head_kv, hp.head_dim)
        self.k_cache: F32Array = np.zeros(shape, dtype=np.float32)  # (n_layer, n_ctx, n_head_kv, head_dim)
        self.v_cache: F32Array = np.zeros(shape, dtype=np.float32)  # (n_layer, n_ctx, n_head_kv, head_dim)
        self.rope = RoPE(hp, n_ctx, weights.rope_freqs)
        self.blocks = [
            Block(layer, hp, self.rope, self.k_cache[i], self.v_cache[i])
            for i, layer in enumerate(weights.layers)
        ]
        self.tok_embd = weights.tok_embd  # (n_vocab, n_embd)
        self.output_norm = RMSNorm(weights.output_norm, hp.rms_eps)
        self.output = weights.output.T  # (n_embd, n_vocab)
        self.n_past = 0

    def reset(self) -> None:
        """Forget every cached position (the cache memory is kept and simply overwritten)."""
        self.n_past = 0

    def _token_ids(self, tokens: Sequence[int] | npt.NDArray[np.integer]) -> npt.NDArray[np.intp]:
        if isinstance(tokens, np.ndarray):
            if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
                raise TypeError(
                    f"tokens must be a 1-D integer array, got {tokens.dtype} of shape {tokens.shape}"
                )
            ids = tokens.astype(np.intp, copy=False)
        else:
            ids = np.fromiter((operator.index(t) for t in tokens), dtype=np.intp)
        if ids.size == 0:
            raise InvalidRequest("there are no tokens to evaluate")
        n_vocab = self.hparams.n_vocab
        if ids.min() < 0 or ids.max() >= n_vocab:
            bad = ids[(ids < 0) | (ids >= n_vocab)][:5].tolist()
            raise InvalidRequest(f"token ids out of range [0, {n_vocab}): {bad}")
        return ids

    def forward(
        self,
        tokens: Sequence[int] | npt.NDArray[np.integer],
        start_pos: int,
        *,
        all_logits: bool = False,
    ) -> F32Array:
        """Evaluate ``tokens`` at ``start_pos...``; the last logits (n_vocab,), or all (n, n_vocab)."""
        ids = self._token_ids(tokens)
        if not 0 <= start_pos <= self.n_past:
            raise InvalidRequest(f"start_pos {start_pos} must be in [0, n_past={self.n_past}]")
        if start_pos + ids.size > self.n_ctx:
            raise ContextOverflowError(
                f"{start_pos} cached + {ids.size} new tokens do not fit the context of {self.n_ctx}"
            )
        pieces: list[F32Array] = []
        with np.errstate(over="ignore"):  # exp(-gate) may overflow to inf in silu: the result is right
            for begin in range(0, ids.size, self.max_batch):
                chunk = ids[begin : begin + self.max_batch]
                hidden = self._layers(chunk, start_pos + begin)  # (n, n_embd)
                self.n_past = start_pos + begin + chunk.size
                if all_logits:
                    pieces.append(self.output_norm(hidden) @ self.output)  # (n, n_vocab)
        if all_logits:
            every: F32Array = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
            return every
        logits: F32Array = (self.output_norm(hidden[-1:]) @ self.output)[0]  # (n_vocab,)
        return logits

    def _layers(self, ids: npt.NDArray[np.intp], start_pos: int) -> F32Array:
        """The hidden states after the last block for ``ids`` at ``start_pos...``: (n, n_embd)."""
        n = ids.size
        x: F32Array = np.ascontiguousarray(self.tok_embd[ids])  # (n, n_embd)
        mask: F32Array | None = None
        if n > 1:
            end = start_pos + n
            # Row i (position start_pos + i) sees positions 0..start_pos + i.
            mask = np.triu(np.full((n, end), -np.inf, dtype=np.float32), k=start_pos + 1)  # (n, T)
        for block in self.blocks:
            x = block(x, start_pos, mask)
        return x
