"""The native backend: llama.cpp through ctypes, usable when its shared library loads."""

from __future__ import annotations

from pathlib import Path

from ..api import BackendName, LoadParams
from .library import library_status
from .model import NativeModel


class NativeBackend:
    """Loads GGUF models into llama.cpp (see :class:`~llambo.native.model.NativeModel`)."""

    name: BackendName = "native"

    def availability(self) -> str | None:
        """None when libllama loads, else why it does not (the loader's own message)."""
        status = library_status()
        if status.get("available"):
            return None
        return str(status.get("reason") or "the llama.cpp library is unavailable")

    def load(self, path: Path, params: LoadParams) -> NativeModel:
        """Load ``path`` (raises ModelFileNotFound, ModelLoadError or NativeUnavailable)."""
        return NativeModel(path, params)
