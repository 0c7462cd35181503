"""`pip wheel .`: a platform wheel with the libraries, a pure wheel on request or when CMake fails."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from build_tools import toolchain

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("scikit_build_core") is None,
    reason="scikit-build-core is not installed: the wheel tests build without isolation (no network)",
)


def _pip_wheel(repo_root: Path, out: Path, **env: str) -> tuple[Path, str]:
    """Build a wheel of the checkout with the installed scikit-build-core; return it and pip's log."""
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v"]
    cmd += ["-w", str(out), "."]
    env = {**os.environ, **env}
    proc = subprocess.run(
        cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    wheels = list(out.glob("llambo-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], proc.stdout + proc.stderr


def _libraries(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return sorted(n for n in zf.namelist() if n.startswith("llambo/_lib/"))


def test_pure_wheel_on_request(repo_root: Path, tmp_path: Path) -> None:
    wheel, _ = _pip_wheel(repo_root, tmp_path, LLAMBO_NATIVE="0")
    assert wheel.name.endswith("-py3-none-any.whl")
    assert _libraries(wheel) == []
    with zipfile.ZipFile(wheel) as zf:
        assert "llambo/__init__.py" in zf.namelist()
        assert "llambo/py.typed" in zf.namelist()


def test_failed_cmake_build_falls_back_to_pure_wheel(repo_root: Path, tmp_path: Path) -> None:
    report = toolchain.check_toolchain(cuda=True)
    cublas = report.tool("cuBLAS")
    if cublas is not None and cublas.found:
        pytest.skip("this machine has cuBLAS, so a CUDA request does not fail here")
    wheel, log = _pip_wheel(repo_root, tmp_path, CMAKE_ARGS="-DGGML_CUDA=on")
    assert wheel.name.endswith("-py3-none-any.whl")
    assert _libraries(wheel) == []
    assert "cuBLAS is missing" in log
    assert "WITHOUT its native library" in log


@pytest.mark.slow
def test_native_wheel_holds_the_libraries(repo_root: Path, tmp_path: Path) -> None:
    wheel, _ = _pip_wheel(repo_root, tmp_path)
    assert wheel.name.endswith("-py3-none-linux_x86_64.whl") or "-py3-none-" in wheel.name
    names = [Path(n).name for n in _libraries(wheel)]
    for lib in ("libllama.so", "libggml.so", "libggml-base.so", "libggml-cpu.so", "BUILD_INFO.json"):
        assert lib in names
    # One unversioned file per library: wheels cannot hold symlinks.
    assert not [n for n in names if ".so." in n]
