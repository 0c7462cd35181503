"""Shared fixtures: the repository root and the pinned llama.cpp source tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's root directory."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def llama_source_dir() -> Path:
    """The llama.cpp tree the native library is built from (fetched by ``python -m build_tools fetch``)."""
    env = os.environ.get("LLAMBO_LLAMA_CPP_DIR")
    path = Path(env) if env else REPO_ROOT / "third_party" / "llama.cpp"
    if not (path / "include" / "llama.h").is_file():
        pytest.fail(
            f"no llama.cpp source at {path}; run `python -m build_tools fetch` "
            "(or set LLAMBO_LLAMA_CPP_DIR) before the tests"
        )
    return path


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The verified default model (fetched into the cache on first use; `nox -s tests` fetches it)."""
    from llambo.default_model import ensure_default_model
    from llambo.errors import LlamboError

    try:
        return ensure_default_model(progress=False)
    except LlamboError as exc:
        pytest.fail(f"the default model could not be fetched: {exc}")
