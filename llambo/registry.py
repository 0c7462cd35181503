"""Loaded models by small integer id (0..31), shared by both backends, reference counted.

Loading the same file (resolved path) with equal :class:`~llambo.api.LoadParams` on the same
backend returns the id already given out, with its count raised; :meth:`ModelRegistry.free`
lowers it and closes the model at zero. Files are read from disk without the registry's lock held:
a load in progress is a placeholder that other loads of the same file wait for.

``reserve``/``load_into``/``release_reservation`` let a caller take an id before knowing the
model (a 9P ``clone`` file): a reserved id counts as used. An id loaded that way shares the loaded
model with other ids of the same file; the model is closed when the last of them is freed.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from .api import Backend, LoadedModel, LoadParams
from .errors import InvalidModelId, TooManyModels

__all__ = ["MAX_MODELS", "ModelRegistry", "RegistryEntry", "default_registry"]

MAX_MODELS = 32

_log = logging.getLogger(__name__)

_Key = tuple[str, LoadParams, str]  # (resolved path, params, backend name)


class _State(Enum):
    RESERVED = "reserved"
    LOADING = "loading"
    READY = "ready"


@dataclass
class _Slot:
    state: _State
    key: _Key | None = None
    refs: int = 0


@dataclass
class _Shared:
    """One loaded model and how many ids hold it (None while it is being read from disk)."""

    model: LoadedModel | None = None
    holders: int = 0


@dataclass(frozen=True)
class RegistryEntry:
    """One loaded model id, as listed by :meth:`ModelRegistry.entries`."""

    id: int
    path: str
    backend: str
    refs: int
    params: LoadParams

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["params"] = asdict(self.params)
        return data


def _default_backends(name: str) -> Backend:
    from .backends import get_backend

    return get_backend(name)


class ModelRegistry:
    """Ids 0..max_models-1 for loaded models; thread-safe (one lock, never held while loading)."""

    def __init__(
        self,
        backends: Callable[[str], Backend] = _default_backends,
        *,
        max_models: int = MAX_MODELS,
    ) -> None:
        self._backends = backends
        self._max = max_models
        self._cond = threading.Condition(threading.Lock())
        self._slots: dict[int, _Slot] = {}
        self._shared: dict[_Key, _Shared] = {}
        self._primary: dict[_Key, int] = {}  # the id load() hands out again for a key
        self._closed = False

    # -- internals (called with the lock held) ---------------------------------------------------

    def _live_ids(self) -> str:
        ids = sorted(i for i, slot in self._slots.items() if slot.state is _State.READY)
        return ", ".join(map(str, ids)) if ids else "none"

    def _unknown(self, model_id: object, what: str = "is not a loaded model") -> InvalidModelId:
        return InvalidModelId(f"model id {model_id!r} {what}; loaded ids: {self._live_ids()}")

    def _take_id(self, state: _State) -> int:
        if self._closed:
            raise RuntimeError("the model registry has been shut down (the interpreter is exiting)")
        for model_id in range(self._max):
            if model_id not in self._slots:
                self._slots[model_id] = _Slot(state)
                return model_id
        raise TooManyModels(
            f"all {self._max} model ids are in use (at most {self._max} models can be loaded at once); "
            "free one with free_model(id) first"
        )

    def _ready_slot(self, model_id: object) -> _Slot:
        if isinstance(model_id, bool) or not isinstance(model_id, int):
            raise TypeError(f"a model id is an int, got {type(model_id).__name__}")
        slot = self._slots.get(model_id)
        if slot is None or slot.state is not _State.READY:
            what = "is not a loaded model" if slot is None else f"is {slot.state.value}, not loaded"
            raise self._unknown(model_id, what)
        return slot

    # -- keys and loading -------------------------------------------------------------------------

    def _key(self, path: str | os.PathLike[str], params: LoadParams, backend: str) -> tuple[_Key, Backend]:
        if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        if not isinstance(params, LoadParams):
            raise TypeError(f"params must be LoadParams, got {type(params).__name__}")
        backend_object = self._backends(backend)
        resolved = str(Path(os.fspath(path)).expanduser().resolve())
        return (resolved, params, backend), backend_object

    def _attach(self, model_id: int, key: _Key, backend: Backend) -> None:
        """Give the slot ``model_id`` (LOADING) the model for ``key``, loading it if nobody has."""
        with self._cond:
            while True:
                shared = self._shared.get(key)
                if shared is None:
                    shared = self._shared[key] = _Shared()
                    break
                if shared.model is not None:
                    shared.holders += 1
                    self._ready(model_id, key)
                    return
                self._cond.wait()
        try:
            model = backend.load(Path(key[0]), key[1])
        except BaseException:
            with self._cond:
                del self._shared[key]
                self._cond.notify_all()
            raise
        with self._cond:
            closed = self._closed
            if closed:
                del self._shared[key]
                self._cond.notify_all()
            else:
                shared.model = model
                shared.holders = 1
                self._ready(model_id, key)
        if closed:
            model.close()
            raise RuntimeError("the model registry was shut down while the model loaded")

    def _ready(self, model_id: int, key: _Key) -> None:
        slot = self._slots[model_id]
        slot.state, slot.key, slot.refs = _State.READY, key, 1
        self._primary.setdefault(key, model_id)
        self._cond.notify_all()

    # -- the public operations ----------------------------------------------------------------

    def load(
        self, path: str | os.PathLike[str], params: LoadParams | None = None, backend: str = "native"
    ) -> int:
        """The id of ``path`` loaded with ``params`` on ``backend``, new or given out before (refs + 1)."""
        key, backend_object = self._key(path, params if params is not None else LoadParams(), backend)
        with self._cond:
            while True:
                model_id = self._primary.get(key)
                if model_id is None:
                    break
                slot = self._slots[model_id]
                if slot.state is _State.READY:
                    slot.refs += 1
                    return model_id
                self._cond.wait()  # loading: share its outcome
            model_id = self._take_id(_State.LOADING)
            self._slots[model_id].key = key
            self._primary[key] = model_id
        try:
            self._attach(model_id, key, backend_object)
        except BaseException:
            with self._cond:
                del self._slots[model_id]
                if self._primary.get(key) == model_id:
                    del self._primary[key]
                self._cond.notify_all()
            raise
        return model_id

    def reserve(self) -> int:
        """Take the lowest free id without a model (it counts as used until loaded into or released)."""
        with self._cond:
            return self._take_id(_State.RESERVED)

    def load_into(
        self,
        reserved_id: int,
        path: str | os.PathLike[str],
        params: LoadParams | None = None,
        backend: str = "native",
    ) -> int:
        """Load a model under an id from :meth:`reserve`; on failure the id stays reserved."""
        key, backend_object = self._key(path, params if params is not None else LoadParams(), backend)
        with self._cond:
            slot = self._slots.get(reserved_id)
            if slot is None or slot.state is not _State.RESERVED:
                raise self._unknown(reserved_id, "is not a reserved id")
            slot.state, slot.key = _State.LOADING, key
        try:
            self._attach(reserved_id, key, backend_object)
        except BaseException:
            with self._cond:
                slot.state, slot.key = _State.RESERVED, None
                self._cond.notify_all()
            raise
        return reserved_id

    def release_reservation(self, reserved_id: int) -> None:
        """Give back an id from :meth:`reserve` that was never loaded into."""
        with self._cond:
            slot = self._slots.get(reserved_id)
            if slot is None or slot.state is not _State.RESERVED:
                raise self._unknown(reserved_id, "is not a reserved id")
            del self._slots[reserved_id]

    def get(self, model_id: int) -> LoadedModel:
        """The model under ``model_id``; InvalidModelId if there is none."""
        with self._cond:
            key = self._ready_slot(model_id).key
            assert key is not None
            model = self._shared[key].model
            assert model is not None
            return model

    def retain(self, model_id: int) -> int:
        """Add one load to ``model_id`` (as loading the same file again would); returns the new count."""
        with self._cond:
            slot = self._ready_slot(model_id)
            slot.refs += 1
            return slot.refs

    def refs(self, model_id: int) -> int:
        """How many loads of ``model_id`` are not yet freed."""
        with self._cond:
            return self._ready_slot(model_id).refs

    def free(self, model_id: int) -> None:
        """Undo one load of ``model_id``; the last frees the id (and the model unless another id holds it)."""
        with self._cond:
            slot = self._ready_slot(model_id)
            slot.refs -= 1
            if slot.refs > 0:
                return
            model = self._drop(model_id, slot)
        if model is not None:
            model.close()

    def _drop(self, model_id: int, slot: _Slot) -> LoadedModel | None:
        """Remove a slot; the model to close if it was its last holder (the lock is held)."""
        del self._slots[model_id]
        key = slot.key
        assert key is not None
        if self._primary.get(key) == model_id:
            del self._primary[key]
            heirs = [i for i, s in self._slots.items() if s.key == key and s.state is _State.READY]
            if heirs:  # another id (from load_into) holds this file: load() hands that one out now
                self._primary[key] = min(heirs)
        shared = self._shared[key]
        shared.holders -= 1
        if shared.holders > 0:
            return None
        del self._shared[key]
        return shared.model

    def entries(self) -> list[RegistryEntry]:
        """Every loaded id, lowest first."""
        with self._cond:
            result = []
            for model_id in sorted(self._slots):
                slot = self._slots[model_id]
                if slot.state is _State.READY and slot.key is not None:
                    path, params, backend = slot.key
                    result.append(RegistryEntry(model_id, path, backend, slot.refs, params))
            return result

    def close_all(self) -> int:
        """Free every model whatever its count and refuse new loads; returns how many were closed."""
        with self._cond:
            self._closed = True
            models = [shared.model for shared in self._shared.values() if shared.model is not None]
            self._slots = {i: s for i, s in self._slots.items() if s.state is _State.LOADING}
            self._shared = {k: s for k, s in self._shared.items() if s.model is None}
            self._primary = {k: i for k, i in self._primary.items() if i in self._slots}
        for model in models:
            try:
                model.close()
            except Exception:
                _log.warning("closing %s failed", model, exc_info=True)
        return len(models)


_default: ModelRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> ModelRegistry:
    """The process-wide registry behind ``llambo.load_model`` and friends; emptied once at exit."""
    global _default
    registry = _default
    if registry is None:
        with _default_lock:
            if _default is None:
                _default = ModelRegistry()
                atexit.register(_default.close_all)
            registry = _default
    return registry
