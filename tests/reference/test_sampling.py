"""The reference sampler: llama.cpp's chain order and semantics, on hand-made logits."""

from __future__ import annotations

from collections import Counter

import numpy as np
import numpy.typing as npt
import pytest

from llambo.api import SamplingParams
from llambo.reference.sampling import Sampler

PROBS = np.array([0.5, 0.3, 0.15, 0.05])


def _logits(probs: npt.ArrayLike = PROBS) -> npt.NDArray[np.float32]:
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


def _params(**kwargs: object) -> SamplingParams:
    """No filter, temperature 1, unless asked: each test turns on only what it checks."""
    base: dict[str, object] = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 1234}
    base.update(kwargs)
    return SamplingParams(**base)  # type: ignore[arg-type]


def _draws(params: SamplingParams, logits: npt.NDArray[np.float32], n: int = 4000) -> Counter[int]:
    sampler = Sampler(params, logits.size)
    return Counter(sampler.sample(logits) for _ in range(n))


def test_greedy_is_argmax_first_of_ties() -> None:
    rng = np.random.default_rng(0)
    sampler = Sampler(_params(temperature=0.0), 1000)
    for _ in range(20):
        logits = rng.standard_normal(1000).astype(np.float32)
        assert sampler.sample(logits) == int(np.argmax(logits))
    tied = np.array([1.0, 3.0, 3.0, 2.0], dtype=np.float32)
    assert Sampler(_params(temperature=0.0), 4).sample(tied) == 1


def test_top_k_1_is_greedy_whatever_the_temperature() -> None:
    rng = np.random.default_rng(1)
    for seed in range(5):
        sampler = Sampler(_params(top_k=1, temperature=2.0, top_p=0.9, min_p=0.05, seed=seed), 500)
        for _ in range(10):
            logits = rng.standard_normal(500).astype(np.float32)
            assert sampler.sample(logits) == int(np.argmax(logits))


def test_seeded_runs_repeat_and_seeds_differ() -> None:
    logits = np.zeros(1000, dtype=np.float32)  # uniform: every draw is informative
    params = SamplingParams(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0, seed=42)
    first = [Sampler(params, 1000).sample(logits) for _ in range(1)]
    a, b = Sampler(params, 1000), Sampler(params, 1000)
    run_a = [a.sample(logits) for _ in range(50)]
    run_b = [b.sample(logits) for _ in range(50)]
    assert run_a == run_b and run_a[:1] == first
    other = Sampler(SamplingParams(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0, seed=43), 1000)
    assert [other.sample(logits) for _ in range(50)] != run_a
    a.reset()
    assert [a.sample(logits) for _ in range(50)] == run_a
    unseeded = [
        Sampler(SamplingParams(temperature=0.9, top_k=0, min_p=0.0), 1000).sample(logits) for _ in range(20)
    ]
    assert len(set(unseeded)) > 1


def test_draws_follow_the_softmax() -> None:
    counts = _draws(_params(), _logits())
    for token, p in enumerate(PROBS):
        assert counts[token] / 4000 == pytest.approx(p, abs=0.03)


def test_temperature_sharpens_and_flattens() -> None:
    cold = _draws(_params(temperature=0.25), _logits())
    hot = _draws(_params(temperature=4.0), _logits())
    assert cold[0] / 4000 == pytest.approx(0.5**4 / (PROBS**4).sum(), abs=0.03)
    assert hot[3] / 4000 == pytest.approx(0.05**0.25 / (PROBS**0.25).sum(), abs=0.03)


@pytest.mark.parametrize(
    ("top_p", "kept"), [(0.45, {0}), (0.75, {0, 1}), (0.9, {0, 1, 2}), (0.99, {0, 1, 2, 3})]
)
def test_top_p_keeps_the_shortest_prefix_reaching_p(top_p: float, kept: set[int]) -> None:
    counts = _draws(_params(top_p=top_p), _logits())
    assert set(counts) == kept
    mass = PROBS[sorted(kept)].sum()
    for token in kept:
        assert counts[token] / 4000 == pytest.approx(PROBS[token] / mass, abs=0.03)


def test_top_p_on_a_large_unsorted_vocabulary() -> None:
    rng = np.random.default_rng(5)
    logits = rng.standard_normal(5000).astype(np.float32) * 3  # a flat tail: more than 256 tokens needed
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    allowed = set(order[: int(np.searchsorted(np.cumsum(probs[order]), 0.9)) + 1].tolist())
    assert len(allowed) > 256
    assert set(_draws(_params(top_p=0.9), logits, 3000)) <= allowed


@pytest.mark.parametrize(("min_p", "kept"), [(0.05, {0, 1, 2, 3}), (0.25, {0, 1, 2}), (0.7, {0})])
def test_min_p_keeps_tokens_near_the_best(min_p: float, kept: set[int]) -> None:
    assert set(_draws(_params(min_p=min_p), _logits())) == kept


def test_min_p_is_applied_before_temperature() -> None:
    # At temperature 10 token 3 would be likely, but min_p looks at the untempered logits.
    assert 3 not in _draws(_params(min_p=0.25, temperature=10.0), _logits())


def test_top_k_renormalises_before_top_p() -> None:
    # top_k=2 leaves [0.4, 0.35] -> [0.53, 0.47]; top_p=0.5 then keeps token 0 alone. (top_p over the
    # full distribution first would have kept two tokens.)
    counts = _draws(_params(top_k=2, top_p=0.5), _logits([0.4, 0.35, 0.25]))
    assert set(counts) == {0}
    assert set(_draws(_params(top_k=2), _logits([0.4, 0.35, 0.25]))) == {0, 1}


def test_repeat_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    params = _params(temperature=0.0, repeat_penalty=2.0, repeat_last_n=64)
    sampler = Sampler(params, 4)
    logits = np.array([5.0, 4.0, -1.0, -1.5], dtype=np.float32)
    assert sampler.sample(logits) == 0  # nothing accepted yet; sample() accepts token 0
    assert sampler.sample(logits) == 1  # 5 / 2 = 2.5 < 4
    negative = np.array([-1.0, -1.5, -9.0, -9.0], dtype=np.float32)
    fresh = Sampler(params, 4)
    fresh.accept(0)
    assert fresh.sample(negative) == 1  # -1 * 2 = -2 < -1.5
    np.testing.assert_array_equal(negative, [-1.0, -1.5, -9.0, -9.0])  # the caller's logits are untouched


def test_repeat_penalty_window_and_off_switches() -> None:
    logits = np.array([5.0, 4.0, 0.0, 0.0], dtype=np.float32)
    windowed = Sampler(_params(temperature=0.0, repeat_penalty=2.0, repeat_last_n=2), 4)
    windowed.accept_prompt([0, 2, 3])  # token 0 has left the 2-token window
    assert windowed.sample(logits) == 0
    for off in (
        _params(temperature=0.0, repeat_penalty=1.0),
        _params(temperature=0.0, repeat_penalty=2.0, repeat_last_n=0),
    ):
        sampler = Sampler(off, 4)
        sampler.accept(0)
        assert sampler.sample(logits) == 0
    whole = Sampler(_params(temperature=0.0, repeat_penalty=2.0, repeat_last_n=-1), 4, n_ctx=3)
    whole.accept_prompt([0, 2, 3])  # n_ctx=3: token 0 still counts
    assert whole.sample(logits) == 1


def test_penalties_apply_before_the_filters() -> None:
    # After the penalty, token 1 is the best: top_k=1 must pick it.
    sampler = Sampler(_params(top_k=1, repeat_penalty=4.0, repeat_last_n=8), 3)
    sampler.accept(0)
    assert sampler.sample(np.array([3.0, 2.0, 0.0], dtype=np.float32)) == 1


def test_bad_input_is_refused() -> None:
    sampler = Sampler(_params(), 4)
    with pytest.raises(ValueError, match="shape"):
        sampler.sample(np.zeros(5, dtype=np.float32))
    with pytest.raises(TypeError):
        Sampler({"temperature": 0}, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Sampler(_params(), 0)
