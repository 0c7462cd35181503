"""Toolchain checks driven by fake `which`/`run` and toolkit trees, plus a real-machine consistency check."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from build_tools import toolchain as tc
from build_tools.toolchain import (
    Report,
    check_toolchain,
    cuda_toolkit_root,
    find_cublas,
    gpu_compute_capabilities,
    nvcc_version,
    render_table,
)

TOOL_NAMES = [
    "Python",
    "CMake",
    "ninja",
    "C compiler",
    "C++ compiler",
    "nvcc",
    "CUDA toolkit",
    "cuBLAS",
    "GPU",
]
CUDA_ONLY = {"nvcc", "CUDA toolkit", "cuBLAS"}

NVCC_BANNER = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2025 NVIDIA Corporation
Built on Wed_Aug_20_01:58:59_PM_PDT_2025
Cuda compilation tools, release 13.0, V13.0.88
Build cuda_13.0.r13.0/compiler.36424714_0
"""
GCC_BANNER = "gcc (Debian 12.2.0-14+deb12u1) 12.2.0\nCopyright (C) 2022 Free Software Foundation, Inc.\n"
GXX_BANNER = "g++ (Debian 12.2.0-14+deb12u1) 12.2.0\nCopyright (C) 2022 Free Software Foundation, Inc.\n"

# Version (or query) output of every program on a fully equipped fake machine.
FULL_MACHINE: dict[str, str] = {
    "cmake": "cmake version 3.25.1\n\nCMake suite maintained and supported by Kitware (kitware.com/cmake).\n",
    "ninja": "1.11.1\n",
    "make": "GNU Make 4.3\n",
    "cc": GCC_BANNER,
    "gcc": GCC_BANNER,
    "c++": GXX_BANNER,
    "g++": GXX_BANNER,
    "nvcc": NVCC_BANNER,
    "nvidia-smi": "NVIDIA H200, 9.0\n",
}


class FakeMachine:
    """A PATH of named programs with canned outputs; records every command it is asked to run."""

    def __init__(self, programs: dict[str, str], bin_dir: str = "/fake/bin") -> None:
        self.programs = dict(programs)
        self.bin_dir = bin_dir
        self.calls: list[list[str]] = []

    def which(self, name: str) -> str | None:
        """shutil.which over the fake PATH (absolute paths are checked on the real disk)."""
        if os.path.isabs(name):
            return name if os.path.isfile(name) else None
        return f"{self.bin_dir}/{name}" if name in self.programs else None

    def run(self, cmd: Sequence[str]) -> str | None:
        """Canned output keyed by the program's base name; None for anything unknown."""
        self.calls.append(list(cmd))
        return self.programs.get(os.path.basename(cmd[0]))


def make_toolkit(root: Path, *, version: str = "13.0.2", lib: bool = True, header: bool = True) -> Path:
    """A minimal CUDA toolkit tree: bin/nvcc, runtime header, version.json, optionally cuBLAS."""
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\n", encoding="utf-8")
    nvcc.chmod(0o755)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("/* runtime */\n", encoding="utf-8")
    (root / "version.json").write_text(json.dumps({"cuda": {"version": version}}), encoding="utf-8")
    (root / "lib64").mkdir()
    (root / "lib64" / "libcudart.so").write_bytes(b"")
    (root / "lib64" / "libcublasLt.so").write_bytes(b"")  # must not be mistaken for cuBLAS
    if lib:
        (root / "lib64" / "libcublas.so.13.0.2.14").write_bytes(b"\x7fELF")
        (root / "lib64" / "libcublas.so.13").symlink_to("libcublas.so.13.0.2.14")
        (root / "lib64" / "libcublas.so").symlink_to("libcublas.so.13")
    if header:
        (root / "include" / "cublas_v2.h").write_text("/* cublas */\n", encoding="utf-8")
    return root


def _check(
    machine: FakeMachine,
    tmp_path: Path,
    *,
    cuda: bool,
    environ: dict[str, str] | None = None,
) -> Report:
    """check_toolchain isolated from this machine: fake PATH, empty /usr/local and no system headers."""
    empty_local = tmp_path / "empty-local"
    empty_local.mkdir(exist_ok=True)
    return check_toolchain(
        cuda,
        which=machine.which,
        run=machine.run,
        environ=environ if environ is not None else {},
        local_dir=empty_local,
        include_dirs=(),
        python_version=(3, 11, 7),
    )


def test_everything_present_cuda_build_is_ok(tmp_path: Path) -> None:
    toolkit = make_toolkit(tmp_path / "cuda-13.0")
    report = _check(FakeMachine(FULL_MACHINE), tmp_path, cuda=True, environ={"CUDA_HOME": str(toolkit)})

    assert [t.name for t in report.tools] == TOOL_NAMES
    assert report.ok
    assert report.missing_required == []
    assert all(t.found for t in report.tools), [t for t in report.tools if not t.found]
    assert all(t.required for t in report.tools if t.name in CUDA_ONLY)
    assert not report.tool("GPU").required
    assert report.tool("CMake").version == "3.25.1"
    assert report.tool("ninja").version == "1.11.1"
    assert report.tool("C compiler").version == "12.2.0"
    assert report.tool("C compiler").path == "/fake/bin/cc"
    assert report.tool("C++ compiler").path == "/fake/bin/c++"
    assert report.tool("nvcc").version == "13.0.88"
    assert report.tool("CUDA toolkit").path == str(toolkit)
    assert report.tool("CUDA toolkit").version == "13.0.2"
    assert report.tool("cuBLAS").path == str(toolkit / "lib64" / "libcublas.so")
    assert report.tool("cuBLAS").version == "13.0.2.14"
    assert report.tool("GPU").version == "NVIDIA H200, compute 9.0"
    assert report.tool("GPU").path == "/fake/bin/nvidia-smi"
    assert render_table(report).splitlines()[-1] == "CUDA build can proceed."


def test_every_probe_command_goes_through_run(tmp_path: Path) -> None:
    machine = FakeMachine(FULL_MACHINE)
    _check(machine, tmp_path, cuda=False)
    ran = {os.path.basename(c[0]) for c in machine.calls}
    assert {"cmake", "ninja", "cc", "c++", "nvcc", "nvidia-smi"} <= ran
    assert ["/fake/bin/nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"] in machine.calls


def test_cmake_missing_is_not_ok_and_says_how_to_install(tmp_path: Path) -> None:
    programs = {k: v for k, v in FULL_MACHINE.items() if k != "cmake"}
    report = _check(FakeMachine(programs), tmp_path, cuda=False)

    assert not report.ok
    assert [t.name for t in report.missing_required] == ["CMake"]
    cmake = report.tool("CMake")
    assert cmake.status == "MISSING"
    assert "apt-get install cmake" in cmake.fix
    assert "pip install cmake" in cmake.fix
    table = render_table(report)
    assert f"CMake: {cmake.fix}" in table
    assert table.splitlines()[-1] == "CPU build cannot proceed: missing CMake."


def test_cmake_too_old_counts_as_missing(tmp_path: Path) -> None:
    programs = dict(FULL_MACHINE, cmake="cmake version 3.16.3\n")
    report = _check(FakeMachine(programs), tmp_path, cuda=False)

    cmake = report.tool("CMake")
    assert not cmake.found
    assert cmake.version == "3.16.3"
    assert cmake.path == "/fake/bin/cmake"
    assert "cmake>=3.21" in cmake.fix
    assert "3.16.3" in cmake.detail
    assert not report.ok
    assert report.missing_required == [cmake]


def test_cmake_exactly_minimum_is_enough(tmp_path: Path) -> None:
    programs = dict(FULL_MACHINE, cmake="cmake version 3.21.0-rc2\n")
    report = _check(FakeMachine(programs), tmp_path, cuda=False)
    assert report.tool("CMake").found
    assert report.tool("CMake").version == "3.21.0"
    assert report.ok


def test_cmake_that_cannot_report_its_version_is_missing(tmp_path: Path) -> None:
    machine = FakeMachine(FULL_MACHINE)
    real_run = machine.run

    def run(cmd: Sequence[str]) -> str | None:
        return None if os.path.basename(cmd[0]) == "cmake" else real_run(cmd)

    report = check_toolchain(
        False, which=machine.which, run=run, environ={}, local_dir=tmp_path, include_dirs=()
    )
    assert not report.tool("CMake").found
    assert not report.ok


def test_cuda_requested_without_cublas_names_cublas(tmp_path: Path) -> None:
    toolkit = make_toolkit(tmp_path / "cuda-13.0", version="13.0.2", lib=False, header=False)
    report = _check(FakeMachine(FULL_MACHINE), tmp_path, cuda=True, environ={"CUDA_HOME": str(toolkit)})

    assert not report.ok
    assert [t.name for t in report.missing_required] == ["cuBLAS"]
    cublas = report.tool("cuBLAS")
    assert "libcublas-dev-13-0" in cublas.fix
    assert "conda install -c nvidia libcublas-dev" in cublas.fix
    assert "libcublas.so" in cublas.detail
    assert "cublas_v2.h" in cublas.detail
    table = render_table(report)
    assert "Fixes:" in table
    assert f"cuBLAS: {cublas.fix}" in table
    assert table.splitlines()[-1] == "CUDA build cannot proceed: missing cuBLAS."


def test_cuda_requested_without_any_toolkit(tmp_path: Path) -> None:
    programs = {k: v for k, v in FULL_MACHINE.items() if k != "nvcc"}
    report = _check(FakeMachine(programs), tmp_path, cuda=True)
    assert [t.name for t in report.missing_required] == ["nvcc", "CUDA toolkit", "cuBLAS"]
    assert "libcublas-dev-<major>-<minor>" in report.tool("cuBLAS").fix


def test_cuda_not_requested_missing_nvcc_is_fine(tmp_path: Path) -> None:
    programs = {k: v for k, v in FULL_MACHINE.items() if k not in {"nvcc", "nvidia-smi"}}
    report = _check(FakeMachine(programs), tmp_path, cuda=False)

    assert report.ok
    for name in ("nvcc", "CUDA toolkit", "cuBLAS", "GPU"):
        tool = report.tool(name)
        assert not tool.found
        assert not tool.required
        assert tool.status == "optional missing"
    table = render_table(report)
    assert "Fixes:" not in table
    assert table.splitlines()[-1] == "CPU build can proceed."


def test_gpu_is_never_required(tmp_path: Path) -> None:
    toolkit = make_toolkit(tmp_path / "cuda")
    programs = {k: v for k, v in FULL_MACHINE.items() if k != "nvidia-smi"}
    report = _check(FakeMachine(programs), tmp_path, cuda=True, environ={"CUDA_HOME": str(toolkit)})
    assert report.ok
    assert not report.tool("GPU").found
    assert "GPU" in render_table(report)


def test_several_gpus_are_summarised(tmp_path: Path) -> None:
    programs = dict(FULL_MACHINE, **{"nvidia-smi": "NVIDIA H200, 9.0\nNVIDIA H200, 9.0\nNVIDIA L4, 8.9\n"})
    report = _check(FakeMachine(programs), tmp_path, cuda=False)
    assert report.tool("GPU").version == "2x NVIDIA H200, compute 9.0; NVIDIA L4, compute 8.9"


def test_ninja_missing_is_optional_when_make_exists(tmp_path: Path) -> None:
    programs = {k: v for k, v in FULL_MACHINE.items() if k != "ninja"}
    report = _check(FakeMachine(programs), tmp_path, cuda=False)
    ninja = report.tool("ninja")
    assert not ninja.found
    assert not ninja.required
    assert ninja.fix == "pip install ninja"
    assert report.ok
    assert "ninja: pip install ninja" in render_table(report)


def test_ninja_required_when_there_is_no_make_either(tmp_path: Path) -> None:
    programs = {k: v for k, v in FULL_MACHINE.items() if k not in {"ninja", "make"}}
    report = _check(FakeMachine(programs), tmp_path, cuda=False)
    assert [t.name for t in report.missing_required] == ["ninja"]


def test_compilers_fall_back_along_path(tmp_path: Path) -> None:
    clang = "Debian clang version 14.0.6\nTarget: x86_64-pc-linux-gnu\n"
    programs = {k: v for k, v in FULL_MACHINE.items() if k not in {"cc", "gcc", "c++", "g++"}}
    programs.update({"clang": clang, "clang++": clang})
    report = _check(FakeMachine(programs), tmp_path, cuda=False)
    assert report.tool("C compiler").path == "/fake/bin/clang"
    assert report.tool("C++ compiler").path == "/fake/bin/clang++"
    assert report.tool("C compiler").version == "14.0.6"
    assert report.ok


def test_no_compilers_is_not_ok(tmp_path: Path) -> None:
    programs = {k: v for k, v in FULL_MACHINE.items() if k not in {"cc", "gcc", "c++", "g++"}}
    report = _check(FakeMachine(programs), tmp_path, cuda=False)
    assert [t.name for t in report.missing_required] == ["C compiler", "C++ compiler"]
    assert "apt-get install gcc" in report.tool("C compiler").fix
    assert "apt-get install g++" in report.tool("C++ compiler").fix


def test_cc_env_wins_and_a_bad_one_is_reported(tmp_path: Path) -> None:
    programs = dict(FULL_MACHINE, **{"gcc-12": GCC_BANNER})
    report = _check(FakeMachine(programs), tmp_path, cuda=False, environ={"CC": "gcc-12 -m64"})
    assert report.tool("C compiler").path == "/fake/bin/gcc-12"
    assert "CC" in report.tool("C compiler").detail

    report = _check(FakeMachine(FULL_MACHINE), tmp_path, cuda=False, environ={"CXX": "no-such-c++"})
    cxx = report.tool("C++ compiler")
    assert not cxx.found
    assert "no-such-c++" in cxx.detail
    assert "CXX" in cxx.fix
    assert not report.ok


def test_python_too_old(tmp_path: Path) -> None:
    machine = FakeMachine(FULL_MACHINE)
    report = check_toolchain(
        False,
        which=machine.which,
        run=machine.run,
        environ={},
        local_dir=tmp_path,
        include_dirs=(),
        python_version=(3, 9, 18),
    )
    python = report.tool("Python")
    assert not python.found
    assert python.version == "3.9.18"
    assert [t.name for t in report.missing_required] == ["Python"]


def test_gpu_query_parsing() -> None:
    def smi(output: str | None) -> tc.Runner:
        def run(cmd: Sequence[str]) -> str | None:
            assert cmd == ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"]
            return output

        return run

    assert gpu_compute_capabilities(run=smi("NVIDIA H200, 9.0\n")) == ["90"]
    assert gpu_compute_capabilities(run=smi("NVIDIA H200, 9.0\nNVIDIA H200, 9.0\nNVIDIA L4, 8.9\n")) == [
        "90",
        "89",
    ]
    assert gpu_compute_capabilities(run=smi("No devices were found\n")) == []
    assert gpu_compute_capabilities(run=smi("")) == []
    assert gpu_compute_capabilities(run=smi(None)) == []


def test_gpu_query_never_raises() -> None:
    def boom(cmd: Sequence[str]) -> str | None:
        raise OSError("nvidia-smi exploded")

    assert gpu_compute_capabilities(run=boom) == []


def test_nvcc_version_parsing() -> None:
    assert nvcc_version("nvcc", run=lambda cmd: NVCC_BANNER) == "13.0.88"
    assert nvcc_version("nvcc", run=lambda cmd: "Cuda compilation tools, release 12.2\n") == "12.2"
    assert nvcc_version("nvcc", run=lambda cmd: None) is None
    assert nvcc_version("nvcc", run=lambda cmd: "garbage") is None


def test_find_cublas_with_and_without_header(tmp_path: Path) -> None:
    no_ldconfig: tc.Runner = lambda cmd: None  # noqa: E731

    full = make_toolkit(tmp_path / "full")
    assert find_cublas(full, run=no_ldconfig, include_dirs=()) == full / "lib64" / "libcublas.so"

    headerless = make_toolkit(tmp_path / "headerless", header=False)
    assert find_cublas(headerless, run=no_ldconfig, include_dirs=()) is None

    libless = make_toolkit(tmp_path / "libless", lib=False)
    assert find_cublas(libless, run=no_ldconfig, include_dirs=()) is None


def test_find_cublas_in_targets_layout(tmp_path: Path) -> None:
    root = tmp_path / "conda"
    lib = root / "targets" / "x86_64-linux" / "lib"
    inc = root / "targets" / "x86_64-linux" / "include"
    lib.mkdir(parents=True)
    inc.mkdir(parents=True)
    (lib / "libcublas.so.12").write_bytes(b"")
    (inc / "cublas_v2.h").write_text("", encoding="utf-8")
    assert find_cublas(root, run=lambda cmd: None, include_dirs=()) == lib / "libcublas.so.12"


def test_find_cublas_from_linker_cache(tmp_path: Path) -> None:
    system_lib = tmp_path / "usr" / "lib" / "x86_64-linux-gnu"
    system_inc = tmp_path / "usr" / "include"
    system_lib.mkdir(parents=True)
    system_inc.mkdir(parents=True)
    (system_lib / "libcublas.so").write_bytes(b"")
    (system_inc / "cublas_v2.h").write_text("", encoding="utf-8")
    ldconfig = (
        "1234 libs found in cache `/etc/ld.so.cache'\n"
        f"\tlibcublasLt.so.12 (libc6,x86-64) => {system_lib}/libcublasLt.so.12\n"
        f"\tlibcublas.so (libc6,x86-64) => {system_lib}/libcublas.so\n"
    )

    def run(cmd: Sequence[str]) -> str | None:
        return ldconfig if os.path.basename(cmd[0]) == "ldconfig" and cmd[1:] == ["-p"] else None

    toolkit = make_toolkit(tmp_path / "cuda", lib=False, header=False)
    assert find_cublas(toolkit, run=run, include_dirs=(system_inc,)) == system_lib / "libcublas.so"
    assert find_cublas(toolkit, run=run, include_dirs=()) is None


def test_cuda_toolkit_root_prefers_env(tmp_path: Path) -> None:
    home = make_toolkit(tmp_path / "home-cuda")
    local = tmp_path / "local"
    make_toolkit(local / "cuda-13.0")
    machine = FakeMachine({})
    assert cuda_toolkit_root(which=machine.which, environ={"CUDA_HOME": str(home)}, local_dir=local) == home
    assert cuda_toolkit_root(which=machine.which, environ={"CUDA_PATH": str(home)}, local_dir=local) == home
    assert (
        cuda_toolkit_root(which=machine.which, environ={"CUDAToolkit_ROOT": str(home)}, local_dir=local)
        == home
    )
    # A setting that is not a toolkit is skipped, not trusted.
    bogus = {"CUDA_HOME": str(tmp_path / "nowhere")}
    assert cuda_toolkit_root(which=machine.which, environ=bogus, local_dir=local) == local / "cuda-13.0"


def test_cuda_toolkit_root_skips_wrapper_prefix_and_picks_newest(tmp_path: Path) -> None:
    local = tmp_path / "local"
    wrapper = local / "bin" / "nvcc"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text('#!/bin/sh\nexec /opt/cuda-13.0/bin/nvcc "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    for version in ("11.8", "12.2", "13.0", "12.10"):
        make_toolkit(local / f"cuda-{version}")

    def which(name: str) -> str | None:
        return str(wrapper) if name == "nvcc" else None

    # local/bin/nvcc exists but local/ is no toolkit; the newest versioned dir wins.
    assert cuda_toolkit_root(which=which, environ={}, local_dir=local) == local / "cuda-13.0"
    # /usr/local/cuda (usually a link to the default toolkit) beats the versioned dirs.
    (local / "cuda").symlink_to(local / "cuda-12.2")
    assert cuda_toolkit_root(which=which, environ={}, local_dir=local) == local / "cuda"


def test_cuda_toolkit_root_from_real_nvcc_location(tmp_path: Path) -> None:
    toolkit = make_toolkit(tmp_path / "opt" / "cuda")
    link = tmp_path / "bin" / "nvcc"
    link.parent.mkdir()
    link.symlink_to(toolkit / "bin" / "nvcc")
    found = cuda_toolkit_root(
        which=lambda name: str(link) if name == "nvcc" else None, environ={}, local_dir=tmp_path / "none"
    )
    assert found == toolkit


def test_cuda_toolkit_root_none(tmp_path: Path) -> None:
    assert cuda_toolkit_root(which=lambda name: None, environ={}, local_dir=tmp_path) is None


def test_render_table_lists_every_tool_and_the_fixes(tmp_path: Path) -> None:
    programs = {k: v for k, v in FULL_MACHINE.items() if k not in {"cmake", "ninja", "nvcc", "nvidia-smi"}}
    report = _check(FakeMachine(programs), tmp_path, cuda=True)
    table = render_table(report)
    lines = table.splitlines()

    for name in TOOL_NAMES:
        assert any(line.startswith(name + " ") for line in lines), name
    for tool in report.missing_required:
        assert f"  {tool.name}: {tool.fix}" in lines
    assert {t.name for t in report.missing_required} == {"CMake", "nvcc", "CUDA toolkit", "cuBLAS"}
    assert "MISSING" in table
    assert "optional missing" in table
    assert lines[-1] == "CUDA build cannot proceed: missing CMake, nvcc, CUDA toolkit, cuBLAS."

    # Columns are aligned: every status and version cell starts where its header does.
    header = lines[0]
    status_col, version_col = header.index("Status"), header.index("Version")
    rows = lines[2 : 2 + len(TOOL_NAMES)]
    for tool, row in zip(report.tools, rows, strict=True):
        assert row[status_col:].startswith(tool.status + " ")
        assert row[version_col:].startswith((tool.version or "-") + " ")


def test_run_helper_never_raises() -> None:
    assert tc._run([sys.executable, "-c", "print('hello')"]) == "hello\n"
    assert tc._run([sys.executable, "-c", "raise SystemExit(3)"]) is None
    assert tc._run(["/nonexistent/definitely-not-a-program"]) is None
    assert tc._run([]) is None


def test_real_machine_report_is_consistent() -> None:
    """On whatever machine runs this: the verdict must follow from the individual probes."""
    report = check_toolchain(cuda=False)
    assert [t.name for t in report.tools] == TOOL_NAMES
    assert report.tool("Python").found  # this interpreter runs the tests, and it is >= 3.10
    assert not any(t.required for t in report.tools if t.name in CUDA_ONLY | {"GPU"})
    essentials = ("CMake", "C compiler", "C++ compiler")
    assert report.ok == (
        all(report.tool(n).found for n in ("Python", *essentials))
        and (report.tool("ninja").found or not report.tool("ninja").required)
    )
    if report.ok:
        assert shutil.which("cmake") is not None
        assert report.tool("C compiler").path and os.access(str(report.tool("C compiler").path), os.X_OK)
    for tool in report.tools:
        if tool.found:
            assert tool.path, tool
    last = render_table(report).splitlines()[-1]
    if report.ok:
        assert last == "CPU build can proceed."
    else:
        missing = ", ".join(t.name for t in report.missing_required)
        assert last == f"CPU build cannot proceed: missing {missing}."


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("gcc (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0", "11.4.0"),
        ("cc (GCC) 11.4.1 20230605 (Red Hat 11.4.1-2)", "11.4.1"),
        ("Apple clang version 15.0.0 (clang-1500.1.0.403)", "15.0.0"),
        ("no digits here", None),
    ],
)
def test_compiler_version_extraction(line: str, expected: str | None) -> None:
    assert tc._version_in(line) == expected
