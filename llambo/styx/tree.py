"""The llambo file tree served over Styx: ``/ctl``, ``/clone`` and ``/models/N/{data,info,status}``.

Nothing here knows about 9P messages, fids or tags: the server walks, opens, reads and writes
through :class:`Tree` and :class:`~llambo.styx.files.OpenFile`, and turns a
:class:`~llambo.styx.errors.StyxError` into Rerror. Models are loaded, looked up and freed through
a :class:`~llambo.registry.ModelRegistry` exactly as Python callers do; generation runs on worker
threads (one per request, from a bounded pool) and is streamed to readers on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ..api import LoadParams
from ..errors import InvalidModelId, TooManyModels
from ..registry import ModelRegistry
from ..selection import resolve_backend
from .commands import LoadCommand, quote
from .errors import BUSY, NOT_FOUND, PERMISSION, StyxError, invalid
from .fcall import OEXEC, ORCLOSE, ORDWR, OREAD, OTRUNC, OWRITE, Stat
from .files import CloneFile, CtlFile, DataFile, Directory, OpenFile, SnapshotFile
from .nodes import Kind, ModelState, Node, Peer

if TYPE_CHECKING:
    from .requests import Request

__all__ = ["Tree"]

_log = logging.getLogger("llambo.styx")

_TOP = {"ctl": Kind.CTL, "clone": Kind.CLONE, "models": Kind.MODELS}  # the names in /
_MODEL_FILES = {"data": Kind.DATA, "info": Kind.INFO, "status": Kind.STATUS}  # and in /models/N


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
            raise invalid(f"cannot resolve {raw!r}: {exc}") from None
        root = self.models_root
        if root is not None and not resolved.is_relative_to(root):
            raise StyxError.make(PERMISSION, f"{raw!r} is outside the models root {root}")
        if not resolved.exists():
            raise StyxError.make(NOT_FOUND, f"no model file {raw!r}")
        if not resolved.is_file():
            raise invalid(f"{raw!r} is not a regular file")
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
        lines = [f"{entry.id} {quote(entry.path)} {entry.backend} {entry.refs}\n" for entry in entries]
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
        truncatable = not node.is_dir and not node.read_only
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
        if node.read_only:
            if wants_write:
                raise StyxError.make(PERMISSION, f"{node.name} is read-only")
            state = node.state
            assert state is not None
            render = (lambda: self._info(state)) if node.kind is Kind.INFO else (lambda: self._status(state))
            return SnapshotFile(self, node, peer, render)
        opened: OpenFile
        if node.kind is Kind.CTL:
            opened = CtlFile(self, node, peer)
        elif node.kind is Kind.CLONE:
            opened = CloneFile(self, node, peer, self.reserve())
        else:
            opened = DataFile(self, node, peer)
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
