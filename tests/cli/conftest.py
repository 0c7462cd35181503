"""Fixtures for the CLI suite: tiny synthetic models (helpers to run the command: cli_support)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.synthetic_gguf import SyntheticSpec, write_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~1 MB synthetic llama with a ChatML template (loads in milliseconds on both backends)."""
    return write_model(tmp_path_factory.mktemp("cli-models") / "tiny.gguf", SyntheticSpec())


@pytest.fixture(scope="session")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same kind of model without a chat template."""
    path = tmp_path_factory.mktemp("cli-models") / "plain.gguf"
    return write_model(path, SyntheticSpec(seed=1, chat_template=False))
