"""Running ``python -m llambo`` in a subprocess for the CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Outcome:
    """Exit status and output of one ``llambo`` run (stdout decoded exactly, no newline translation)."""

    returncode: int
    stdout: str
    stderr: str

    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()


def llambo(
    *args: str,
    stdin: str | None = "",
    env: Mapping[str, str | None] | None = None,
    timeout: float = 180,
) -> Outcome:
    """``python -m llambo ARGS`` with the checkout on PYTHONPATH and no LLAMBO_BACKEND (unless given).

    ``env`` adds variables (None removes one). stdin is ``stdin`` (empty by default: never a TTY).
    """
    environ = dict(os.environ)
    environ.pop("LLAMBO_BACKEND", None)
    old = environ.get("PYTHONPATH")
    environ["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + old if old else "")
    environ["PYTHONIOENCODING"] = "utf-8"
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    done = subprocess.run(
        [sys.executable, "-m", "llambo", *args],
        input=None if stdin is None else stdin.encode("utf-8"),
        capture_output=True,
        env=environ,
        cwd=REPO_ROOT,
        timeout=timeout,
        check=False,
    )
    return Outcome(
        done.returncode,
        done.stdout.decode("utf-8", errors="strict"),
        done.stderr.decode("utf-8", errors="replace"),
    )


def streamed(text: str) -> str:
    """What ``llambo run`` / a chat turn prints for generated ``text``: a newline is added if missing."""
    return text + "\n" if text and not text.endswith("\n") else text


def assert_clean_error(outcome: Outcome, status: int, *words: str) -> None:
    """A failure with status ``status``: ``llambo: error: ...`` naming ``words``, and no traceback."""
    assert outcome.returncode == status, outcome
    assert "Traceback" not in outcome.stderr, outcome.stderr
    errors = [line for line in outcome.stderr_lines() if line.startswith("llambo: error: ")]
    assert errors, outcome.stderr
    for word in words:
        assert word in outcome.stderr, (word, outcome.stderr)


def _native_reason() -> str | None:
    """None when llama.cpp's library loads here, else why not (for skip reasons)."""
    import llambo

    native = llambo.backend_info("auto")["native"]
    return None if native["available"] else " ".join(str(native["reason"]).split())


NATIVE_REASON = _native_reason()
needs_native = pytest.mark.skipif(
    NATIVE_REASON is not None, reason=f"the native library is unavailable here: {NATIVE_REASON}"
)
