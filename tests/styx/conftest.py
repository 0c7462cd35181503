"""Fixtures for the Styx suite: tiny synthetic models, a fresh registry and a live server per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from styx_raw import Raw
from styx_support import StartServer
from support.synthetic_gguf import SyntheticSpec, write_model

from llambo.api import LoadParams
from llambo.registry import ModelRegistry
from llambo.styx.server import Limits, ServerThread, StyxServer


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models root holding two small synthetic models (they load in milliseconds)."""
    root = tmp_path_factory.mktemp("models")
    write_model(root / "tiny.gguf", SyntheticSpec())
    write_model(root / "other.gguf", SyntheticSpec(seed=1))
    return root


@pytest.fixture
def tiny(model_dir: Path) -> str:
    return str(model_dir / "tiny.gguf")


@pytest.fixture
def registry() -> Iterator[ModelRegistry]:
    """A registry of its own (not the process-wide one), emptied afterwards."""
    registry = ModelRegistry()
    yield registry
    registry.close_all()


@pytest.fixture
def start_server(registry: ModelRegistry, model_dir: Path) -> Iterator[StartServer]:
    """Start a server on 127.0.0.1 (a free port) with the given limits; stopped and checked after."""
    started: list[ServerThread] = []

    def start(
        limits: Limits | None = None, listen: str = "tcp!127.0.0.1!0", **options: object
    ) -> ServerThread:
        options.setdefault("models_root", model_dir)
        options.setdefault("load_params", LoadParams(n_threads=1))
        thread = ServerThread(StyxServer(registry, limits=limits, **options), listen)  # type: ignore[arg-type]
        thread.start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.stop()
    assert registry.entries() == [], "the server must free every model it loaded when it closes"


@pytest.fixture
def server(start_server: StartServer) -> ServerThread:
    return start_server()


@pytest.fixture
def address(server: ServerThread) -> str:
    return str(server.address)


@pytest.fixture
def connect(address: str) -> Iterator[Callable[[], Raw]]:
    """Open raw connections to the server (closed afterwards)."""
    opened: list[Raw] = []

    def make() -> Raw:
        raw = Raw(address)
        opened.append(raw)
        return raw

    yield make
    for raw in opened:
        raw.close()


@pytest.fixture
def raw(connect: Callable[[], Raw]) -> Raw:
    """One connection, versioned and attached (root fid 0)."""
    return connect().session()
