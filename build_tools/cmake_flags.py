"""Build options and the CMake command lines they compose to (pure functions, unit-tested)."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

# Used when --cuda is given without --cuda-arch and no GPU is visible: Turing through Blackwell
# consumer parts (CUDA 13 no longer targets anything older than 7.5).
DEFAULT_CUDA_ARCHITECTURES = ("75", "80", "86", "89", "90", "120")

_ARCH_RE = re.compile(r"^(\d{2,3}[af]?(-real|-virtual)?|native|all|all-major)$")


class OptionError(ValueError):
    """A build option is malformed."""


@dataclass(frozen=True)
class BuildOptions:
    """What the user asked of a build (the flags after ``nox -s build --``)."""

    cuda: bool = False
    cuda_arch: tuple[str, ...] = ()
    jobs: int | None = None
    debug: bool = False
    rpc: bool = False
    source: Path | None = None
    dry_run: bool = False
    extra_cmake_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def variant(self) -> str:
        """Name of the cached build directory for these options (build/<variant>)."""
        parts = ["cuda" if self.cuda else "cpu"]
        if self.rpc:
            parts.append("rpc")
        if self.debug:
            parts.append("debug")
        return "-".join(parts)


def parse_cuda_arch(text: str) -> tuple[str, ...]:
    """Turn "90", "8.6,9.0" or "80;90-real" into CMake architecture entries ("86", "90")."""
    archs: list[str] = []
    for raw in re.split(r"[,;\s]+", text.strip()):
        if not raw:
            continue
        item = raw.replace(".", "") if re.fullmatch(r"\d+\.\d+", raw) else raw
        if not _ARCH_RE.match(item):
            raise OptionError(
                f"bad CUDA architecture {raw!r}: use compute capabilities like 90 or 8.6, "
                "optionally with -real/-virtual, or native/all/all-major"
            )
        if item not in archs:
            archs.append(item)
    if not archs:
        raise OptionError("--cuda-arch needs at least one architecture, e.g. --cuda-arch 90")
    return tuple(archs)


def resolve_cuda_arch(requested: tuple[str, ...], visible_gpus: list[str]) -> tuple[str, ...]:
    """The architectures to compile: as requested, else the visible GPUs', else the default list."""
    if requested:
        return requested
    if visible_gpus:
        return tuple(dict.fromkeys(visible_gpus))
    return DEFAULT_CUDA_ARCHITECTURES


def cmake_args_from_env(env: dict[str, str] | None = None) -> tuple[str, ...]:
    """The ``CMAKE_ARGS`` environment variable, split as a shell would."""
    value = (env if env is not None else dict(os.environ)).get("CMAKE_ARGS", "")
    try:
        return tuple(shlex.split(value))
    except ValueError as exc:
        raise OptionError(f"CMAKE_ARGS is not valid shell syntax ({exc}): {value!r}") from exc


def configure_command(
    opts: BuildOptions,
    *,
    repo_root: Path,
    build_dir: Path,
    cuda_arch: tuple[str, ...] = (),
    generator: str | None = "Ninja",
    cmake: str = "cmake",
) -> list[str]:
    """The ``cmake`` configure command for ``opts`` (source resolution happens inside CMake)."""
    cmd = [cmake, "-S", str(repo_root), "-B", str(build_dir)]
    if generator:
        cmd += ["-G", generator]
    cmd.append(f"-DCMAKE_BUILD_TYPE={'Debug' if opts.debug else 'Release'}")
    cmd.append(f"-DLLAMBO_LLAMA_CPP_DIR={opts.source.expanduser().resolve() if opts.source else ''}")
    if opts.cuda:
        cmd.append("-DGGML_CUDA=ON")
        if cuda_arch:
            cmd.append(f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(cuda_arch)}")
    else:
        cmd.append("-DGGML_CUDA=OFF")
    cmd.append(f"-DGGML_RPC={'ON' if opts.rpc else 'OFF'}")
    cmd += list(opts.extra_cmake_args)
    return cmd


def build_command(build_dir: Path, jobs: int | None, cmake: str = "cmake") -> list[str]:
    """The ``cmake --build`` command (jobs default to every core)."""
    return [cmake, "--build", str(build_dir), "--parallel", str(jobs or os.cpu_count() or 1)]


def install_command(build_dir: Path, prefix: Path, cmake: str = "cmake") -> list[str]:
    """Install only the ``llambo`` component (the libraries and BUILD_INFO.json) under ``prefix``."""
    return [cmake, "--install", str(build_dir), "--component", "llambo", "--prefix", str(prefix)]


def shell_join(cmd: list[str]) -> str:
    """A command as one copy-pasteable shell line."""
    return " ".join(shlex.quote(part) for part in cmd)
