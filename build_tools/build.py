"""Compile llama.cpp's shared libraries into a cached build directory and install them in llambo/_lib."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import toolchain
from .cmake_flags import (
    BuildOptions,
    build_command,
    configure_command,
    install_command,
    resolve_cuda_arch,
    shell_join,
)
from .source import REPO_ROOT, SourceInfo, resolve_source

LIB_DIR = REPO_ROOT / "llambo" / "_lib"
BUILD_ROOT = REPO_ROOT / "build"
BUILD_STAMP = "llambo-build.json"


class BuildError(Exception):
    """The build cannot start or failed; the message says what to fix."""


@dataclass(frozen=True)
class BuildResult:
    """Where the libraries went and how long each step took."""

    build_dir: Path
    lib_dir: Path
    configured: bool
    seconds: float
    build_info: dict[str, object]


def _say(message: str) -> None:
    print(f"[llambo] {message}", file=sys.stderr, flush=True)


def preflight(opts: BuildOptions) -> toolchain.Report:
    """Fail in the first seconds when the toolchain cannot do the requested build."""
    report = toolchain.check_toolchain(cuda=opts.cuda)
    missing = report.missing_required
    if missing:
        lines = [f"  - {tool.name}: {tool.fix}" for tool in missing]
        kind = "CUDA" if opts.cuda else "CPU"
        raise BuildError(f"cannot start the {kind} build, missing:\n" + "\n".join(lines))
    return report


def _generator() -> str | None:
    return "Ninja" if shutil.which("ninja") else None


def _cuda_arch(opts: BuildOptions) -> tuple[str, ...]:
    return resolve_cuda_arch(opts.cuda_arch, toolchain.gpu_compute_capabilities()) if opts.cuda else ()


def dry_run_command(opts: BuildOptions, repo_root: Path = REPO_ROOT) -> list[str]:
    """The configure command a build with ``opts`` would run (no fetch, no toolchain needed)."""
    return configure_command(
        opts,
        repo_root=repo_root,
        build_dir=repo_root / "build" / opts.variant,
        cuda_arch=_cuda_arch(opts),
        generator=_generator(),
    )


def _run(cmd: list[str]) -> None:
    _say("$ " + shell_join(cmd))
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        raise BuildError(f"command failed with exit code {proc.returncode}: {shell_join(cmd)}")


def _prepare_build_dir(build_dir: Path, source: SourceInfo, configure: list[str]) -> bool:
    """Wipe the build directory when its source changed; say whether CMake must (re)configure."""
    stamp_path = build_dir / BUILD_STAMP
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamp = None
    if stamp is not None and stamp.get("source_identity") != source.identity:
        _say(
            f"llama.cpp source changed ({stamp.get('source_identity')} -> {source.identity}): "
            f"clean rebuild in {build_dir}"
        )
        shutil.rmtree(build_dir)
        stamp = None
    generated = (build_dir / "build.ninja").exists() or (build_dir / "Makefile").exists()
    return not (generated and stamp is not None and stamp.get("configure") == configure)


def _sync_lib_dir(build_dir: Path, lib_dir: Path) -> list[str]:
    """Remove files in lib_dir that this install did not produce (e.g. a CUDA lib after a CPU build)."""
    manifest = build_dir / "install_manifest_llambo.txt"
    installed = {Path(line).name for line in manifest.read_text().splitlines() if line.strip()}
    for entry in lib_dir.iterdir():
        if entry.name not in installed:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return sorted(installed)


def build(opts: BuildOptions, *, repo_root: Path = REPO_ROOT) -> BuildResult:
    """Configure (when needed), compile and install; a rebuild with nothing changed takes seconds."""
    started = time.monotonic()
    preflight(opts)
    source = resolve_source(opts.source)
    build_dir = repo_root / "build" / opts.variant
    configure = configure_command(
        opts, repo_root=repo_root, build_dir=build_dir, cuda_arch=_cuda_arch(opts), generator=_generator()
    )
    needs_configure = _prepare_build_dir(build_dir, source, configure)
    if needs_configure:
        _run(configure)
        build_dir.mkdir(parents=True, exist_ok=True)
        (build_dir / BUILD_STAMP).write_text(
            json.dumps({"source_identity": source.identity, "configure": configure}, indent=2) + "\n"
        )
    else:
        _say(f"reusing configured build in {build_dir}")
    _run(build_command(build_dir, opts.jobs))
    _run(install_command(build_dir, repo_root))
    lib_dir = repo_root / "llambo" / "_lib"
    libraries = _sync_lib_dir(build_dir, lib_dir)
    # CMake's copy of BUILD_INFO.json is the source of truth; the installed one adds install facts.
    info: dict[str, object] = json.loads((build_dir / "BUILD_INFO.json").read_text())
    info["installed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    info["installed_by"] = "build_tools"
    info["build_dir"] = str(build_dir)
    (lib_dir / "BUILD_INFO.json").write_text(json.dumps(info, indent=2) + "\n")
    seconds = time.monotonic() - started
    _say(f"built {', '.join(libraries)} into {lib_dir} in {seconds:.1f} s")
    return BuildResult(build_dir, lib_dir, needs_configure, seconds, info)


def clean(*, everything: bool = False, repo_root: Path = REPO_ROOT) -> list[Path]:
    """Remove build directories and llambo/_lib; with ``everything`` also the fetched source and caches."""
    from llambo._fetch import cache_dir

    targets = [repo_root / "build", repo_root / "llambo" / "_lib"]
    if everything:
        targets += [repo_root / "third_party" / "llama.cpp", cache_dir()]
    removed = []
    for target in targets:
        if target.is_symlink() or target.is_file():
            target.unlink()
            removed.append(target)
        elif target.exists():
            shutil.rmtree(target)
            removed.append(target)
    return removed
