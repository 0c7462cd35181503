"""The doctor's GPU/CUDA probe against a stand-in ``nvidia-smi`` (no GPU needed)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from llambo.cli.commands.doctor import _gpu_summary
from llambo.cli.gpu import probe


def fake_nvidia_smi(directory: Path, body: str) -> None:
    script = directory / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_gpus_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, "echo 'NVIDIA H200, 9.0, 550.54.15, 143771 MiB'")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    found = probe()
    assert found["nvidia_smi"] == str(tmp_path / "nvidia-smi")
    assert found["gpus"] == [
        {"name": "NVIDIA H200", "compute_capability": "9.0", "driver": "550.54.15", "memory": "143771 MiB"}
    ]
    assert found["problem"] is None
    cpu_library = {"available": True, "supports_gpu_offload": False}
    assert "without CUDA" in _gpu_summary(cpu_library, found)
    cuda_library = {"available": True, "supports_gpu_offload": True}
    assert "--gpu-layers" in _gpu_summary(cuda_library, found)


def test_driver_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(
        tmp_path, "echo 'NVIDIA-SMI has failed because it could not talk to the driver' >&2; exit 9"
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    found = probe()
    assert found["gpus"] == []
    assert "NVIDIA-SMI has failed" in found["problem"]


def test_no_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    found = probe()
    assert found["nvidia_smi"] is None and found["gpus"] == []
    assert "not found" in found["problem"]
