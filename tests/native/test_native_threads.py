"""Concurrency: requests from many threads on one model serialise on its context and stay exact."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import llambo
from llambo.api import SamplingParams
from llambo.generation import generate
from llambo.native.model import NativeModel

pytestmark = pytest.mark.native

GREEDY_16 = SamplingParams(temperature=0, max_tokens=16)
TOPICS = ["cats", "the sea", "Paris", "rust", "music", "trees", "stars", "bread"]
PROMPTS = [
    f"<|im_start|>user\nTell me one fact about {topic}.<|im_end|>\n<|im_start|>assistant\n"
    for topic in TOPICS
]


@pytest.mark.slow
def test_eight_threads_four_requests_each(native_model: NativeModel) -> None:
    expected = {prompt: generate(native_model, prompt, GREEDY_16).tokens for prompt in PROMPTS}
    start = threading.Barrier(8)

    def worker(index: int) -> list[tuple[str, tuple[int, ...]]]:
        start.wait()
        results = []
        for request in range(4):
            prompt = PROMPTS[(index + request) % len(PROMPTS)]
            results.append((prompt, generate(native_model, prompt, GREEDY_16).tokens))
        return results

    with ThreadPoolExecutor(8) as pool:
        outcomes = [item for batch in pool.map(worker, range(8)) for item in batch]
    assert len(outcomes) == 32
    for prompt, tokens in outcomes:
        assert tokens == expected[prompt], prompt


def test_tokenizing_runs_alongside_a_generation(native_model: NativeModel) -> None:
    """The vocabulary needs no lock: tokenize while another thread holds the context."""
    session = native_model.session(GREEDY_16)
    try:
        session.prefill(native_model.tokenize("Hello there"))
        result: list[list[int]] = []
        thread = threading.Thread(target=lambda: result.append(native_model.tokenize("in parallel")))
        thread.start()
        thread.join(timeout=30)
        assert result and native_model.detokenize(result[0]) == "in parallel"
    finally:
        session.close()


def test_a_waiting_request_runs_when_the_session_closes(native_model: NativeModel) -> None:
    session = native_model.session(GREEDY_16)
    done = threading.Event()

    def other() -> None:
        generate(native_model, "Hi", SamplingParams(temperature=0, max_tokens=2))
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    assert not done.wait(0.3)  # blocked on the context
    session.close()
    thread.join(timeout=60)
    assert done.is_set()


@pytest.mark.slow
def test_concurrent_loads_of_one_file_share_an_id(default_model_path: Path) -> None:
    start = threading.Barrier(6)

    def load(_: int) -> int:
        start.wait()
        return llambo.load_model(default_model_path, n_ctx=256)

    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(load, range(6)))
    try:
        assert len(set(ids)) == 1
        entry = next(e for e in llambo.list_models() if e["id"] == ids[0])
        assert entry["refs"] == 6
    finally:
        for model_id in ids:
            llambo.free_model(model_id)
    assert all(e["id"] != ids[0] for e in llambo.list_models())
