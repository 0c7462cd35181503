"""Shared pieces of the Styx tests (kept out of conftest.py, whose module name other test
directories share)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from llambo.api import SamplingParams
from llambo.registry import ModelRegistry
from llambo.styx.server import ServerThread

StartServer = Callable[..., ServerThread]


@contextmanager
def model_busy(registry: ModelRegistry, model_id: int) -> Iterator[None]:
    """Hold the model's context from the test thread, so server generations wait (reads block)."""
    session = registry.get(model_id).session(SamplingParams())
    try:
        yield
    finally:
        session.close()
