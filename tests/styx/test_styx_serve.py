"""The command line: ``python -m llambo.styx`` starts, loads, serves, and shuts down cleanly on a signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llambo.styx import Client
from llambo.styx.address import parse_address
from llambo.styx.serve import build_parser

REPO = Path(__file__).resolve().parents[2]


def _start(*args: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-m", "llambo.styx", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"serving 9P2000 on (\S+)", line)
        if found:
            return process, found.group(1)
    process.kill()
    raise AssertionError("the server did not start:\n" + "".join(lines))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_loads_serves_and_stops_on_a_signal(model_dir: Path, signum: int) -> None:
    tiny = str(model_dir / "tiny.gguf")
    process, address = _start(
        "--listen", "tcp!127.0.0.1!0", "--models-root", str(model_dir), "--load", tiny, "--threads", "1"
    )
    try:
        with Client(address) as client:
            assert client.models()[0]["path"] == tiny
            assert client.ask(0, "Hi", max_tokens=4, temperature=0) is not None
        process.send_signal(signum)
        assert process.wait(30) == 0
        assert process.stderr is not None
        log = process.stderr.read()
        assert ("Twalk" in log and "freed" not in log) or "server closed" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_on_a_unix_socket_removes_it_afterwards(tmp_path: Path) -> None:
    path = tmp_path / "styx.sock"
    process, address = _start("--listen", f"unix!{path}", "-q")
    try:
        with Client(address) as client:
            assert client.models() == []
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        assert not path.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_refuses_a_load_outside_the_root(model_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "llambo.styx", "--listen", "tcp!127.0.0.1!0"),
            *("--models-root", str(tmp_path), "--load", str(model_dir / "tiny.gguf")),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    assert "permission denied" in result.stderr


def test_parser_defaults_and_addresses() -> None:
    args = build_parser().parse_args([])
    assert args.listen == "tcp!127.0.0.1!5640"
    assert parse_address("tcp!*!564").host == "0.0.0.0"
    assert parse_address("unix!/tmp/x").path == "/tmp/x"
    assert parse_address("localhost:5640").port == 5640
    for bad in ("tcp!host", "udp!a!1", "tcp!a!port", "tcp!a!70000", "unix!"):
        with pytest.raises(ValueError):
            parse_address(bad)
