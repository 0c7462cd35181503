"""NativeModel on the default model: tokenizer, generation, streaming, logits and info."""

from __future__ import annotations

import ctypes
import gc
import json
from pathlib import Path

import numpy as np
import pytest

from llambo.api import LoadedModel, LoadParams, SamplingParams, Session
from llambo.errors import ContextOverflowError, GenerationError, InvalidRequest
from llambo.generation import TextStream, generate
from llambo.gguf_file import file_type_name
from llambo.native import session as session_module
from llambo.native.backend import NativeBackend
from llambo.native.library import NativeLibrary
from llambo.native.model import NativeModel
from llambo.native.session import NativeSession

pytestmark = pytest.mark.native

N_VOCAB = 49152
N_LAYER = 30
GREEDY = SamplingParams(temperature=0, max_tokens=48)


def chat(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------------


def test_it_implements_the_contract(native_model: NativeModel) -> None:
    assert isinstance(native_model, LoadedModel)
    session = native_model.session(GREEDY)
    try:
        assert isinstance(session, Session)
    finally:
        session.close()
    assert native_model.backend == "native"
    assert native_model.n_vocab == N_VOCAB
    assert native_model.n_ctx == 2048


def test_the_backend_is_available() -> None:
    backend = NativeBackend()
    assert backend.name == "native"
    assert backend.availability() is None


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

ROUND_TRIP_TEXTS = [
    "Hello, world!",
    "héllo wörld, ça va? Ångström, naïve, façade",
    "日本語のテキストと中文文本\uff0c还有한국어",
    "emoji 😀🎉👍🏽 and flags 🇫🇷 and ZWJ 👩‍👩‍👧",
    "def f(x):\n\treturn {'a': [1, 2, 3]}  # code\n",
    "spaces    runs\n\n\n  and\ttabs\t\t end  ",
    " leading space",
    "a" * 500,
    "",
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_tokenize_detokenize_round_trip(native_model: NativeModel, text: str) -> None:
    tokens = native_model.tokenize(text, add_special=False)
    assert all(isinstance(t, int) and 0 <= t < N_VOCAB for t in tokens)
    assert native_model.detokenize(tokens) == text
    assert b"".join(native_model.token_bytes(t) for t in tokens) == text.encode("utf-8")


def test_tokenize_never_drops_tokens(native_model: NativeModel) -> None:
    # Single characters that each become several byte tokens: more tokens than len(utf8) + 2 is
    # impossible for byte-level BPE, but the retry path must still give every token back.
    text = "🎉" * 300
    tokens = native_model.tokenize(text, add_special=False)
    assert native_model.detokenize(tokens) == text


def test_special_tokens_are_parsed_only_when_asked(native_model: NativeModel) -> None:
    parsed = native_model.tokenize("<|im_start|>", add_special=False, parse_special=True)
    literal = native_model.tokenize("<|im_start|>", add_special=False, parse_special=False)
    assert len(parsed) == 1
    assert len(literal) > 1
    assert native_model.token_bytes(parsed[0]) == b""  # control tokens render empty
    assert native_model.detokenize(parsed) == ""
    assert native_model.detokenize(parsed, unparse_special=True) == "<|im_start|>"


def test_tokenizer_argument_checks(native_model: NativeModel) -> None:
    with pytest.raises(TypeError):
        native_model.tokenize(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        native_model.tokenize(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="out of range"):
        native_model.detokenize([1, N_VOCAB])
    with pytest.raises(InvalidRequest, match="out of range"):
        native_model.detokenize([-1])
    with pytest.raises(TypeError):
        native_model.detokenize(["a"])  # type: ignore[list-item]
    with pytest.raises(InvalidRequest):
        native_model.token_bytes(N_VOCAB)
    with pytest.raises(InvalidRequest):
        native_model.token_bytes(-1)
    assert native_model.detokenize([]) == ""


def test_every_token_piece_matches_llama_cpp(
    native_model: NativeModel, native_library: NativeLibrary
) -> None:
    lib = native_library.lib
    vocab = lib.llama_model_get_vocab(native_model._model)
    buffer = ctypes.create_string_buffer(256)
    long_pieces = 0
    for token in range(N_VOCAB):
        count = lib.llama_token_to_piece(vocab, token, buffer, 256, 0, False)
        assert count >= 0
        expected = buffer.raw[:count]
        assert native_model.token_bytes(token) == expected, token
        long_pieces += count > 32
    assert long_pieces == 47
    assert native_model.token_bytes(N_VOCAB - 1) is native_model.token_bytes(N_VOCAB - 1)  # cached


def test_end_of_generation_tokens(native_model: NativeModel) -> None:
    assert [t for t in range(N_VOCAB) if native_model.is_eog(t)] == [0, 2, 4]
    assert not native_model.is_eog(-1)
    assert not native_model.is_eog(N_VOCAB)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def test_greedy_is_deterministic_and_stops_at_eos(native_model: NativeModel) -> None:
    prompt = chat("What is the capital of France?")
    first = generate(native_model, prompt, GREEDY)
    second = generate(native_model, prompt, GREEDY)
    assert first.text == second.text
    assert first.tokens == second.tokens
    assert first.finish_reason.value == "stop"
    assert "Paris" in first.text
    assert 0 < len(first.tokens) < GREEDY.max_tokens
    assert first.backend == "native"
    assert first.timings.prompt_tokens == len(native_model.tokenize(prompt, parse_special=True))


def test_greedy_stops_at_max_tokens(native_model: NativeModel) -> None:
    params = SamplingParams(temperature=0, max_tokens=5)
    result = generate(native_model, chat("Write a long essay about the ocean."), params)
    assert result.finish_reason.value == "length"
    assert len(result.tokens) == 5
    longer = generate(native_model, chat("Write a long essay about the ocean."), GREEDY)
    assert longer.tokens[:5] == result.tokens


def test_max_tokens_zero_generates_nothing(native_model: NativeModel) -> None:
    result = generate(native_model, "Hello", SamplingParams(max_tokens=0))
    assert result.text == "" and result.tokens == ()


def test_seeded_sampling_repeats(native_model: NativeModel) -> None:
    prompt = chat("Write a short poem about autumn.")
    params = SamplingParams(temperature=0.8, seed=1234, max_tokens=32)
    first = generate(native_model, prompt, params)
    second = generate(native_model, prompt, params)
    assert first.tokens == second.tokens
    assert first.text == second.text


def test_different_seeds_usually_differ(native_model: NativeModel) -> None:
    prompt = chat("Write a short poem about autumn.")
    outputs = {
        generate(native_model, prompt, SamplingParams(temperature=1.0, seed=seed, max_tokens=24)).tokens
        for seed in (1, 2, 3, 4, 5)
    }
    assert len(outputs) >= 2


def test_sampler_options_run(native_model: NativeModel) -> None:
    prompt = chat("List three fruits.")
    for params in (
        SamplingParams(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, seed=7, max_tokens=8),
        SamplingParams(temperature=0.7, top_k=5, top_p=0.5, min_p=0.2, seed=7, max_tokens=8),
        SamplingParams(temperature=0, repeat_penalty=1.3, repeat_last_n=-1, max_tokens=8),
        SamplingParams(temperature=0.9, repeat_penalty=1.1, repeat_last_n=16, seed=7, max_tokens=8),
    ):
        result = generate(native_model, prompt, params)
        assert 0 < len(result.tokens) <= 8


def test_a_repeat_penalty_changes_greedy_output(native_model: NativeModel) -> None:
    prompt = "one one one one one one one one"
    plain = generate(native_model, prompt, SamplingParams(temperature=0, max_tokens=8))
    penalised = generate(
        native_model, prompt, SamplingParams(temperature=0, max_tokens=8, repeat_penalty=2.0)
    )
    assert plain.tokens != penalised.tokens


def test_stop_strings(native_model: NativeModel) -> None:
    prompt = chat("What is the capital of France?")
    full = generate(native_model, prompt, GREEDY).text
    assert "Paris" in full
    result = generate(native_model, prompt, SamplingParams(temperature=0, max_tokens=48, stop=("Paris",)))
    assert result.finish_reason.value == "stop"
    assert result.text == full[: full.index("Paris")]


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "question",
    [
        "Write one sentence in French about coffee.",
        "Say hello in Japanese, Chinese and Korean.",
        "Reply with three emoji about the sea.",
    ],
)
def test_streamed_pieces_join_to_the_text(native_model: NativeModel, question: str) -> None:
    params = SamplingParams(temperature=0, max_tokens=40)
    stream = TextStream(native_model, chat(question), params)
    pieces = list(stream)
    assert stream.result is not None
    whole = generate(native_model, chat(question), params)
    assert "".join(pieces) == stream.result.text == whole.text
    assert all(pieces)
    for piece in pieces:
        assert piece.encode("utf-8").decode("utf-8") == piece  # no lone surrogates
    if "\ufffd" not in whole.text:
        assert not any("\ufffd" in piece for piece in pieces)


def test_streaming_is_constant_work_per_token(
    native_model: NativeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"detokenize": 0, "token_bytes": 0, "feed": 0, "sample": 0}
    token_bytes, session = native_model.token_bytes, native_model.session

    def counting_detokenize(*args: object, **kwargs: object) -> str:
        calls["detokenize"] += 1
        raise AssertionError("detokenize must not be called while streaming")

    def counting_token_bytes(token: int) -> bytes:
        calls["token_bytes"] += 1
        return token_bytes(token)

    def counting_session(params: SamplingParams) -> NativeSession:
        opened = session(params)
        sample, feed = opened.sample, opened.feed

        def counting_sample() -> int:
            calls["sample"] += 1
            return sample()

        def counting_feed(token: int) -> None:
            calls["feed"] += 1
            feed(token)

        monkeypatch.setattr(opened, "sample", counting_sample)
        monkeypatch.setattr(opened, "feed", counting_feed)
        return opened

    monkeypatch.setattr(native_model, "detokenize", counting_detokenize)
    monkeypatch.setattr(native_model, "token_bytes", counting_token_bytes)
    monkeypatch.setattr(native_model, "session", counting_session)
    stream = TextStream(
        native_model, chat("Count from one to twenty in words."), SamplingParams(temperature=0, max_tokens=40)
    )
    for _ in stream:
        pass
    assert stream.result is not None
    generated = len(stream.result.tokens)
    assert generated > 10
    assert calls["detokenize"] == 0
    assert calls["token_bytes"] == generated
    assert calls["sample"] in (generated, generated + 1)  # + the EOG token, if one ended it
    assert calls["feed"] in (generated - 1, generated)


def test_closing_a_stream_early_releases_the_context(native_model: NativeModel) -> None:
    stream = TextStream(
        native_model, chat("Tell me a long story."), SamplingParams(temperature=0, max_tokens=100)
    )
    next(stream)
    stream.close()
    assert generate(native_model, "Hello", SamplingParams(temperature=0, max_tokens=2)).tokens


# ---------------------------------------------------------------------------------------------
# Sessions, logits, limits
# ---------------------------------------------------------------------------------------------


def test_a_second_session_in_the_same_thread_is_refused(native_model: NativeModel) -> None:
    session = native_model.session(GREEDY)
    try:
        with pytest.raises(GenerationError, match="already has a session"):
            native_model.session(GREEDY)
        with pytest.raises(GenerationError, match="already has a session"):
            native_model.logits([1, 2])
    finally:
        session.close()
    session.close()  # idempotent
    with pytest.raises(InvalidRequest):
        session.sample()
    with pytest.raises(InvalidRequest):
        session.feed(1)


def test_sampling_needs_a_prefill(native_model: NativeModel) -> None:
    with native_model.session(GREEDY) as session:
        with pytest.raises(InvalidRequest, match="prefill"):
            session.sample()
        with pytest.raises(InvalidRequest):
            session.prefill([])
        with pytest.raises(InvalidRequest, match="out of range"):
            session.prefill([N_VOCAB])
        session.prefill(native_model.tokenize("Hello"))
        assert 0 <= session.sample() < N_VOCAB


def test_session_steps_match_generate(native_model: NativeModel) -> None:
    prompt = native_model.tokenize(chat("Name a colour."), parse_special=True)
    expected = generate(native_model, prompt, SamplingParams(temperature=0, max_tokens=6)).tokens
    tokens = []
    with native_model.session(SamplingParams(temperature=0)) as session:
        session.prefill(prompt)
        for _ in range(len(expected)):
            token = session.sample()
            tokens.append(token)
            session.feed(token)
    assert tuple(tokens) == expected


def test_logits(native_model: NativeModel) -> None:
    tokens = native_model.tokenize("The capital of France is")
    logits = native_model.logits(tokens)
    assert logits.dtype == np.float32
    assert logits.shape == (N_VOCAB,)
    assert np.isfinite(logits).all()
    again = native_model.logits(tokens)
    np.testing.assert_array_equal(logits, again)
    greedy = generate(native_model, tokens, SamplingParams(temperature=0, max_tokens=1)).tokens
    assert greedy == (int(np.argmax(logits)),)


def test_a_prompt_is_evaluated_in_batches_of_n_batch(default_model_path: Path) -> None:
    tokens = list(range(1000, 1100))
    logits = {}
    for n_batch in (1, 7, 512):
        with NativeModel(default_model_path, LoadParams(n_ctx=256, n_batch=n_batch)) as model:
            assert model.n_batch == min(n_batch, 256)
            logits[n_batch] = model.logits(tokens)
    # 15 batches of 7 tokens use the same kernels as 100 batches of one: the same numbers.
    np.testing.assert_allclose(logits[7], logits[1], rtol=1e-4, atol=1e-4)
    # One batch of 100 uses other matrix kernels: close, with the same ranking at the top.
    assert list(np.argsort(-logits[512])[:3]) == list(np.argsort(-logits[1])[:3])


def test_a_prompt_longer_than_the_context(default_model_path: Path) -> None:
    with NativeModel(default_model_path, LoadParams(n_ctx=64)) as model:
        assert model.n_ctx == 64
        prompt = "word " * 100
        count = len(model.tokenize(prompt, parse_special=True))
        with pytest.raises(ContextOverflowError) as caught:
            generate(model, prompt, GREEDY)
        assert str(count) in str(caught.value) and "64" in str(caught.value)
        with pytest.raises(ContextOverflowError, match="64"):
            model.logits(list(range(100, 200)))
        # A prompt that fits leaves room only for what the context holds.
        result = generate(model, "word " * 50, SamplingParams(temperature=0, max_tokens=100))
        assert result.timings.prompt_tokens + len(result.tokens) <= 64
        assert result.finish_reason.value == "length"


def test_a_closed_model_refuses_work(default_model_path: Path) -> None:
    model = NativeModel(default_model_path, LoadParams(n_ctx=256))
    model.close()
    model.close()
    assert model.closed
    with pytest.raises(InvalidRequest, match="closed"):
        model.tokenize("x")
    with pytest.raises(InvalidRequest, match="closed"):
        model.session(GREEDY)
    with pytest.raises(InvalidRequest, match="closed"):
        model.token_bytes(5)
    with pytest.raises(InvalidRequest, match="closed"):
        model.info()


def test_closing_while_a_session_is_open_waits_for_it(default_model_path: Path) -> None:
    model = NativeModel(default_model_path, LoadParams(n_ctx=256))
    session = model.session(GREEDY)
    session.prefill(model.tokenize("Hello"))
    model.close()
    assert model._model is not None  # still alive for the open session
    session.feed(session.sample())
    session.close()
    assert model._model is None and model._ctx is None


# ---------------------------------------------------------------------------------------------
# Description
# ---------------------------------------------------------------------------------------------


def test_info(native_model: NativeModel, default_model_path: Path) -> None:
    info = native_model.info()
    assert info.path == str(default_model_path)
    assert info.backend == "native"
    assert info.architecture == "llama"
    assert info.n_vocab == N_VOCAB
    assert info.n_layer == N_LAYER
    assert info.n_ctx == 2048
    assert info.n_ctx_train == 8192
    assert info.n_embd == 576
    assert (info.n_head, info.n_head_kv) == (9, 3)
    assert info.has_chat_template is True
    assert info.file_type == "Q4_1"
    assert info.vocab_type == "BPE"
    assert info.file_size == default_model_path.stat().st_size
    assert 130_000_000 < info.n_params < 140_000_000
    assert info.special_tokens["bos"] == 1 and info.special_tokens["eos"] == 2
    assert info.n_gpu_layers == 0
    assert info.metadata["general.architecture"] == "llama"
    assert all(len(value) <= 300 for value in info.metadata.values())
    data = json.loads(info.to_json())
    assert data["n_vocab"] == N_VOCAB


def test_chat_template(native_model: NativeModel) -> None:
    template = native_model.chat_template()
    assert template is not None and "<|im_start|>" in template


def test_file_type_names() -> None:
    assert file_type_name("3") == "Q4_1"
    assert file_type_name("15") == "Q4_K_M"
    assert file_type_name("999") == "999"
    assert file_type_name(None) == "unknown"


def test_perf_counters_describe_the_last_generation(native_model: NativeModel) -> None:
    result = generate(native_model, chat("Hi"), SamplingParams(temperature=0, max_tokens=8))
    perf = native_model.perf()
    assert perf["n_p_eval"] == result.timings.prompt_tokens
    assert perf["n_eval"] in (len(result.tokens) - 1, len(result.tokens))


def test_a_second_prefill_starts_afresh(native_model: NativeModel) -> None:
    prompt = native_model.tokenize("Once upon a time")
    runs = []
    with native_model.session(SamplingParams(temperature=0.9, seed=42)) as session:
        for _ in range(2):
            session.prefill(prompt)
            tokens = []
            for _ in range(6):
                tokens.append(session.sample())
                session.feed(tokens[-1])
            runs.append(tokens)
    assert runs[0] == runs[1]


def test_a_failed_session_start_gives_the_context_back(
    native_model: NativeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> int:
        raise GenerationError("no sampler today")

    with monkeypatch.context() as patch:
        patch.setattr(session_module, "build_sampler", broken)
        with pytest.raises(GenerationError, match="no sampler"):
            native_model.session(GREEDY)
    gc.collect()  # a half-built session must not give the context back a second time
    assert native_model._users == 0
    assert generate(native_model, "Hi", SamplingParams(temperature=0, max_tokens=2)).tokens
