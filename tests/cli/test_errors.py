"""Exit statuses, one-line errors, backend selection from the environment, and the small commands."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from cli_support import assert_clean_error, llambo

import llambo as api

BROKEN = {"LLAMBO_LIBRARY": "/nonexistent"}
RUN = ("run", "--temp", "0", "-n", "4", "--no-chat")


def test_missing_model_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    out = llambo("run", "--backend", "reference", "-m", str(missing), "hi")  # no fallback warning
    assert_clean_error(out, 1, str(missing))
    assert out.stderr_lines() == [f"llambo: error: no model file at {missing}"]


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    out = llambo("-v", "run", "-m", str(tmp_path / "missing.gguf"), "hi")
    assert out.returncode == 1
    assert "Traceback" in out.stderr and out.stderr_lines()[-1].startswith("llambo: error: ")


def test_usage_errors_exit_2() -> None:
    assert llambo().returncode == 2  # no command
    assert llambo("frobnicate").returncode == 2
    out = llambo("run", "--no-such-option", "hi")
    assert out.returncode == 2 and "--no-such-option" in out.stderr
    assert llambo("bench", "-p", "0").returncode == 2


def test_bad_backend_in_the_environment(tiny_model: Path) -> None:
    out = llambo(*RUN, "-m", str(tiny_model), "hi", env={"LLAMBO_BACKEND": "gpu"})
    assert_clean_error(out, 2, "LLAMBO_BACKEND")


def test_backend_from_the_environment(tiny_model: Path) -> None:
    out = llambo(*RUN, "-m", str(tiny_model), "hi", env={"LLAMBO_BACKEND": "reference"})
    assert out.returncode == 0, out
    assert out.stderr_lines()[-1].startswith("[reference] ")


def test_broken_library_under_auto_falls_back_with_the_reason(tiny_model: Path) -> None:
    out = llambo(*RUN, "-m", str(tiny_model), "hi", env=BROKEN)
    assert out.returncode == 0, out
    assert out.stderr_lines()[-1].startswith("[reference] ")
    warning = out.stderr.split("llambo: warning: ", 1)[1]
    assert "reference" in warning and "/nonexistent" in warning


@pytest.mark.parametrize("how", ["option", "environment"])
def test_broken_library_when_native_is_required(tiny_model: Path, how: str) -> None:
    if how == "option":
        out = llambo(*RUN, "--backend", "native", "-m", str(tiny_model), "hi", env=BROKEN)
    else:
        out = llambo(*RUN, "-m", str(tiny_model), "hi", env={**BROKEN, "LLAMBO_BACKEND": "native"})
    assert_clean_error(out, 1, "native", "/nonexistent")
    assert out.stdout == ""


def test_version() -> None:
    out = llambo("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"llambo {api.__version__}"


def test_serve_passes_its_arguments_on() -> None:
    out = llambo("serve", "--help")
    assert out.returncode == 0, out
    assert "--listen" in out.stdout and out.stdout.startswith("usage: llambo serve")
    bad = llambo("serve", "--listen", "nowhere")
    assert bad.returncode == 2 and "nowhere" in bad.stderr


def test_pull_prints_the_cached_model(default_model_path: Path) -> None:
    out = llambo("pull")
    assert out.returncode == 0, out
    assert out.stdout.strip() == str(default_model_path)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is new in Python 3.11")
def test_console_script_entry_point() -> None:
    import tomllib
    from cli_support import REPO_ROOT

    with open(REPO_ROOT / "pyproject.toml", "rb") as fh:
        assert tomllib.load(fh)["project"]["scripts"]["llambo"] == "llambo.cli:main"


def test_import_llambo_stays_cheap() -> None:
    """The CLI is imported only by ``python -m llambo`` / the script, never by ``import llambo``."""
    import subprocess

    from cli_support import REPO_ROOT

    code = "import sys, llambo; print(sorted(m for m in sys.modules if m.startswith('llambo.cli')))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert re.fullmatch(r"\[\]\s*", done.stdout), done.stdout


def test_ctrl_c_exits_130(tiny_model: Path) -> None:
    """SIGINT while the chat waits for its next line: status 130 and one line, no traceback."""
    import os
    import signal
    import subprocess

    from cli_support import REPO_ROOT

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "llambo", "chat", "-m", str(tiny_model), "--backend", "reference"]
    with subprocess.Popen(
        [*command, "--temp", "0", "-n", "4"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        proc.stdout.readline()  # the first reply (or its first line): the chat loop is running
        proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=60)
        stderr = proc.stderr.read().decode()
    assert status == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "llambo: error: interrupted"
