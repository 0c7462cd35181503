"""A small, self-contained NVIDIA GPU/CUDA probe for ``llambo doctor`` (it needs no GPU to run)."""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["probe"]

_LIBCUDA_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/cuda/compat",
    "/usr/lib/wsl/lib",
)


def _query(nvidia_smi: str) -> tuple[list[dict[str, str]], str | None]:
    """The GPUs nvidia-smi lists, or the reason it listed none."""
    fields = ("name", "compute_cap", "driver_version", "memory.total")
    try:
        done = subprocess.run(
            [nvidia_smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"nvidia-smi failed: {exc}"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return [], f"nvidia-smi failed: {lines[0] if lines else f'exit status {done.returncode}'}"
    gpus = []
    for line in done.stdout.splitlines():
        values = [value.strip() for value in line.split(",")]
        if len(values) == len(fields) and values[0]:
            gpus.append(dict(zip(("name", "compute_capability", "driver", "memory"), values, strict=True)))
    return gpus, None if gpus else "nvidia-smi lists no GPU"


def _libcuda() -> str | None:
    """Where the CUDA driver library (libcuda) is, if the system has one."""
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    for directory in (*dirs, *_LIBCUDA_DIRS):
        for name in ("libcuda.so.1", "libcuda.so"):
            candidate = Path(directory) / name
            if candidate.exists():
                return str(candidate)
    return ctypes.util.find_library("cuda")


def probe() -> dict[str, Any]:
    """nvidia-smi (path, GPUs, or why none) and libcuda's path; never raises."""
    smi = shutil.which("nvidia-smi")
    gpus, problem = _query(smi) if smi else ([], "nvidia-smi not found (no NVIDIA driver)")
    return {"nvidia_smi": smi, "gpus": gpus, "problem": problem, "libcuda": _libcuda()}
