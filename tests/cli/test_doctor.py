"""``llambo doctor``: the report, in text and JSON, and its exit status."""

from __future__ import annotations

import json

from cli_support import NATIVE_REASON, llambo, needs_native

BROKEN = {"LLAMBO_LIBRARY": "/nonexistent"}


def test_doctor_json_reports_a_working_backend() -> None:
    out = llambo("doctor", "--json")
    assert out.returncode == 0, out
    report = json.loads(out.stdout)
    assert report["ok"] is True
    assert report["backend"]["chosen"] == ("native" if NATIVE_REASON is None else "reference")
    assert report["backend"]["reference"]["available"] is True
    assert set(report["gpu"]) >= {"nvidia_smi", "gpus", "libcuda", "offload"}
    assert set(report["default_model"]) >= {"path", "present", "verified"}


def test_doctor_text() -> None:
    out = llambo("doctor")
    assert out.returncode == 0, out
    for heading in ("backend:", "native library:", "GPU:", "default model:", "ok: "):
        assert heading in out.stdout


@needs_native
def test_doctor_names_the_library() -> None:
    report = json.loads(llambo("doctor", "--json").stdout)
    assert report["backend"]["native"]["library"].endswith("libllama.so")
    assert "auto" in report["backend"]["why"]


def test_doctor_with_a_broken_library() -> None:
    out = llambo("doctor", "--json", env=BROKEN)
    assert out.returncode == 0, out  # auto falls back to the reference: something works
    report = json.loads(out.stdout)
    assert report["backend"]["chosen"] == "reference"
    assert report["backend"]["native"]["available"] is False
    assert "/nonexistent" in report["backend"]["native"]["reason"]

    required = llambo("doctor", env={**BROKEN, "LLAMBO_BACKEND": "native"})
    assert required.returncode == 1, required
    assert "NOT OK" in required.stdout
