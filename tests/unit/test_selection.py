"""Backend choice: auto falls back to the reference with one warning, native never falls back.

The library search is cached per process, so each scenario runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llambo.selection import requested_backend

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, logging, sys
import llambo
from support.synthetic_gguf import SyntheticSpec, write_model
logging.basicConfig(level=logging.WARNING, format="%(name)s:%(levelname)s:%(message)s")
path = write_model(sys.argv[1], SyntheticSpec())
out = {"info": llambo.backend_info()}
try:
    with llambo.Model(path, n_threads=1) as first, llambo.Model(path, n_threads=1, n_ctx=64) as second:
        out["backends"] = [first.backend, second.backend]
except llambo.LlamboError as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def _run(tmp_path: Path, **env: str) -> tuple[dict[str, object], str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("LLAMBO_BACKEND", "LLAMBO_LIBRARY")}
    environ.update(env, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "m.gguf")],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(proc.stdout)
    return result, proc.stderr


def test_reference_asked_for_is_used(tmp_path: Path) -> None:
    out, stderr = _run(tmp_path, LLAMBO_BACKEND="reference")
    assert out["backends"] == ["reference", "reference"]
    info = out["info"]
    assert isinstance(info, dict) and info["requested"] == "reference" and info["chosen"] == "reference"
    assert "WARNING" not in stderr


def test_auto_with_a_broken_library_falls_back_once_and_says_why(tmp_path: Path) -> None:
    out, stderr = _run(tmp_path, LLAMBO_LIBRARY=str(tmp_path / "nowhere" / "libllama.so"))
    assert out["backends"] == ["reference", "reference"]
    info = out["info"]
    assert isinstance(info, dict) and info["chosen"] == "reference"
    assert info["native"]["available"] is False and "nowhere" in info["native"]["reason"]
    warnings = [line for line in stderr.splitlines() if "llambo:WARNING" in line]
    assert len(warnings) == 1, stderr
    assert "reference backend" in warnings[0] and "nowhere" in warnings[0]


def test_native_asked_for_never_falls_back(tmp_path: Path) -> None:
    broken = str(tmp_path / "nowhere" / "libllama.so")
    out, _ = _run(tmp_path, LLAMBO_BACKEND="native", LLAMBO_LIBRARY=broken)
    assert "backends" not in out
    assert str(out["error"]).startswith("NativeUnavailable: the native backend was asked for")
    assert "nowhere" in str(out["error"])
    info = out["info"]
    assert isinstance(info, dict) and info["chosen"] is None


def test_requested_backend_reads_the_argument_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMBO_BACKEND", raising=False)
    assert requested_backend() == "auto"
    monkeypatch.setenv("LLAMBO_BACKEND", " Reference ")
    assert requested_backend() == "reference"
    assert requested_backend("native") == "native"
    monkeypatch.setenv("LLAMBO_BACKEND", "gpu")
    with pytest.raises(ValueError, match=r"LLAMBO_BACKEND='gpu'.*auto, native, reference"):
        requested_backend()
    with pytest.raises(ValueError, match="backend='cuda'"):
        requested_backend("cuda")
    with pytest.raises(TypeError):
        requested_backend(3)  # type: ignore[arg-type]
