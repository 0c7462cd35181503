"""Which backend runs a model: ``auto`` (native, else reference), ``native`` or ``reference``.

The choice comes from the ``backend=`` argument of a load, else the ``LLAMBO_BACKEND`` environment
variable, else ``auto``. ``auto`` uses llama.cpp when its library loads and otherwise falls back to
the numpy reference, logging one warning (logger ``llambo``) with the loader's reason. ``native``
asked for explicitly never falls back: it raises :class:`~llambo.errors.NativeUnavailable`.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from .api import BACKENDS, BackendName
from .backends import get_backend
from .errors import InvalidRequest, NativeUnavailable

__all__ = ["AUTO", "ENV_BACKEND", "backend_info", "requested_backend", "resolve_backend"]

ENV_BACKEND = "LLAMBO_BACKEND"
AUTO = "auto"
CHOICES = (AUTO, *BACKENDS)

_log = logging.getLogger("llambo")
_warned: set[str] = set()
_warn_lock = threading.Lock()


def _requested(backend: str | None) -> tuple[str, str]:
    """(the backend asked for, where that came from, for messages)."""
    if backend is None:
        raw = os.environ.get(ENV_BACKEND, "")
        name, source = raw.strip().lower() or AUTO, f"{ENV_BACKEND}={raw!r}" if raw else "the default"
    else:
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str or None, got {type(backend).__name__}")
        name, source = backend.strip().lower(), f"backend={backend!r}"
    if name not in CHOICES:
        raise InvalidRequest(f"unknown backend ({source}); choose one of: {', '.join(CHOICES)}")
    return name, source


def requested_backend(backend: str | None = None) -> str:
    """The backend asked for: ``backend`` if given, else ``$LLAMBO_BACKEND``, else ``auto``.

    An unknown name raises :class:`~llambo.errors.InvalidRequest` (a ValueError).
    """
    return _requested(backend)[0]


def _warn_once(reason: str) -> None:
    with _warn_lock:
        if reason in _warned:
            return
        _warned.add(reason)
    _log.warning(
        "llama.cpp's library is unavailable, using the numpy reference backend (slower). Reason: %s",
        reason,
    )


def resolve_backend(backend: str | None = None) -> BackendName:
    """The backend that will run a load asked for with ``backend`` (see the module docstring)."""
    requested, source = _requested(backend)
    if requested == "reference":
        return "reference"
    reason = get_backend("native").availability()
    if reason is None:
        return "native"
    if requested == "native":
        raise NativeUnavailable(
            f"the native backend was asked for ({source}) and does not fall back, but it is unavailable: "
            f"{reason}\nUse backend 'auto' to fall back to the numpy reference backend."
        )
    _warn_once(reason)
    return "reference"


def backend_info(backend: str | None = None) -> dict[str, Any]:
    """What a load would run on now and why: the choice, the library and its build, or the reason not.

    Never raises for an unavailable library (``chosen`` is then None when ``native`` was required).
    """
    from .native.library import library_status

    requested = requested_backend(backend)
    status = library_status()
    native: dict[str, Any] = {
        "available": bool(status.get("available")),
        "library": status.get("path"),
        "source": status.get("source"),
        "build_info": status.get("build_info"),
        "supports_gpu_offload": status.get("supports_gpu_offload"),
        "warnings": status.get("warnings", []),
        "reason": status.get("reason"),
        "candidates": status.get("candidates", []),
    }
    if requested == "reference":
        chosen: str | None = "reference"
    elif native["available"]:
        chosen = "native"
    else:
        chosen = None if requested == "native" else "reference"
    return {
        "requested": requested,
        "chosen": chosen,
        "env": os.environ.get(ENV_BACKEND),
        "native": native,
        "reference": {"available": get_backend("reference").availability() is None},
    }
