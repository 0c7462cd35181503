"""The llambo file tree served over Styx: ``/ctl``, ``/clone`` and ``/models/N/{data,info,status}``.

Nothing here knows about 9P messages, fids or tags: the server walks, opens, reads and writes
through :class:`Tree` and :class:`OpenFile`, and turns a :class:`~llambo.styx.errors.StyxError`
into Rerror. Models are loaded, looked up and freed through a
:class:`~llambo.registry.ModelRegistry` exactly as Python callers do; generation runs on worker
threads (one per request, from a bounded pool) and is streamed to readers on the event loop.

Stream files (ctl, clone, data) keep a read *origin* per open file: offset 0 at open, and the
first read after a write fixes the offset at which the new output starts. So ``read(0)`` after
``write`` works, and so do clients that keep one file position for reads and writes (plan9port's
``9p rdwr``, a Linux fd opened read-write), whose first read after the write comes at the
offset the write left.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from ..api import InferenceResult, LoadedModel, LoadParams, SamplingParams
from ..errors import (
    InvalidModelId,
    InvalidRequest,
    LlamboError,
    ModelLoadError,
    TooManyModels,
)
from ..generation import TextStream
from ..registry import ModelRegistry
from ..selection import requested_backend, resolve_backend
from .errors import BUSY, INVALID, NOT_FOUND, PERMISSION, StyxError
from .fcall import DMDIR, OEXEC, ORCLOSE, ORDWR, OREAD, OTRUNC, OWRITE, QTDIR, QTFILE, Qid, Stat

__all__ = ["Kind", "Node", "OpenFile", "Peer", "Request", "Tree", "error_text", "parse_request"]

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
_LOAD_INTS = ("n_gpu_layers", "n_ctx", "n_batch", "n_threads")
_LOAD_BOOLS = ("use_mmap", "use_mlock")
INLINE_PROMPT = 1024  # prompts up to this many characters are tokenized on the event loop
_TRUE = frozenset({"1", "true", "yes", "on", "mmap"})
_FALSE = frozenset({"0", "false", "no", "off", "nommap"})


def error_text(exc: BaseException) -> str:
    """The Rerror string for an exception: one of the usual words, a colon, the details."""
    if isinstance(exc, StyxError):
        return str(exc)
    if isinstance(exc, (InvalidModelId, FileNotFoundError)):
        return f"{NOT_FOUND}: {exc}"
    if isinstance(exc, TooManyModels):
        return f"{BUSY}: {exc}"
    if isinstance(exc, PermissionError):
        return f"{PERMISSION}: {exc}"
    if isinstance(exc, (InvalidRequest, ModelLoadError, ValueError, TypeError)):
        return f"{INVALID}: {exc}"
    if isinstance(exc, LlamboError):
        return str(exc) or type(exc).__name__
    return f"internal error: {type(exc).__name__}: {exc}"


def _invalid(detail: str) -> StyxError:
    return StyxError.make(INVALID, detail)


# -- the request format of models/N/data -------------------------------------------------------------


def parse_request(data: bytes, max_tokens_limit: int) -> tuple[str, SamplingParams]:
    """A data-file write as (prompt, params): ``prompt|max_tokens|temperature`` or a JSON object."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid("the request is not valid UTF-8") from None
    if not text.strip():
        raise _invalid("empty request; write prompt|max_tokens|temperature or a JSON object")
    if text.lstrip().startswith("{"):
        prompt, values = _parse_json(text)
    else:
        parts = text.rsplit("|", 2)
        if len(parts) != 3:
            raise _invalid(
                "a request is prompt|max_tokens|temperature or a JSON object with a prompt, "
                f"got {_preview(text)}"
            )
        prompt = parts[0]
        try:
            values = {"max_tokens": int(parts[1].strip()), "temperature": float(parts[2].strip())}
        except ValueError:
            raise _invalid(
                f"max_tokens must be an integer and temperature a number, got {parts[1].strip()!r} "
                f"and {parts[2].strip()!r}"
            ) from None
    try:
        params = SamplingParams.from_kwargs(**values)
    except (TypeError, ValueError) as exc:
        raise _invalid(str(exc)) from None
    if params.max_tokens > max_tokens_limit:
        raise _invalid(f"max_tokens {params.max_tokens} is over this server's limit of {max_tokens_limit}")
    return prompt, params


def _parse_json(text: str) -> tuple[str, dict[str, Any]]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _invalid(f"the request is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _invalid("a JSON request is an object")
    unknown = sorted(set(obj) - {"prompt", *SAMPLING_FIELDS})
    if unknown:
        raise _invalid(f"unknown field(s) {', '.join(unknown)}; known: prompt, {', '.join(SAMPLING_FIELDS)}")
    prompt = obj.pop("prompt", None)
    if not isinstance(prompt, str):
        raise _invalid("a JSON request needs a string 'prompt'")
    if isinstance(obj.get("stop"), list):
        obj["stop"] = tuple(obj["stop"])
    return prompt, obj


def _preview(text: str, size: int = 40) -> str:
    return repr(text if len(text) <= size else text[:size] + "...")


# -- ctl commands ------------------------------------------------------------------------------


def tokenize(line: str) -> list[str]:
    """Split a command line into words; '...' quotes (with '' for a quote), as Plan 9's rc does."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t\r":
            i += 1
        if i >= n:
            break
        word: list[str] = []
        while i < n and line[i] not in " \t\r":
            if line[i] != "'":
                word.append(line[i])
                i += 1
                continue
            i += 1
            while True:
                if i >= n:
                    raise _invalid("unterminated quote in the command")
                if line[i] == "'":
                    if i + 1 < n and line[i + 1] == "'":
                        word.append("'")
                        i += 2
                        continue
                    i += 1
                    break
                word.append(line[i])
                i += 1
        words.append("".join(word))
    return words


def _quote(word: str) -> str:
    if word and not any(c in word for c in " \t\r\n'"):
        return word
    return "'" + word.replace("'", "''") + "'"


def _bool_word(name: str, word: str) -> bool:
    lowered = word.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _invalid(f"{name} must be true or false (1/0, yes/no, on/off), got {word!r}")


def _int_word(name: str, word: str) -> int:
    try:
        return int(word)
    except ValueError:
        raise _invalid(f"{name} must be an integer, got {word!r}") from None


@dataclass(frozen=True)
class LoadCommand:
    """``load <path> [use_mmap] [n_gpu_layers] [name=value ...]`` once parsed."""

    path: str
    params: LoadParams
    backend: str | None  # None: the process default (LLAMBO_BACKEND, else auto)


def parse_load(words: list[str], defaults: LoadParams, backend: str | None) -> LoadCommand:
    """The arguments of a ``load`` command (``words[0]`` is ``load``)."""
    if len(words) < 2:
        raise _invalid("usage: load <path> [use_mmap] [n_gpu_layers] [n_ctx=N n_threads=N ...]")
    changes: dict[str, Any] = {}
    positional = ("use_mmap", "n_gpu_layers")
    index = 0
    for word in words[2:]:
        name, eq, value = word.partition("=")
        if not eq:
            if index >= len(positional):
                raise _invalid(f"too many arguments to load: {word!r}")
            name, value = positional[index], word
            index += 1
        if name in _LOAD_BOOLS:
            changes[name] = _bool_word(name, value)
        elif name in _LOAD_INTS:
            changes[name] = _int_word(name, value)
        elif name == "backend":
            try:
                requested_backend(value)
            except ValueError as exc:
                raise _invalid(str(exc)) from None
            backend = value
        else:
            known = ", ".join((*_LOAD_BOOLS, *_LOAD_INTS, "backend"))
            raise _invalid(f"unknown load option {name!r}; known: {known}")
    try:
        params = dataclasses.replace(defaults, **changes)
    except (TypeError, ValueError) as exc:
        raise _invalid(str(exc)) from None
    return LoadCommand(words[1], params, backend)


# -- nodes -------------------------------------------------------------------------------------


class Kind(IntEnum):
    """What a node is; also the low bits of its qid path."""

    ROOT = 0
    CTL = 1
    CLONE = 2
    MODELS = 3
    MODEL = 4
    DATA = 5
    INFO = 6
    STATUS = 7


_NAMES = {
    Kind.ROOT: "/",
    Kind.CTL: "ctl",
    Kind.CLONE: "clone",
    Kind.MODELS: "models",
    Kind.DATA: "data",
    Kind.INFO: "info",
    Kind.STATUS: "status",
}
_DIRS = frozenset({Kind.ROOT, Kind.MODELS, Kind.MODEL})
_READ_ONLY = frozenset({Kind.INFO, Kind.STATUS})
_MODEL_FILES = {"data": Kind.DATA, "info": Kind.INFO, "status": Kind.STATUS}
_TOP = {"ctl": Kind.CTL, "clone": Kind.CLONE, "models": Kind.MODELS}


@dataclass(eq=False)
class ModelState:
    """What the server knows of one loaded model id: its latest request and its counters."""

    model_id: int
    model: LoadedModel
    serial: int
    created: int
    latest: Request | None = None
    requests: int = 0
    tokens: int = 0
    last_tps: float = 0.0
    active: int = 0
    info: dict[str, Any] | None = None


@dataclass(frozen=True)
class Node:
    """A file or directory of the tree (model nodes carry the model they belong to)."""

    kind: Kind
    state: ModelState | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind in _DIRS

    @property
    def name(self) -> str:
        if self.kind is Kind.MODEL:
            assert self.state is not None
            return str(self.state.model_id)
        return _NAMES[self.kind]

    @property
    def qid(self) -> Qid:
        serial = self.state.serial if self.state is not None else 0
        return Qid(QTDIR if self.is_dir else QTFILE, 0, (serial << 8) | int(self.kind))

    @property
    def mode(self) -> int:
        if self.is_dir:
            return DMDIR | 0o555
        return 0o444 if self.kind in _READ_ONLY else 0o666


class Peer:
    """One client connection: the latest request it made to each model (for fresh reads of data)."""

    def __init__(self) -> None:
        self.latest: dict[ModelState, Request] = {}

    def remember(self, state: ModelState, request: Request) -> None:
        request.retain()
        old = self.latest.get(state)
        self.latest[state] = request
        if old is not None:
            old.release()

    def close(self) -> None:
        """Forget every request (the connection is gone)."""
        requests, self.latest = list(self.latest.values()), {}
        for request in requests:
            request.release()


# -- generation --------------------------------------------------------------------------------


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
            try:
                stream = TextStream(self.state.model, self.prompt, self.params)
            except Exception as exc:
                raise StyxError(error_text(exc)) from None
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
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is left to read
            self.cancelled = True

    def _work(self, stream: TextStream | None) -> None:
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
        self._post(self._finish, stream.result, error)


# -- open files ------------------------------------------------------------------------------------


class OpenFile:
    """A file opened by one fid; the server calls read/write on it and clunk when the fid goes."""

    readable = True
    writable = False

    def __init__(self, tree: Tree, node: Node, peer: Peer) -> None:
        self.tree = tree
        self.node = node
        self.peer = peer

    def try_read(self, offset: int, count: int) -> bytes | None:
        """The answer to a read if it can be given at once, else None (then ``read`` is awaited)."""
        return None

    async def read(self, offset: int, count: int) -> bytes:
        raise StyxError.make(PERMISSION, f"{self.node.name} cannot be read")

    def read_later(self, offset: int, count: int, deliver: Deliver) -> Callable[[], None] | None:
        """Arrange for ``deliver`` to answer a read that must wait; a canceller, or None if this
        file cannot (then the server awaits :meth:`read` instead)."""
        return None

    async def write(self, offset: int, data: bytes) -> int:
        raise StyxError.make(PERMISSION, f"{self.node.name} is read-only")

    def clunk(self) -> None:
        """The fid is gone."""


class Directory(OpenFile):
    """An open directory: the server reads it entry by entry through :meth:`Tree.children`."""


class _Snapshot(OpenFile):
    """A read-only text built afresh by each read at offset 0 (info, status)."""

    def __init__(self, tree: Tree, node: Node, peer: Peer, render: Callable[[], bytes]) -> None:
        super().__init__(tree, node, peer)
        self._render = render
        self._text: bytes | None = None

    def try_read(self, offset: int, count: int) -> bytes | None:
        if offset == 0 or self._text is None:
            self._text = self._render()
        return self._text[offset : offset + count]

    async def read(self, offset: int, count: int) -> bytes:
        result = self.try_read(offset, count)
        assert result is not None
        return result


class _Stream(OpenFile):
    """A file whose writes start something new and whose reads follow from the origin rule."""

    writable = True

    def __init__(self, tree: Tree, node: Node, peer: Peer) -> None:
        super().__init__(tree, node, peer)
        self._origin: int | None = 0

    def _position(self, offset: int) -> int:
        if self._origin is None:
            self._origin = offset
        position = offset - self._origin
        if position < 0:
            raise _invalid(
                f"offset {offset} is before the start of this output (offset {self._origin}); "
                "read from there, or write again"
            )
        return position

    def _restart(self) -> None:
        self._origin = None


class _Ctl(_Stream):
    """``/ctl``: load and free commands; reads list the models, or give the id the last load made."""

    def __init__(self, tree: Tree, node: Node, peer: Peer) -> None:
        super().__init__(tree, node, peer)
        self._loaded: int | None = None
        self._text: bytes | None = None

    def try_read(self, offset: int, count: int) -> bytes | None:
        position = self._position(offset)
        if self._loaded is not None:
            text = f"{self._loaded}\n".encode()
        else:
            if position == 0 or self._text is None:
                self._text = self.tree.listing()
            text = self._text
        return text[position : position + count]

    async def read(self, offset: int, count: int) -> bytes:
        result = self.try_read(offset, count)
        assert result is not None
        return result

    async def write(self, offset: int, data: bytes) -> int:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid("the command is not valid UTF-8") from None
        for line in text.splitlines():
            words = tokenize(line)
            if not words:
                continue
            if words[0] == "load":
                command = parse_load(words, self.tree.load_params, self.tree.backend)
                self._loaded = await self.tree.load(command)
                self._restart()
            elif words[0] == "free":
                if len(words) != 2:
                    raise _invalid("usage: free <id>")
                self.tree.free(_int_word("the model id", words[1]))
                self._text = None
                self._restart()
            else:
                raise _invalid(
                    f"unknown command {words[0]!r}; use load <path> [use_mmap] [n_gpu_layers] or free <id>"
                )
        return len(data)


class _Clone(_Stream):
    """``/clone``: holds a reserved model id from open to clunk, or for good once loaded into."""

    def __init__(self, tree: Tree, node: Node, peer: Peer, model_id: int) -> None:
        super().__init__(tree, node, peer)
        self.model_id = model_id
        self._loaded = False
        self._loading = False
        self._clunked = False

    def try_read(self, offset: int, count: int) -> bytes | None:
        position = self._position(offset)
        return f"{self.model_id}\n".encode()[position : position + count]

    async def read(self, offset: int, count: int) -> bytes:
        result = self.try_read(offset, count)
        assert result is not None
        return result

    async def write(self, offset: int, data: bytes) -> int:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid("the command is not valid UTF-8") from None
        words = tokenize(text.strip())
        if not words or words[0] != "load":
            raise _invalid("clone takes one command: load <path> [use_mmap] [n_gpu_layers]")
        if self._loaded or self._loading:
            raise StyxError.make(BUSY, f"this clone file already holds model {self.model_id}")
        command = parse_load(words, self.tree.load_params, self.tree.backend)
        self._loading = True
        try:
            await self.tree.load(command, into=self.model_id)
            self._loaded = True
        finally:
            self._loading = False
            if self._clunked and not self._loaded:
                self.tree.release(self.model_id)
        self._restart()
        return len(data)

    def clunk(self) -> None:
        self._clunked = True
        if not self._loaded and not self._loading:
            self.tree.release(self.model_id)


class _Data(_Stream):
    """``/models/N/data``: each write starts a request; reads stream the output of this file's request."""

    def __init__(self, tree: Tree, node: Node, peer: Peer) -> None:
        super().__init__(tree, node, peer)
        assert node.state is not None
        self.state = node.state
        self.request: Request | None = None

    def _bind(self) -> Request | None:
        if self.request is None:
            request = self.peer.latest.get(self.state) or self.state.latest
            if request is not None:
                request.retain()
                self.request = request
        return self.request

    def try_read(self, offset: int, count: int) -> bytes | None:
        position = self._position(offset)
        request = self._bind()
        if request is None:
            return b""
        return request.available(position, count)

    async def read(self, offset: int, count: int) -> bytes:
        position = self._position(offset)
        request = self._bind()
        if request is None:
            return b""
        return await request.read(position, count)

    def read_later(self, offset: int, count: int, deliver: Deliver) -> Callable[[], None] | None:
        position = self._position(offset)
        request = self._bind()
        if request is None:
            deliver(b"")
            return lambda: None
        return request.subscribe(position, count, deliver)

    async def write(self, offset: int, data: bytes) -> int:
        tree, state = self.tree, self.state
        tree.current(state)
        prompt, params = parse_request(data, tree.max_tokens)
        if len(tree.live) >= tree.max_queued:
            raise StyxError.make(
                BUSY, f"{len(tree.live)} requests are running or queued (the limit); try again later"
            )
        request = Request(tree, state, prompt, params, asyncio.get_running_loop())
        await request.start()
        request.retain()
        old, self.request = self.request, request
        if old is not None:
            old.release()
        request.retain()
        previous, state.latest = state.latest, request
        if previous is not None:
            previous.release()
        self.peer.remember(state, request)
        self._restart()
        return len(data)

    def clunk(self) -> None:
        request, self.request = self.request, None
        if request is not None:
            request.release()


# -- the tree ----------------------------------------------------------------------------------


class Tree:
    """The file tree over one registry; the event loop's thread is the only one that calls it."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        models_root: str | os.PathLike[str] | None = None,
        backend: str | None = None,
        load_params: LoadParams | None = None,
        max_tokens: int = 4096,
        max_queued: int = 64,
    ) -> None:
        self.registry = registry
        self.models_root = Path(models_root).expanduser().resolve() if models_root is not None else None
        self.backend = backend
        self.load_params = load_params if load_params is not None else LoadParams()
        self.max_tokens = max_tokens
        self.max_queued = max_queued
        self.started = int(time.time())
        self.live: set[Request] = set()
        self.executor = ThreadPoolExecutor(max_workers=max_queued, thread_name_prefix="styx-generate")
        self._states: dict[int, ModelState] = {}
        self._serial = 0
        self._owned: Counter[int] = Counter()
        self.root = Node(Kind.ROOT)

    # -- models ---------------------------------------------------------------------------------

    def state(self, model_id: int) -> ModelState:
        """The state of a loaded id (a new one if the id now holds a different model)."""
        try:
            model = self.registry.get(model_id)
        except InvalidModelId:
            raise StyxError.make(NOT_FOUND, f"model {model_id} is not loaded") from None
        state = self._states.get(model_id)
        if state is None or state.model is not model:
            self._serial += 1
            state = self._states[model_id] = ModelState(model_id, model, self._serial, int(time.time()))
        return state

    def current(self, state: ModelState) -> None:
        """Raise not found if the model behind ``state`` was freed since it was walked to."""
        try:
            model = self.registry.get(state.model_id)
        except InvalidModelId:
            model = None
        if model is not state.model:
            raise StyxError.make(NOT_FOUND, f"model {state.model_id} was freed")

    def resolve(self, raw: str) -> Path:
        """The model file a load names, refused outside the models root (symlinks followed)."""
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = (self.models_root or Path.cwd()) / path
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as exc:
            raise _invalid(f"cannot resolve {raw!r}: {exc}") from None
        root = self.models_root
        if root is not None and not resolved.is_relative_to(root):
            raise StyxError.make(PERMISSION, f"{raw!r} is outside the models root {root}")
        if not resolved.exists():
            raise StyxError.make(NOT_FOUND, f"no model file {raw!r}")
        if not resolved.is_file():
            raise _invalid(f"{raw!r} is not a regular file")
        return resolved

    async def load(self, command: LoadCommand, *, into: int | None = None) -> int:
        """Load (or load into a reserved id) through the registry on a worker thread; the id."""
        path = self.resolve(command.path)
        registry, params, backend = self.registry, command.params, command.backend

        def call() -> int:
            chosen = resolve_backend(backend)
            if into is None:
                return registry.load(path, params, chosen)
            return registry.load_into(into, path, params, chosen)

        def loaded(loading: asyncio.Future[int]) -> None:  # counted even if the writer is gone by then
            if not loading.cancelled() and loading.exception() is None:
                self._owned[loading.result()] += 1
                _log.info("loaded %s as model %d (%s)", path, loading.result(), backend or "auto")

        loading = asyncio.ensure_future(asyncio.to_thread(call))
        loading.add_done_callback(loaded)
        return await asyncio.shield(loading)

    def free(self, model_id: int) -> None:
        """Undo one load of ``model_id`` (any load: the server's or a Python caller's)."""
        try:
            self.registry.free(model_id)
        except InvalidModelId as exc:
            raise StyxError.make(NOT_FOUND, str(exc)) from None
        if self._owned[model_id] > 0:
            self._owned[model_id] -= 1
        _log.info("freed model %d", model_id)

    def reserve(self) -> int:
        try:
            return self.registry.reserve()
        except TooManyModels as exc:
            raise StyxError.make(BUSY, str(exc)) from None
        except RuntimeError as exc:
            raise StyxError.make(BUSY, str(exc)) from None

    def release(self, model_id: int) -> None:
        with contextlib.suppress(InvalidModelId, RuntimeError):
            self.registry.release_reservation(model_id)

    def listing(self) -> bytes:
        entries = self.registry.entries()
        lines = [f"{entry.id} {_quote(entry.path)} {entry.backend} {entry.refs}\n" for entry in entries]
        return "".join(lines).encode("utf-8")

    # -- walking and stat -----------------------------------------------------------------------

    def walk(self, node: Node, name: str) -> Node:
        """One step of a walk; StyxError if ``name`` is not there."""
        if not node.is_dir:
            raise StyxError.make(NOT_FOUND, f"cannot walk to {name!r}: {node.name} is not a directory")
        if name == "..":
            if node.kind is Kind.MODEL:
                return Node(Kind.MODELS)
            return self.root
        if node.kind is Kind.ROOT:
            kind = _TOP.get(name)
            if kind is not None:
                return Node(kind)
        elif node.kind is Kind.MODELS:
            if name.isdigit() and name.isascii() and str(int(name)) == name:
                try:
                    return Node(Kind.MODEL, self.state(int(name)))
                except StyxError:
                    pass
        else:
            assert node.state is not None
            self.current(node.state)
            kind = _MODEL_FILES.get(name)
            if kind is not None:
                return Node(kind, node.state)
        raise StyxError.make(NOT_FOUND, f"{name!r} in {node.name}")

    def check(self, node: Node) -> None:
        """Raise not found if ``node`` belongs to a model that is gone."""
        if node.state is not None:
            self.current(node.state)

    def children(self, node: Node) -> list[Node]:
        """A directory's entries, as they are now."""
        if node.kind is Kind.ROOT:
            return [Node(Kind.CTL), Node(Kind.CLONE), Node(Kind.MODELS)]
        if node.kind is Kind.MODELS:
            result = []
            for entry in self.registry.entries():
                try:
                    result.append(Node(Kind.MODEL, self.state(entry.id)))
                except StyxError:
                    continue  # freed meanwhile
            return result
        if node.kind is Kind.MODEL:
            assert node.state is not None
            return [Node(kind, node.state) for kind in _MODEL_FILES.values()]
        return []

    def stat(self, node: Node, uname: str) -> Stat:
        """The truthful stat of a node (length known for info and status, 0 for the streams)."""
        length = 0
        if node.kind is Kind.INFO:
            assert node.state is not None
            length = len(self._info(node.state))
        elif node.kind is Kind.STATUS:
            assert node.state is not None
            length = len(self._status(node.state))
        when = node.state.created if node.state is not None else self.started
        owner = uname or "none"
        return Stat(0, 0, node.qid, node.mode, when, when, length, node.name, owner, owner, owner)

    def wstat(self, node: Node, stat: Stat, uname: str) -> None:
        """Accept only a wstat that changes nothing, except length 0 on a writable file."""
        null = Stat.null()
        current = self.stat(node, uname)
        changes = []
        for name in ("type", "dev", "mode", "atime", "mtime"):
            value = getattr(stat, name)
            if value != getattr(null, name) and value != getattr(current, name):
                changes.append(name)
        if stat.qid != null.qid and stat.qid != current.qid:
            changes.append("qid")
        if stat.name and stat.name != node.name:
            changes.append("name")
        if stat.gid and stat.gid != current.gid:
            changes.append("gid")
        if (stat.uid and stat.uid != current.uid) or (stat.muid and stat.muid != current.muid):
            changes.append("uid")
        truncatable = not node.is_dir and node.kind not in _READ_ONLY
        if stat.length != null.length and not (stat.length == 0 and truncatable):
            changes.append("length")
        if changes:
            raise StyxError.make(PERMISSION, f"cannot change {', '.join(changes)} of {node.name}")

    # -- opening --------------------------------------------------------------------------------

    def open(self, node: Node, mode: int, peer: Peer) -> OpenFile:
        """Open ``node`` for an open(5) mode; StyxError (permission denied) if it does not allow it."""
        self.check(node)
        access = mode & 3
        if mode & ORCLOSE:
            raise StyxError.make(PERMISSION, f"{node.name} cannot be removed (ORCLOSE)")
        if node.is_dir:
            if access not in (OREAD, OEXEC) or mode & OTRUNC:
                raise StyxError.make(PERMISSION, f"{node.name} is a directory")
            return Directory(self, node, peer)
        if access == OEXEC:
            raise StyxError.make(PERMISSION, f"{node.name} is not executable")
        wants_write = access in (OWRITE, ORDWR) or bool(mode & OTRUNC)
        if node.kind in _READ_ONLY:
            if wants_write:
                raise StyxError.make(PERMISSION, f"{node.name} is read-only")
            state = node.state
            assert state is not None
            render = (lambda: self._info(state)) if node.kind is Kind.INFO else (lambda: self._status(state))
            return _Snapshot(self, node, peer, render)
        opened: OpenFile
        if node.kind is Kind.CTL:
            opened = _Ctl(self, node, peer)
        elif node.kind is Kind.CLONE:
            opened = _Clone(self, node, peer, self.reserve())
        else:
            opened = _Data(self, node, peer)
        opened.readable = access in (OREAD, ORDWR)
        opened.writable = access in (OWRITE, ORDWR)
        return opened

    # -- contents -------------------------------------------------------------------------------

    def _info(self, state: ModelState) -> bytes:
        if state.info is None:
            state.info = state.model.info().to_dict()
        data = dict(state.info)
        data["model_id"] = state.model_id
        try:
            data["refs"] = self.registry.refs(state.model_id)
        except InvalidModelId:
            data["refs"] = 0
        return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    def _status(self, state: ModelState) -> bytes:
        tps = state.last_tps if math.isfinite(state.last_tps) else 0.0
        return (
            f"state {'busy' if state.active else 'idle'}\n"
            f"requests {state.requests}\n"
            f"tokens {state.tokens}\n"
            f"tokens_per_second {tps:.2f}\n"
            f"backend {state.model.backend}\n"
        ).encode()

    # -- shutting down --------------------------------------------------------------------------

    async def close(self, timeout: float = 10.0) -> None:
        """Stop every generation, wait for the workers (up to ``timeout``), free what was loaded here."""
        for request in list(self.live):
            request.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
        waiter = asyncio.to_thread(self.executor.shutdown, wait=True)
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            _log.warning("generation threads still running after %.0f s; freeing the models anyway", timeout)
        for model_id, count in list(self._owned.items()):
            for _ in range(count):
                try:
                    self.registry.free(model_id)
                except (InvalidModelId, RuntimeError):
                    break
            _log.info("freed model %d at shutdown", model_id)
        self._owned.clear()
