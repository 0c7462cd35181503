"""The numpy forward pass: against a naive float64 transcription, KV-cache consistency, RoPE modes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from support.synthetic_gguf import SyntheticSpec, write_model

from llambo.errors import ContextOverflowError, InvalidRequest
from llambo.reference.gguf_weights import HParams, Weights, load_weights
from llambo.reference.transformer import RoPE, Transformer

ARCHS = ["llama", "qwen2"]


@pytest.fixture(scope="module", params=ARCHS)
def model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[HParams, Weights]:
    """A synthetic model per architecture, with GQA (4 query heads on 2 key/value heads)."""
    arch = request.param
    path = write_model(tmp_path_factory.mktemp(arch) / "m.gguf", SyntheticSpec(arch=arch, tied_output=False))
    hp, weights, _ = load_weights(path, cache=False)
    return hp, weights


def _tokens(hp: HParams, n: int, seed: int = 0) -> npt.NDArray[np.int64]:
    return np.random.default_rng(seed).integers(0, hp.n_vocab, n)


def naive_logits(hp: HParams, w: Weights, tokens: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Every position's logits, written as plainly as possible, in float64, one head at a time."""
    n, d, g = len(tokens), hp.head_dim, hp.n_head // hp.n_head_kv

    def rms(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + hp.rms_eps) * weight

    def rope(v: np.ndarray, pos: int) -> np.ndarray:  # (heads, d)
        out = v.copy()
        for i in range(hp.n_rot // 2):
            theta = pos / hp.rope_scale_factor * hp.rope_base ** (-2 * i / hp.n_rot)
            a, b = (2 * i, 2 * i + 1) if hp.rope_type == "norm" else (i, i + hp.n_rot // 2)
            out[:, a] = v[:, a] * math.cos(theta) - v[:, b] * math.sin(theta)
            out[:, b] = v[:, a] * math.sin(theta) + v[:, b] * math.cos(theta)
        return out

    x = w.tok_embd[tokens].astype(np.float64)
    for layer in w.layers:
        h = rms(x, layer.attn_norm)
        q, k, v = h @ layer.wq.T, h @ layer.wk.T, h @ layer.wv.T
        if layer.bq is not None and layer.bk is not None and layer.bv is not None:
            q, k, v = q + layer.bq, k + layer.bk, v + layer.bv
        q = np.stack([rope(q[t].reshape(hp.n_head, d), t) for t in range(n)])
        k = np.stack([rope(k[t].reshape(hp.n_head_kv, d), t) for t in range(n)])
        v = v.reshape(n, hp.n_head_kv, d)
        attn = np.zeros((n, hp.n_head, d))
        for t in range(n):
            for head in range(hp.n_head):
                kv = head // g
                scores = np.array([q[t, head] @ k[j, kv] for j in range(t + 1)]) / math.sqrt(d)
                p = np.exp(scores - scores.max())
                attn[t, head] = (p / p.sum()) @ v[: t + 1, kv]
        x = x + attn.reshape(n, -1) @ layer.wo.T
        h = rms(x, layer.ffn_norm)
        gate, up = h @ layer.w_gate.T, h @ layer.w_up.T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ layer.w_down.T
    logits: npt.NDArray[np.float64] = rms(x, w.output_norm) @ w.output.T
    return logits


def _close(a: np.ndarray, b: np.ndarray, rel: float) -> bool:
    return float(np.abs(a - b).max()) <= rel * float(np.abs(b).max())


def test_matches_the_naive_transcription(model: tuple[HParams, Weights]) -> None:
    hp, weights = model
    tokens = _tokens(hp, 12)
    expected = naive_logits(hp, weights, tokens)
    got = Transformer(hp, weights, 64).forward(tokens, 0, all_logits=True)
    assert got.shape == (12, hp.n_vocab) and got.dtype == np.float32
    assert _close(got, expected, 1e-4)


def test_linear_rope_scaling_matches_the_naive_transcription(model: tuple[HParams, Weights]) -> None:
    hp, weights = model
    scaled = dataclasses.replace(hp, rope_scaling="linear", rope_scale_factor=4.0)
    tokens = _tokens(hp, 10, seed=3)
    got = Transformer(scaled, weights, 32).forward(tokens, 0, all_logits=True)
    assert _close(got, naive_logits(scaled, weights, tokens), 1e-4)
    assert not _close(got, naive_logits(hp, weights, tokens), 1e-2)


def test_decoding_one_token_equals_a_full_prefill(model: tuple[HParams, Weights]) -> None:
    hp, weights = model
    tokens = _tokens(hp, 24)
    full = Transformer(hp, weights, 64).forward(tokens, 0, all_logits=True)  # (24, n_vocab)
    step = Transformer(hp, weights, 64)
    last = step.forward(tokens[:16], 0)
    np.testing.assert_allclose(last, full[15], atol=1e-4)
    for i in range(16, 24):
        assert step.n_past == i
        np.testing.assert_allclose(step.forward([int(tokens[i])], i), full[i], atol=1e-4)
    assert step.n_past == 24


def test_prefill_in_batches_equals_one_batch(model: tuple[HParams, Weights]) -> None:
    hp, weights = model
    tokens = _tokens(hp, 30)
    whole = Transformer(hp, weights, 64).forward(tokens, 0, all_logits=True)
    batched = Transformer(hp, weights, 64, max_batch=7)
    np.testing.assert_allclose(batched.forward(tokens, 0, all_logits=True), whole, atol=1e-4)
    batched.reset()
    np.testing.assert_allclose(batched.forward(tokens, 0), whole[-1], atol=1e-4)


def test_reset_and_rewind_reuse_the_cache(model: tuple[HParams, Weights]) -> None:
    hp, weights = model
    first, second = _tokens(hp, 10, seed=1), _tokens(hp, 6, seed=2)
    fresh = Transformer(hp, weights, 32)
    expected_first = fresh.forward(first, 0)
    expected_second = Transformer(hp, weights, 32).forward(second, 0)
    assert fresh.n_past == 10
    fresh.reset()
    assert fresh.n_past == 0
    np.testing.assert_allclose(fresh.forward(second, 0), expected_second, atol=1e-5)  # stale cells unused
    fresh.reset()
    np.testing.assert_allclose(fresh.forward(first, 0), expected_first, atol=1e-5)
    # Rewinding: evaluate a different continuation from position 4 over the same prefix.
    branch = np.concatenate([first[:4], second])
    expected_branch = Transformer(hp, weights, 32).forward(branch, 0)
    np.testing.assert_allclose(fresh.forward(second, 4), expected_branch, atol=1e-4)
    assert fresh.n_past == 10


def test_qwen2_biases_are_used(tmp_path: Path) -> None:
    hp, weights, _ = load_weights(write_model(tmp_path / "q.gguf", SyntheticSpec(arch="qwen2")), cache=False)
    assert all(layer.bqkv is not None for layer in weights.layers)
    unbiased = dataclasses.replace(
        weights, layers=tuple(dataclasses.replace(layer, bqkv=None) for layer in weights.layers)
    )
    tokens = _tokens(hp, 8)
    with_bias = Transformer(hp, weights, 16).forward(tokens, 0)
    without = Transformer(hp, unbiased, 16).forward(tokens, 0)
    assert np.abs(with_bias - without).max() > 1e-2


@pytest.mark.parametrize("mode", ["norm", "neox"])
def test_rope_rotates_the_documented_pairs(mode: str) -> None:
    hp = HParams(arch="llama", n_vocab=1, n_embd=8, n_layer=1, n_head=1, n_head_kv=1, head_dim=8, n_ff=1,
                 n_ctx_train=16, rope_base=100.0, n_rot=8, rope_type=mode,  # type: ignore[arg-type]
                 rope_scaling="none", rope_scale_factor=1.0, rms_eps=1e-5, tied_output=True)  # fmt: skip
    rope = RoPE(hp, 16)
    for pair in range(4):
        first, second = (2 * pair, 2 * pair + 1) if mode == "norm" else (pair, pair + 4)
        x = np.zeros((1, 1, 8), dtype=np.float32)
        x[0, 0, first] = 1.0
        rope(x, 5)
        theta = 5 * 100.0 ** (-2 * pair / 8)
        expected = np.zeros(8)
        expected[first], expected[second] = math.cos(theta), math.sin(theta)
        np.testing.assert_allclose(x[0, 0], expected, atol=1e-6)
    # Frequency factors (llama3's rope_freqs) divide the angle of each pair.
    factors = np.array([1.0, 2.0, 4.0, 8.0], dtype=np.float32)
    scaled = RoPE(hp, 16, factors)
    angles = np.arctan2(scaled.sin[3], scaled.cos[3])  # position 3
    np.testing.assert_allclose(angles, 3 * 100.0 ** (-np.arange(4) / 4) / factors, atol=1e-6)


def test_rope_leaves_dimensions_past_n_rot_alone() -> None:
    hp = HParams(arch="llama", n_vocab=1, n_embd=8, n_layer=1, n_head=1, n_head_kv=1, head_dim=8, n_ff=1,
                 n_ctx_train=16, rope_base=100.0, n_rot=4, rope_type="norm", rope_scaling="none",
                 rope_scale_factor=1.0, rms_eps=1e-5, tied_output=True)  # fmt: skip
    x = np.arange(8, dtype=np.float32).reshape(1, 1, 8) + 1
    before = x.copy()
    RoPE(hp, 16)(x, 3)
    np.testing.assert_array_equal(x[..., 4:], before[..., 4:])
    assert not np.allclose(x[..., :4], before[..., :4])


def test_bad_calls_are_refused(model: tuple[HParams, Weights]) -> None:
    hp, weights = model
    t = Transformer(hp, weights, 8)
    with pytest.raises(InvalidRequest, match="no tokens"):
        t.forward([], 0)
    with pytest.raises(InvalidRequest, match="out of range"):
        t.forward([0, hp.n_vocab], 0)
    with pytest.raises(InvalidRequest, match="out of range"):
        t.forward(np.array([-1]), 0)
    with pytest.raises(InvalidRequest, match="start_pos"):
        t.forward([1], 1)  # nothing is cached yet
    with pytest.raises(ContextOverflowError):
        t.forward(list(range(9)), 0)
    with pytest.raises(TypeError):
        t.forward(np.array([[1, 2]]), 0)
    t.forward(list(range(8)), 0)
    with pytest.raises(ContextOverflowError):
        t.forward([1], 8)
    assert t.forward(np.array([3], dtype=np.int32), 7).shape == (hp.n_vocab,)
