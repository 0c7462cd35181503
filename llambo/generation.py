"""The generation loop both backends share: prompt checks, EOG/stop strings/max_tokens, UTF-8 safe streaming.

A backend supplies a :class:`~llambo.api.Session` (prefill, sample, feed); everything a user can
observe about how text comes out is decided here, once, so the two backends cannot drift apart.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Generator, Iterator, Sequence

from .api import FinishReason, InferenceResult, LoadedModel, SamplingParams, Timings
from .errors import ContextOverflowError, InvalidRequest


def prompt_tokens(model: LoadedModel, prompt: str | Sequence[int]) -> list[int]:
    """Tokenize a prompt as llama.cpp's own tools do: special tokens parsed, BOS per the model."""
    if isinstance(prompt, str):
        tokens = model.tokenize(prompt, add_special=True, parse_special=True)
    else:
        tokens = [int(t) for t in prompt]
        bad = [t for t in tokens if not 0 <= t < model.n_vocab]
        if bad:
            raise InvalidRequest(f"token ids out of range [0, {model.n_vocab}): {bad[:5]}")
    if not tokens:
        raise InvalidRequest("the prompt is empty (no tokens); give at least one character")
    if len(tokens) >= model.n_ctx:
        raise ContextOverflowError(
            f"the prompt has {len(tokens)} tokens but the context holds {model.n_ctx}; "
            "shorten the prompt or load the model with a larger n_ctx"
        )
    return tokens


def _held_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that could still grow into a stop string."""
    best = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:size]):
                best = size
                break
    return best


class TextStream(Iterator[str]):
    """An iterator of generated text pieces; ``result`` is set once it is exhausted.

    Pieces never split a UTF-8 character, never contain any part of a stop string, and join
    to exactly ``result.text``. Closing the stream early ends generation and frees the session.
    """

    def __init__(self, model: LoadedModel, prompt: str | Sequence[int], params: SamplingParams) -> None:
        self.model = model
        self.params = params
        self.prompt_tokens = prompt_tokens(model, prompt)
        self.result: InferenceResult | None = None
        self._pieces = self._run()

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop generating now and release the session."""
        self._pieces.close()

    def _run(self) -> Generator[str, None, None]:
        model, params = self.model, self.params
        tokens = self.prompt_tokens
        budget = min(params.max_tokens, model.n_ctx - len(tokens))
        stops = params.stop
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        token_bytes, is_eog = model.token_bytes, model.is_eog
        generated: list[int] = []
        emitted: list[str] = []
        finish = FinishReason.LENGTH
        pending = ""
        stopped = False
        started = time.perf_counter()
        session = model.session(params)
        try:
            session.prefill(tokens)
            prefilled = time.perf_counter()
            sample, feed = session.sample, session.feed
            while len(generated) < budget:
                token = sample()
                if is_eog(token):
                    finish = FinishReason.STOP
                    break
                generated.append(token)
                text = decoder.decode(token_bytes(token))
                if stops:
                    pending += text
                    cut = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1)
                    if cut >= 0:
                        text, pending, stopped = pending[:cut], "", True
                    else:
                        hold = _held_suffix(pending, stops)
                        text, pending = pending[: len(pending) - hold], pending[len(pending) - hold :]
                if text:
                    emitted.append(text)
                    yield text
                if stopped:
                    finish = FinishReason.STOP
                    break
                if len(generated) < budget:
                    feed(token)
            if not stopped:
                tail = pending + decoder.decode(b"", final=True)
                if tail:
                    emitted.append(tail)
                    yield tail
            finished = time.perf_counter()
        finally:
            session.close()
        self.result = InferenceResult(
            text="".join(emitted),
            tokens=tuple(generated),
            finish_reason=finish,
            backend=model.backend,
            timings=Timings(len(tokens), prefilled - started, len(generated), finished - prefilled),
        )


def generate(model: LoadedModel, prompt: str | Sequence[int], params: SamplingParams) -> InferenceResult:
    """Run a whole generation and return its result."""
    stream = TextStream(model, prompt, params)
    for _ in stream:
        pass
    assert stream.result is not None
    return stream.result
