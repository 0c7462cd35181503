"""``llambo doctor``: which backend runs and why, the native library, GPU/CUDA, the default model."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Any

from ..common import check_backend


def _why(requested: str, source: str, native: dict[str, Any], chosen: str | None) -> str:
    if requested == "reference":
        return f"the reference backend was requested ({source})"
    if requested == "native":
        if chosen == "native":
            return f"the native backend was requested ({source}) and its library loaded"
        return f"the native backend was requested ({source}) but its library is unavailable: nothing runs"
    if chosen == "native":
        return f"auto ({source}) picks llama.cpp's library, which loaded"
    return f"auto ({source}) falls back to the numpy reference (slower): the native library is unavailable"


def _gpu_summary(native: dict[str, Any], gpu: dict[str, Any]) -> str:
    if native.get("supports_gpu_offload"):
        if gpu["gpus"]:
            return "available: --gpu-layers -1 offloads every layer"
        return "the library supports it, but no GPU was found: " + str(gpu["problem"])
    if not native.get("available"):
        return "unavailable: the native library does not load"
    if gpu["gpus"]:
        return (
            "no: this library was built without CUDA; rebuild with `python -m build_tools build --cuda` "
            "to use the GPU"
        )
    return f"no: CPU-only library; {gpu['problem']}"


def _model_state(cache: dict[str, Any]) -> str:
    if cache["verified"]:
        return f"cached and verified ({cache['size'] / 2**20:.1f} MiB)"
    if cache["present"]:
        return "present but not the pinned file (size or sha256 differ); `llambo pull` fetches it afresh"
    return "not cached yet; `llambo pull` (or the first `llambo run`) fetches it"


def collect(backend: str | None) -> dict[str, Any]:
    """Everything the report shows, JSON-serialisable."""
    import os

    from ... import __version__
    from ..._fetch import cache_dir
    from ...default_model import DEFAULT_MODEL, describe_cache
    from ...selection import ENV_BACKEND, backend_info
    from ..gpu import probe

    requested = check_backend(backend)
    if backend is not None:
        source = f"--backend {backend}"
    elif os.environ.get(ENV_BACKEND, "").strip():
        source = f"{ENV_BACKEND}={os.environ[ENV_BACKEND]}"
    else:
        source = f"the default; {ENV_BACKEND} is unset"
    info = backend_info(backend)
    chosen = info["chosen"]
    works = chosen is not None and bool(info[chosen]["available"])
    gpu = probe()
    return {
        "llambo": __version__,
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": f"{platform.system()} {platform.machine()}",
        "backend": {**info, "source": source, "why": _why(requested, source, info["native"], chosen)},
        "gpu": {**gpu, "offload": _gpu_summary(info["native"], gpu)},
        "default_model": {"name": DEFAULT_MODEL.name, "cache_dir": str(cache_dir()), **describe_cache()},
        "ok": works,
    }


def render(report: dict[str, Any]) -> str:
    """The report as text."""
    backend, native, gpu, model = (
        report["backend"],
        report["backend"]["native"],
        report["gpu"],
        report["default_model"],
    )
    lines = [
        f"llambo {report['llambo']} (Python {report['python']}, {report['platform']})",
        f"backend: {backend['chosen'] or 'none'}",
        f"  why: {backend['why']}",
        f"native library: {'available' if native['available'] else 'unavailable'}",
    ]
    if native["available"]:
        build = native.get("build_info") or {}
        commit = str(build.get("llama_cpp_commit", "unknown"))[:12]
        lines += [f"  path: {native['library']}", f"  source: {native['source']}"]
        if build:
            kind = "CUDA " + str(build.get("cuda_architectures") or "") if build.get("cuda") else "CPU"
            lines.append(
                f"  build: llama.cpp {build.get('llama_cpp_version', '?')} (commit {commit}), "
                f"{build.get('build_type', '?')}, {kind.strip()}, {build.get('c_compiler', '?')}"
            )
        else:
            lines.append("  build: no BUILD_INFO.json (version unknown)")
    else:
        reason = str(native.get("reason") or "unknown")
        lines += ["  reason: " + reason.replace("\n", "\n    ")]
    lines += [f"  warning: {warning}" for warning in native.get("warnings") or []]
    lines.append(f"reference backend: {'available' if backend['reference']['available'] else 'unavailable'}")
    lines.append("GPU:")
    lines.append(f"  nvidia-smi: {gpu['nvidia_smi'] or 'not found'}")
    lines += [
        f"  GPU: {g['name']} (compute {g['compute_capability']}, driver {g['driver']}, {g['memory']})"
        for g in gpu["gpus"]
    ]
    lines.append(f"  libcuda: {gpu['libcuda'] or 'not found'}")
    lines.append(f"  offload: {gpu['offload']}")
    lines += [
        f"default model: {model['name']}",
        f"  path: {model['path']}",
        f"  state: {_model_state(model)}",
    ]
    if report["ok"]:
        lines.append(f"ok: models run on the {backend['chosen']} backend")
    else:
        lines.append("NOT OK: the backend asked for cannot run (see above)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the report; 0 when the backend a run would use works, else 1."""
    report = collect(args.backend)
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    return 0 if report["ok"] else 1
