"""Fixtures for the native suite: the default model's path, the library and a loaded NativeModel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llambo.api import LoadParams
from llambo.errors import NativeUnavailable
from llambo.native.library import NativeLibrary, load_library
from llambo.native.model import NativeModel


@pytest.fixture(scope="session")
def native_library() -> NativeLibrary:
    """The loaded libllama (the suite fails, not skips, when it is not built)."""
    try:
        return load_library()
    except NativeUnavailable as exc:
        pytest.fail(f"the native library must be built before the tests: {exc}")


@pytest.fixture(scope="module")
def native_model(default_model_path: Path, native_library: NativeLibrary) -> Iterator[NativeModel]:
    """The default model, loaded once per test module with a 2048-token context."""
    model = NativeModel(default_model_path, LoadParams(n_ctx=2048))
    yield model
    model.close()
