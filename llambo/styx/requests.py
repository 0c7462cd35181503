"""Generation requests on ``/models/N/data``: the request format, and the streaming :class:`Request`.

A write to a data file is parsed by :func:`parse_request` and starts a :class:`Request`: the
generation runs on a worker thread of the tree's pool for its whole length (a model session
belongs to the thread that opened it) and hands each piece of text to the event loop, where
readers wait for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..api import InferenceResult, SamplingParams
from ..generation import TextStream
from .errors import BUSY, StyxError, error_text, invalid

if TYPE_CHECKING:
    from .nodes import ModelState
    from .tree import Tree

__all__ = ["INLINE_PROMPT", "SAMPLING_FIELDS", "Deliver", "Request", "parse_request"]

_log = logging.getLogger("llambo.styx")

SAMPLING_FIELDS = (
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "repeat_last_n",
    "seed",
    "stop",
)
INLINE_PROMPT = 1024  # prompts up to this many characters are tokenized on the event loop


def parse_request(data: bytes, max_tokens_limit: int) -> tuple[str, SamplingParams]:
    """A data-file write as (prompt, params): ``prompt|max_tokens|temperature`` or a JSON object."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("the request is not valid UTF-8") from None
    if not text.strip():
        raise invalid("empty request; write prompt|max_tokens|temperature or a JSON object")
    if text.lstrip().startswith("{"):
        prompt, values = _parse_json(text)
    else:
        parts = text.rsplit("|", 2)
        if len(parts) != 3:
            raise invalid(
                "a request is prompt|max_tokens|temperature or a JSON object with a prompt, "
                f"got {_preview(text)}"
            )
        prompt = parts[0]
        try:
            values = {"max_tokens": int(parts[1].strip()), "temperature": float(parts[2].strip())}
        except ValueError:
            raise invalid(
                f"max_tokens must be an integer and temperature a number, got {parts[1].strip()!r} "
                f"and {parts[2].strip()!r}"
            ) from None
    try:
        params = SamplingParams.from_kwargs(**values)
    except (TypeError, ValueError) as exc:
        raise invalid(str(exc)) from None
    if params.max_tokens > max_tokens_limit:
        raise invalid(f"max_tokens {params.max_tokens} is over this server's limit of {max_tokens_limit}")
    return prompt, params


def _parse_json(text: str) -> tuple[str, dict[str, Any]]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid(f"the request is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise invalid("a JSON request is an object")
    unknown = sorted(set(obj) - {"prompt", *SAMPLING_FIELDS})
    if unknown:
        raise invalid(f"unknown field(s) {', '.join(unknown)}; known: prompt, {', '.join(SAMPLING_FIELDS)}")
    prompt = obj.pop("prompt", None)
    if not isinstance(prompt, str):
        raise invalid("a JSON request needs a string 'prompt'")
    if isinstance(obj.get("stop"), list):
        obj["stop"] = tuple(obj["stop"])
    return prompt, obj


def _preview(text: str, size: int = 40) -> str:
    return repr(text if len(text) <= size else text[:size] + "...")


# -- the stream of one request ---------------------------------------------------------------------


Deliver = Callable[["bytes | StyxError"], None]


@dataclass(eq=False)
class _Reader:
    """A read waiting for output: where, how much, and whom to answer."""

    position: int
    count: int
    deliver: Deliver
    gone: bool = False  # answered or cancelled


class Request:
    """One generation on one model: its output so far, streamed to readers as it is produced.

    The generation runs on a worker thread from the tree's pool (one thread for the whole
    request, as a model session belongs to the thread that opened it); every piece is handed to
    the event loop, which appends it and wakes the readers. A request nobody can read any more
    (no open file, not the latest of its model or connection) is cancelled.
    """

    def __init__(
        self,
        tree: Tree,
        state: ModelState,
        prompt: str,
        params: SamplingParams,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.tree = tree
        self.state = state
        self.prompt = prompt
        self.params = params
        self.output = bytearray()
        self.done = False
        self.error: str | None = None
        self.result: InferenceResult | None = None
        # The generation's own time, as a direct generate() call would spend it: tokenizing plus
        # the worker's loop, without the hand-offs between threads (what the server adds is the
        # client's time minus this).
        self.work_seconds: float | None = None
        self._tokenize_seconds = 0.0
        self._posting_seconds = 0.0
        self.cancelled = False  # read by the worker thread between pieces
        self._holders = 0
        self._loop = loop
        self._accepted: asyncio.Future[None] = loop.create_future()
        self._readers: list[_Reader] = []
        self._ended = False

    # -- lifetime (event loop) ------------------------------------------------------------------

    def retain(self) -> None:
        self._holders += 1

    def release(self) -> None:
        self._holders -= 1
        if self._holders <= 0 and not self.done:
            self.cancel()

    def cancel(self) -> None:
        """Ask the worker to stop after its current piece."""
        self.cancelled = True

    async def start(self) -> None:
        """Hand the request to a worker; returns once the prompt is accepted, StyxError if it is not.

        A short prompt is tokenized here on the event loop (well under a millisecond), so the
        write is answered without waiting for a worker thread to wake; a long one is tokenized by
        the worker, and the write waits for its verdict.
        """
        stream: TextStream | None = None
        if len(self.prompt) <= INLINE_PROMPT:
            started = time.perf_counter()
            try:
                stream = TextStream(self.state.model, self.prompt, self.params)
            except Exception as exc:
                raise StyxError(error_text(exc)) from None
            self._tokenize_seconds = time.perf_counter() - started
            self._accepted.set_result(None)
        tree = self.tree
        tree.live.add(self)
        self.state.active += 1
        try:
            tree.executor.submit(self._work, stream)
        except RuntimeError:  # the pool is shut down: the server is closing
            self._end()
            raise StyxError.make(BUSY, "the server is shutting down") from None
        try:
            await self._accepted
        except asyncio.CancelledError:
            self.cancel()
            raise

    def _accept(self, error: BaseException | None) -> None:
        if not self._accepted.done():
            if error is None:
                self._accepted.set_result(None)
            else:
                self._accepted.set_exception(StyxError(error_text(error)))
        if error is not None:
            self.done = True
            self._end()

    def _append(self, piece: bytes) -> None:
        self.output += piece
        self._wake()

    def _finish(self, result: InferenceResult | None, error: BaseException | None) -> None:
        self.done = True
        self.result = result
        if error is not None:
            self.error = error_text(error)
            _log.warning("generation on model %d failed: %s", self.state.model_id, self.error)
        if result is not None:
            state = self.state
            state.requests += 1
            state.tokens += result.timings.generated_tokens
            state.last_tps = result.timings.tokens_per_second
        self._end()
        self._wake()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.state.active -= 1
            self.tree.live.discard(self)

    def _wake(self) -> None:
        """Answer every waiting reader that can be answered now."""
        if not self._readers:
            return
        readers, self._readers = self._readers, []
        for reader in readers:
            if reader.gone:
                continue
            try:
                data = self.available(reader.position, reader.count)
            except StyxError as exc:
                reader.gone = True
                reader.deliver(exc)
                continue
            if data is None:
                self._readers.append(reader)
            else:
                reader.gone = True
                reader.deliver(data)

    # -- reading (event loop) -------------------------------------------------------------------

    def available(self, position: int, count: int) -> bytes | None:
        """The bytes at ``position`` if a read there would not wait, else None."""
        if position < len(self.output):
            return bytes(self.output[position : position + count])
        if self.done:
            if self.error is not None:
                raise StyxError(self.error)
            return b""
        return None

    def subscribe(self, position: int, count: int, deliver: Deliver) -> Callable[[], None]:
        """Call ``deliver`` once there is output at ``position`` (or the end); returns a canceller."""
        reader = _Reader(position, count, deliver)
        self._readers.append(reader)

        def cancel() -> None:
            reader.gone = True
            if reader in self._readers:
                self._readers.remove(reader)

        return cancel

    async def read(self, position: int, count: int) -> bytes:
        """Wait until there is output at ``position`` (or the end) and return up to ``count`` bytes."""
        data = self.available(position, count)
        if data is not None:
            return data
        future: asyncio.Future[bytes] = self._loop.create_future()

        def deliver(result: bytes | StyxError) -> None:
            if not future.done():
                if isinstance(result, StyxError):
                    future.set_exception(result)
                else:
                    future.set_result(result)

        cancel = self.subscribe(position, count, deliver)
        try:
            return await future
        finally:
            cancel()

    # -- the worker thread ----------------------------------------------------------------------

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        started = time.perf_counter()
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is left to read
            self.cancelled = True
        self._posting_seconds += time.perf_counter() - started

    def _work(self, stream: TextStream | None) -> None:
        started = time.perf_counter()
        if stream is None:
            try:
                stream = TextStream(self.state.model, self.prompt, self.params)
            except BaseException as exc:  # a bad prompt: the write fails with this
                self._post(self._accept, exc)
                return
            self._post(self._accept, None)
        error: BaseException | None = None
        try:
            if not self.cancelled:
                for piece in stream:
                    self._post(self._append, piece.encode("utf-8"))
                    if self.cancelled:
                        break
        except Exception as exc:
            error = exc
        finally:
            stream.close()
        elapsed = time.perf_counter() - started
        self.work_seconds = elapsed - self._posting_seconds + self._tokenize_seconds
        self._post(self._finish, stream.result, error)
