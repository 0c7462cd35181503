"""`python -m build_tools`: dry runs, option errors, toolchain check, preflight, build caching, clean."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from build_tools import build as build_mod
from build_tools import toolchain
from build_tools.build import (
    BUILD_STAMP,
    BuildError,
    _prepare_build_dir,
    _sync_lib_dir,
    clean,
    preflight,
)
from build_tools.cmake_flags import BuildOptions
from build_tools.source import SourceInfo
from build_tools.toolchain import Report, Tool


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment, minus what would change a build, with the download cache in tmp_path."""
    env = {k: v for k, v in os.environ.items() if k not in ("CMAKE_ARGS", "LLAMBO_LLAMA_CPP_DIR")}
    env["LLAMBO_CACHE_DIR"] = str(tmp_path / "cache")
    env.update(extra)
    return env


def _cli(
    args: list[str], repo_root: Path, env: Mapping[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "build_tools", *args],
        cwd=repo_root,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _snapshot(repo_root: Path) -> dict[str, object]:
    """What a fetch or a build would change in the checkout."""
    stamp = repo_root / "third_party" / "llama.cpp" / ".llambo-source.json"
    lib = repo_root / "llambo" / "_lib"
    build_root = repo_root / "build"
    return {
        "source_stamp": stamp.stat().st_mtime_ns if stamp.exists() else None,
        "lib": sorted((p.name, p.stat().st_mtime_ns) for p in lib.iterdir()) if lib.is_dir() else None,
        "build": sorted(p.name for p in build_root.iterdir()) if build_root.is_dir() else None,
    }


def _fake_cmake_path(tmp_path: Path) -> tuple[str, Path]:
    """A PATH whose first entry has a `cmake` that leaves a marker file when it is run for real.

    ``cmake --version`` (the toolchain probe) is answered by the real cmake, so the probe's verdict
    is the same as without the wrapper.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "cmake-ran"
    real = shutil.which("cmake")
    version = f'exec "{real}" "$@"' if real else "exit 1"
    script = bin_dir / "cmake"
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = --version ]; then {version}; fi\necho "$@" >> "{marker}"\nexit 3\n'
    )
    script.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", marker


# --- dry run and option errors ----------------------------------------------------------------


def test_dry_run_prints_the_cuda_configure_command_and_does_nothing(repo_root: Path, tmp_path: Path) -> None:
    path, marker = _fake_cmake_path(tmp_path)
    env = _env(tmp_path, PATH=path)
    before = _snapshot(repo_root)

    started = time.monotonic()
    proc = _cli(["build", "--cuda", "--cuda-arch", "90", "--dry-run"], repo_root, env)
    elapsed = time.monotonic() - started

    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    words = lines[0].split()
    assert "-DGGML_CUDA=ON" in words
    assert "-DCMAKE_CUDA_ARCHITECTURES=90" in words
    assert words[:5] == ["cmake", "-S", str(repo_root), "-B", str(repo_root / "build" / "cuda")]
    assert ("-G" in words) == (shutil.which("ninja", path=path) is not None)
    assert elapsed < 5, f"a dry run took {elapsed:.1f} s"
    assert not marker.exists(), "the dry run ran cmake"
    assert not (tmp_path / "cache").exists(), "the dry run fetched something"
    assert _snapshot(repo_root) == before


def test_dry_run_appends_cmake_args_from_the_environment(repo_root: Path, tmp_path: Path) -> None:
    env = _env(tmp_path, CMAKE_ARGS='-DGGML_NATIVE=OFF "-DFOO=a b"')
    proc = _cli(["build", "--debug", "--rpc", "--dry-run"], repo_root, env)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert "-DGGML_CUDA=OFF" in line
    assert "-DCMAKE_BUILD_TYPE=Debug" in line
    assert "-DGGML_RPC=ON" in line
    assert str(repo_root / "build" / "cpu-rpc-debug") in line
    assert line.endswith("-DGGML_NATIVE=OFF '-DFOO=a b'")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "--cuda-arch", "90", "--dry-run"], "--cuda-arch needs --cuda"),
        (["build", "--cuda", "--cuda-arch", "ninety", "--dry-run"], "bad CUDA architecture 'ninety'"),
    ],
)
def test_bad_build_options_exit_2_with_a_message(
    repo_root: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    proc = _cli(args, repo_root, _env(tmp_path))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_malformed_cmake_args_exit_2_without_a_traceback(repo_root: Path, tmp_path: Path) -> None:
    proc = _cli(["build", "--dry-run"], repo_root, _env(tmp_path, CMAKE_ARGS='-DFOO="unterminated'))
    assert proc.returncode == 2
    assert "CMAKE_ARGS" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the toolchain check ----------------------------------------------------------------------


@pytest.mark.parametrize("cuda", [False, True])
def test_check_exit_status_matches_the_toolchain_report(repo_root: Path, tmp_path: Path, cuda: bool) -> None:
    expected = toolchain.check_toolchain(cuda=cuda)
    proc = _cli(["check", *(["--cuda"] if cuda else [])], repo_root, _env(tmp_path))

    assert proc.returncode == (0 if expected.ok else 1), proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["Tool", "Status", "Version", "Path", "Note"]
    assert set(lines[1]) <= {"-", " "}
    kind = "CUDA" if cuda else "CPU"
    verdict = f"{kind} build can proceed." if expected.ok else f"{kind} build cannot proceed"
    assert lines[-1].startswith(verdict)
    for tool in expected.missing_required:
        assert f"  {tool.name}: {tool.fix}" in proc.stdout


# --- preflight --------------------------------------------------------------------------------


def _report(*, cublas: bool, cuda: bool) -> Report:
    def ok(name: str, required: bool = True) -> Tool:
        return Tool(name, True, "1.0", f"/usr/bin/{name}", required, f"install {name}")

    return Report(
        tools=(
            ok("Python"),
            ok("CMake"),
            ok("ninja", required=False),
            ok("C compiler"),
            ok("C++ compiler"),
            ok("nvcc", required=cuda),
            ok("CUDA toolkit", required=cuda),
            Tool(
                "cuBLAS",
                cublas,
                None,
                None,
                cuda,
                "apt-get install libcublas-dev-13-0",
                "" if cublas else "libcublas.so not found",
            ),
            Tool("GPU", False, None, None, False, "install the NVIDIA driver"),
        ),
        cuda_requested=cuda,
    )


def test_preflight_names_missing_cublas(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[bool] = []

    def fake_check(cuda: bool = False) -> Report:
        asked.append(cuda)
        return _report(cublas=False, cuda=cuda)

    monkeypatch.setattr(toolchain, "check_toolchain", fake_check)

    with pytest.raises(BuildError) as info:
        preflight(BuildOptions(cuda=True))
    assert asked == [True]
    message = str(info.value)
    assert "CUDA build" in message
    assert "cuBLAS: apt-get install libcublas-dev-13-0" in message
    assert "nvcc" not in message

    # A CPU build does not need cuBLAS.
    report = preflight(BuildOptions())
    assert asked == [True, False]
    assert report.ok


def test_preflight_passes_when_everything_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(toolchain, "check_toolchain", lambda cuda=False: _report(cublas=True, cuda=cuda))
    assert preflight(BuildOptions(cuda=True)).ok


def test_cuda_build_without_cublas_fails_in_seconds(repo_root: Path, tmp_path: Path) -> None:
    if toolchain.check_toolchain(cuda=True).tool("cuBLAS").found:
        pytest.skip("this machine has cuBLAS; the early-failure path cannot be shown here")
    path, marker = _fake_cmake_path(tmp_path)
    before = _snapshot(repo_root)

    started = time.monotonic()
    proc = _cli(["build", "--cuda"], repo_root, _env(tmp_path, PATH=path), timeout=10)
    elapsed = time.monotonic() - started

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: cannot start the CUDA build")
    assert "cuBLAS" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 10
    assert not marker.exists(), "cmake ran although the toolchain cannot do the build"
    assert not (tmp_path / "cache").exists()
    assert _snapshot(repo_root) == before


# --- the cached build directory ---------------------------------------------------------------


def _source(identity: str, path: Path) -> SourceInfo:
    return SourceInfo(path, "pinned", "0.5.0", "c" * 40, identity)


def _configured(build_dir: Path, identity: str, configure: list[str], generated: str = "build.ninja") -> None:
    build_dir.mkdir(parents=True)
    (build_dir / generated).write_text("# generated\n")
    (build_dir / "CMakeCache.txt").write_text("# cache\n")
    (build_dir / BUILD_STAMP).write_text(json.dumps({"source_identity": identity, "configure": configure}))


CONFIGURE = ["cmake", "-S", "/r", "-B", "/r/build/cpu", "-DGGML_CUDA=OFF"]


def test_prepare_build_dir_wipes_a_build_of_another_source(tmp_path: Path) -> None:
    build_dir = tmp_path / "build" / "cpu"
    _configured(build_dir, "pinned:old", CONFIGURE)

    assert _prepare_build_dir(build_dir, _source("pinned:new", tmp_path), CONFIGURE) is True
    assert not build_dir.exists()


@pytest.mark.parametrize("generated", ["build.ninja", "Makefile"])
def test_prepare_build_dir_reuses_an_identical_configuration(tmp_path: Path, generated: str) -> None:
    build_dir = tmp_path / "build" / "cpu"
    _configured(build_dir, "pinned:same", CONFIGURE, generated)

    assert _prepare_build_dir(build_dir, _source("pinned:same", tmp_path), CONFIGURE) is False
    assert (build_dir / "CMakeCache.txt").is_file()
    assert (build_dir / generated).is_file()


def test_prepare_build_dir_reconfigures_in_place_when_the_flags_change(tmp_path: Path) -> None:
    build_dir = tmp_path / "build" / "cpu"
    _configured(build_dir, "pinned:same", CONFIGURE)

    changed = [*CONFIGURE, "-DGGML_RPC=ON"]
    assert _prepare_build_dir(build_dir, _source("pinned:same", tmp_path), changed) is True
    assert (build_dir / "CMakeCache.txt").is_file(), "a flag change must not throw the build away"


def test_prepare_build_dir_configures_a_fresh_or_unfinished_dir(tmp_path: Path) -> None:
    source = _source("pinned:same", tmp_path)
    assert _prepare_build_dir(tmp_path / "absent", source, CONFIGURE) is True

    no_generator = tmp_path / "half"
    _configured(no_generator, "pinned:same", CONFIGURE)
    (no_generator / "build.ninja").unlink()
    assert _prepare_build_dir(no_generator, source, CONFIGURE) is True

    no_stamp = tmp_path / "nostamp"
    _configured(no_stamp, "pinned:same", CONFIGURE)
    (no_stamp / BUILD_STAMP).write_text("{broken")
    assert _prepare_build_dir(no_stamp, source, CONFIGURE) is True
    assert (no_stamp / "CMakeCache.txt").is_file()


def test_sync_lib_dir_removes_what_the_install_did_not_produce(tmp_path: Path) -> None:
    build_dir = tmp_path / "build" / "cpu"
    build_dir.mkdir(parents=True)
    lib_dir = tmp_path / "llambo" / "_lib"
    lib_dir.mkdir(parents=True)
    installed = ["libllama.so", "libggml.so", "libggml-base.so", "libggml-cpu.so", "BUILD_INFO.json"]
    for name in [*installed, "libggml-cuda.so"]:
        (lib_dir / name).write_bytes(b"\x7fELF")
    (lib_dir / "stale-dir").mkdir()
    (lib_dir / "stale-dir" / "x").write_text("x")
    (build_dir / "install_manifest_llambo.txt").write_text("\n".join(str(lib_dir / n) for n in installed))

    assert _sync_lib_dir(build_dir, lib_dir) == sorted(installed)
    assert sorted(p.name for p in lib_dir.iterdir()) == sorted(installed)


def test_build_configures_once_then_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole build() flow with CMake replaced by a recorder: configure, stamp, reuse, install, sync."""
    repo = tmp_path / "repo"
    lib_dir = repo / "llambo" / "_lib"
    lib_dir.mkdir(parents=True)
    (lib_dir / "libggml-cuda.so").write_bytes(b"old cuda build")
    source = _source("pinned:abc", tmp_path / "llama.cpp")
    commands: list[list[str]] = []

    def fake_run(cmd: list[str]) -> None:
        commands.append(cmd)
        build_dir = Path(cmd[cmd.index("-B") + 1]) if "-B" in cmd else Path(cmd[2])
        if "-S" in cmd:
            build_dir.mkdir(parents=True, exist_ok=True)
            (build_dir / "build.ninja").write_text("")
            (build_dir / "BUILD_INFO.json").write_text(json.dumps({"ggml_cuda": False}))
        elif cmd[1] == "--install":
            names = ["libllama.so", "libggml.so", "BUILD_INFO.json"]
            for name in names:
                (lib_dir / name).write_text(name)
            manifest = build_dir / "install_manifest_llambo.txt"
            manifest.write_text("\n".join(str(lib_dir / n) for n in names))

    monkeypatch.setattr(build_mod, "preflight", lambda opts: _report(cublas=False, cuda=False))
    monkeypatch.setattr(build_mod, "resolve_source", lambda explicit=None: source)
    monkeypatch.setattr(build_mod, "_run", fake_run)
    monkeypatch.setattr(build_mod, "_generator", lambda: "Ninja")

    first = build_mod.build(BuildOptions(jobs=2), repo_root=repo)
    assert first.configured is True
    assert [c[1] for c in commands] == ["-S", "--build", "--install"]
    assert commands[1][-2:] == ["--parallel", "2"]
    stamp = json.loads((repo / "build" / "cpu" / BUILD_STAMP).read_text())
    assert stamp == {"source_identity": "pinned:abc", "configure": commands[0]}
    assert sorted(p.name for p in lib_dir.iterdir()) == ["BUILD_INFO.json", "libggml.so", "libllama.so"]
    info = json.loads((lib_dir / "BUILD_INFO.json").read_text())
    assert info["installed_by"] == "build_tools"
    assert info["build_dir"] == str(repo / "build" / "cpu")

    commands.clear()
    second = build_mod.build(BuildOptions(jobs=2), repo_root=repo)
    assert second.configured is False
    assert [c[1] for c in commands] == ["--build", "--install"]


# --- clean ------------------------------------------------------------------------------------


def test_clean_removes_builds_and_libraries_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLAMBO_CACHE_DIR", str(cache))
    repo = tmp_path / "repo"
    for rel in (
        "build/cpu/build.ninja",
        "build/cuda/CMakeCache.txt",
        "llambo/_lib/libllama.so",
        "llambo/__init__.py",
        "third_party/llama.cpp/include/llama.h",
        "third_party/pin.json",
    ):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("x")
    (cache / "downloads").mkdir(parents=True)

    removed = clean(repo_root=repo)

    assert removed == [repo / "build", repo / "llambo" / "_lib"]
    assert not (repo / "build").exists()
    assert not (repo / "llambo" / "_lib").exists()
    assert (repo / "llambo" / "__init__.py").is_file()
    assert (repo / "third_party" / "llama.cpp" / "include" / "llama.h").is_file()
    assert (cache / "downloads").is_dir()
    assert clean(repo_root=repo) == []

    removed_all = clean(everything=True, repo_root=repo)
    assert removed_all == [repo / "third_party" / "llama.cpp", cache]
    assert not cache.exists()
    assert (repo / "third_party" / "pin.json").is_file()


def test_gpu_check_runs_test_files_that_exist() -> None:
    from build_tools.gpu_check import gpu_check_tests

    files = gpu_check_tests()
    assert files and all(path.is_file() for path in files), files
