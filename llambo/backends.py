"""Backends by name; each is imported only when first asked for, so ``import llambo`` stays cheap."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .api import Backend


def _native() -> Backend:
    from .native.backend import NativeBackend

    return NativeBackend()


def _reference() -> Backend:
    from .reference.model import ReferenceBackend

    return ReferenceBackend()


_FACTORIES: dict[str, Callable[[], Backend]] = {"native": _native, "reference": _reference}
_instances: dict[str, Backend] = {}
_lock = threading.Lock()


def backend_names() -> tuple[str, ...]:
    """The names :func:`get_backend` accepts."""
    return tuple(_FACTORIES)


def get_backend(name: str = "native") -> Backend:
    """The backend called ``name`` (one instance per process); ValueError for an unknown name."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__}")
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(_FACTORIES)}")
    with _lock:
        backend = _instances.get(name)
        if backend is None:
            backend = _instances[name] = factory()
        return backend
