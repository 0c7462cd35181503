"""Build options and the CMake command lines they compose to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from build_tools.cmake_flags import (
    DEFAULT_CUDA_ARCHITECTURES,
    BuildOptions,
    OptionError,
    build_command,
    cmake_args_from_env,
    configure_command,
    install_command,
    parse_cuda_arch,
    resolve_cuda_arch,
    shell_join,
)

ROOT = Path("/src/llambo")
BUILD = ROOT / "build" / "x"


def _defines(cmd: list[str]) -> dict[str, str]:
    """-DNAME=VALUE entries of a command as a dict (the last one wins, as in CMake)."""
    out: dict[str, str] = {}
    for part in cmd:
        if part.startswith("-D"):
            name, _, value = part[2:].partition("=")
            out[name] = value
    return out


# --- --cuda-arch parsing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90", ("90",)),
        ("8.6, 9.0", ("86", "90")),
        ("8.6,9.0", ("86", "90")),
        ("80;90-real", ("80", "90-real")),
        ("80 86  90", ("80", "86", "90")),
        ("native", ("native",)),
        ("all-major", ("all-major",)),
        ("90a", ("90a",)),
        ("120-virtual", ("120-virtual",)),
        ("90,9.0,90", ("90",)),
        ("86, 80, 8.6", ("86", "80")),
        (" 75 ", ("75",)),
    ],
)
def test_parse_cuda_arch(text: str, expected: tuple[str, ...]) -> None:
    assert parse_cuda_arch(text) == expected


@pytest.mark.parametrize("text", ["ninety", "9", "sm_90", "90-fake", "9.0.1", "compute_90", "90,ninety"])
def test_parse_cuda_arch_rejects_malformed_entries(text: str) -> None:
    with pytest.raises(OptionError, match="bad CUDA architecture"):
        parse_cuda_arch(text)


@pytest.mark.parametrize("text", ["", "   ", ",", " ; , "])
def test_parse_cuda_arch_needs_at_least_one_entry(text: str) -> None:
    with pytest.raises(OptionError, match="at least one"):
        parse_cuda_arch(text)


def test_option_error_is_a_value_error() -> None:
    assert issubclass(OptionError, ValueError)


def test_resolve_cuda_arch_order_of_precedence() -> None:
    assert resolve_cuda_arch(("80",), ["90"]) == ("80",)
    assert resolve_cuda_arch((), ["90", "89", "90"]) == ("90", "89")
    assert resolve_cuda_arch((), []) == DEFAULT_CUDA_ARCHITECTURES
    assert "90" in DEFAULT_CUDA_ARCHITECTURES
    assert all(int(a) >= 75 for a in DEFAULT_CUDA_ARCHITECTURES)


# --- options and the configure command ---------------------------------------------------------


@pytest.mark.parametrize(
    ("opts", "variant"),
    [
        (BuildOptions(), "cpu"),
        (BuildOptions(cuda=True), "cuda"),
        (BuildOptions(rpc=True, debug=True), "cpu-rpc-debug"),
        (BuildOptions(cuda=True, debug=True), "cuda-debug"),
        (BuildOptions(cuda=True, cuda_arch=("90",), jobs=3, dry_run=True), "cuda"),
    ],
)
def test_variant_names(opts: BuildOptions, variant: str) -> None:
    assert opts.variant == variant


def test_configure_command_for_cuda() -> None:
    cmd = configure_command(
        BuildOptions(cuda=True, cuda_arch=("90",)), repo_root=ROOT, build_dir=BUILD, cuda_arch=("90",)
    )
    assert cmd[:5] == ["cmake", "-S", str(ROOT), "-B", str(BUILD)]
    assert "-DGGML_CUDA=ON" in cmd
    assert "-DCMAKE_CUDA_ARCHITECTURES=90" in cmd
    assert "-DGGML_CUDA=OFF" not in cmd
    defines = _defines(cmd)
    assert defines["CMAKE_BUILD_TYPE"] == "Release"
    assert defines["GGML_RPC"] == "OFF"
    assert defines["LLAMBO_LLAMA_CPP_DIR"] == ""


def test_configure_command_joins_several_architectures() -> None:
    cmd = configure_command(
        BuildOptions(cuda=True), repo_root=ROOT, build_dir=BUILD, cuda_arch=("80", "90-real")
    )
    assert _defines(cmd)["CMAKE_CUDA_ARCHITECTURES"] == "80;90-real"
    assert "'-DCMAKE_CUDA_ARCHITECTURES=80;90-real'" in shell_join(cmd)


def test_configure_command_for_cuda_without_arch_leaves_the_choice_to_cmake() -> None:
    cmd = configure_command(BuildOptions(cuda=True), repo_root=ROOT, build_dir=BUILD)
    assert "-DGGML_CUDA=ON" in cmd
    assert "CMAKE_CUDA_ARCHITECTURES" not in _defines(cmd)


def test_configure_command_for_cpu_ignores_cuda_arch() -> None:
    cmd = configure_command(BuildOptions(), repo_root=ROOT, build_dir=BUILD, cuda_arch=("90",))
    assert "-DGGML_CUDA=OFF" in cmd
    assert "-DGGML_CUDA=ON" not in cmd
    assert "CMAKE_CUDA_ARCHITECTURES" not in _defines(cmd)


def test_configure_command_debug_rpc_and_source(tmp_path: Path) -> None:
    cmd = configure_command(
        BuildOptions(debug=True, rpc=True, source=tmp_path / "sub" / ".." / "llama.cpp"),
        repo_root=ROOT,
        build_dir=BUILD,
    )
    assert "-DCMAKE_BUILD_TYPE=Debug" in cmd
    assert "-DGGML_RPC=ON" in cmd
    assert _defines(cmd)["LLAMBO_LLAMA_CPP_DIR"] == str((tmp_path / "llama.cpp").resolve())


def test_configure_command_generator() -> None:
    ninja = configure_command(BuildOptions(), repo_root=ROOT, build_dir=BUILD, generator="Ninja")
    i = ninja.index("-G")
    assert ninja[i + 1] == "Ninja"
    plain = configure_command(BuildOptions(), repo_root=ROOT, build_dir=BUILD, generator=None)
    assert "-G" not in plain
    assert ninja[:i] + ninja[i + 2 :] == plain


def test_configure_command_appends_extra_args_last() -> None:
    extra = ("-DGGML_CUDA=OFF", "-DFOO=a b")
    cmd = configure_command(
        BuildOptions(cuda=True, extra_cmake_args=extra),
        repo_root=ROOT,
        build_dir=BUILD,
        cuda_arch=("90",),
        cmake="/opt/cmake/bin/cmake",
    )
    assert cmd[0] == "/opt/cmake/bin/cmake"
    assert tuple(cmd[-2:]) == extra
    assert _defines(cmd)["GGML_CUDA"] == "OFF"  # the user's CMAKE_ARGS override ours


# --- CMAKE_ARGS -------------------------------------------------------------------------------


def test_cmake_args_from_env_splits_like_a_shell() -> None:
    env = {"CMAKE_ARGS": "-DGGML_CUDA=on \"-DFOO=a b\"  -DBAR='x;y'"}
    assert cmake_args_from_env(env) == ("-DGGML_CUDA=on", "-DFOO=a b", "-DBAR=x;y")
    assert cmake_args_from_env({}) == ()
    assert cmake_args_from_env({"CMAKE_ARGS": "   "}) == ()


def test_cmake_args_from_env_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMAKE_ARGS", "-DX=1")
    assert cmake_args_from_env() == ("-DX=1",)
    monkeypatch.delenv("CMAKE_ARGS")
    assert cmake_args_from_env() == ()


def test_cmake_args_from_env_reports_bad_quoting_as_an_option_error() -> None:
    with pytest.raises(OptionError, match="CMAKE_ARGS"):
        cmake_args_from_env({"CMAKE_ARGS": '-DFOO="unterminated'})


# --- build and install ------------------------------------------------------------------------


def test_build_command_uses_the_given_jobs() -> None:
    assert build_command(BUILD, 3) == ["cmake", "--build", str(BUILD), "--parallel", "3"]


def test_build_command_defaults_to_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert build_command(BUILD, None)[-2:] == ["--parallel", "7"]
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert build_command(BUILD, None)[-2:] == ["--parallel", "1"]


def test_install_command_installs_only_the_llambo_component() -> None:
    cmd = install_command(BUILD, ROOT)
    assert cmd == ["cmake", "--install", str(BUILD), "--component", "llambo", "--prefix", str(ROOT)]


def test_shell_join_quotes_what_needs_it() -> None:
    assert shell_join(["cmake", "-DFOO=a b", "-DX=1"]) == "cmake '-DFOO=a b' -DX=1"
