"""The runnable examples in examples/ still run against the public API (on a tiny model, for speed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.native import requires_native
from support.synthetic_gguf import SyntheticSpec, write_model

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_model(tmp_path_factory.mktemp("examples") / "tiny.gguf", SyntheticSpec()))


def test_model_ids_example(tiny: str) -> None:
    out = _run("model_ids.py", tiny, "hello the")
    assert out.startswith("model ") and "prompt tokens" in out


def test_chat_session_example(tiny: str) -> None:
    out = _run("chat_session.py", tiny)
    assert "> What is the largest planet?" in out and "> And the smallest?" in out


@pytest.mark.native
@requires_native
def test_compare_backends_example(tiny: str) -> None:
    out = _run("compare_backends.py", tiny)
    assert "native:" in out and "reference:" in out
