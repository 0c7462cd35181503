"""Check the tools a llama.cpp build needs and say exactly what to install when one is missing."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MIN_CMAKE",
    "MIN_PYTHON",
    "Report",
    "Tool",
    "check_toolchain",
    "cuda_toolkit_root",
    "find_cublas",
    "gpu_compute_capabilities",
    "nvcc_version",
    "render_table",
]

MIN_PYTHON: tuple[int, int] = (3, 10)
MIN_CMAKE: tuple[int, int] = (3, 21)
TIMEOUT_S = 10.0

Which = Callable[[str], str | None]
Runner = Callable[[Sequence[str]], str | None]

_CUDA_TOOLS = frozenset({"nvcc", "CUDA toolkit", "cuBLAS"})
_TOOLKIT_ENV_VARS = ("CUDA_HOME", "CUDA_PATH", "CUDAToolkit_ROOT")
_SYSTEM_INCLUDE_DIRS: tuple[Path, ...] = (Path("/usr/include"),)
_LOCAL_DIR = Path("/usr/local")
_VERSION_RE = re.compile(r"\d+(?:\.\d+)+")


@dataclass(frozen=True)
class Tool:
    """One probed tool: whether it was found, where, and how to get it if it is missing."""

    name: str
    found: bool
    version: str | None
    path: str | None
    required: bool
    fix: str
    detail: str = ""

    @property
    def status(self) -> str:
        """Table status: ok, MISSING (required) or optional missing."""
        if self.found:
            return "ok"
        return "MISSING" if self.required else "optional missing"


@dataclass(frozen=True)
class Report:
    """All probed tools for one requested build (CPU or CUDA)."""

    tools: tuple[Tool, ...]
    cuda_requested: bool

    @property
    def missing_required(self) -> list[Tool]:
        """Tools the requested build needs but that were not found (or are too old)."""
        return [t for t in self.tools if t.required and not t.found]

    @property
    def ok(self) -> bool:
        """True when the requested build has everything it needs."""
        return not self.missing_required

    def tool(self, name: str) -> Tool:
        """Look a tool up by its display name, so callers need not know the table order."""
        for t in self.tools:
            if t.name == name:
                return t
        raise KeyError(name)


def _run(cmd: Sequence[str]) -> str | None:
    """Run a probe command with a timeout; its output, or None on any failure, so probing never raises."""
    if not cmd:
        return None
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    try:
        proc = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=TIMEOUT_S,
            check=False,
            env=env,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout if proc.stdout.strip() else proc.stderr


def _safe_run(run: Runner, cmd: Sequence[str]) -> str | None:
    """Call an (injectable) runner, turning any exception into 'not found'."""
    try:
        return run(cmd)
    except Exception:  # a probe must never take the check down
        return None


def _first_line(text: str | None) -> str:
    """First non-empty line of a command's output, for version banners."""
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def _version_in(line: str) -> str | None:
    """Version number in a banner line: the one after 'version', else the last dotted number."""
    m = re.search(r"version\s+(\d+(?:\.\d+)+)", line)
    if m:
        return m.group(1)
    found = _VERSION_RE.findall(line)
    return found[-1] if found else None


def _version_tuple(version: str) -> tuple[int, ...]:
    """'3.25.1' -> (3, 25, 1) for comparisons."""
    return tuple(int(p) for p in re.findall(r"\d+", version))


def nvcc_version(nvcc: str, *, run: Runner = _run) -> str | None:
    """Version of an nvcc ('13.0.88'), from `nvcc --version`; None if it cannot be run."""
    out = _safe_run(run, [nvcc, "--version"])
    if not out:
        return None
    m = re.search(r"\bV(\d+\.\d+(?:\.\d+)?)", out)
    if m:
        return m.group(1)
    m = re.search(r"release\s+(\d+\.\d+)", out)
    return m.group(1) if m else None


def _is_toolkit(root: Path) -> bool:
    """True for a CUDA toolkit (bin/nvcc plus runtime headers), not just any prefix holding an nvcc."""
    try:
        if not (root / "bin" / "nvcc").is_file():
            return False
        if (root / "include" / "cuda_runtime.h").is_file():
            return True
        return any(p.is_file() for p in root.glob("targets/*/include/cuda_runtime.h"))
    except OSError:
        return False


def _versioned_cuda_dirs(local_dir: Path) -> list[Path]:
    """local_dir/cuda-X.Y directories, newest first."""
    try:
        dirs = [p for p in local_dir.glob("cuda-*") if p.is_dir()]
    except OSError:
        return []

    def key(p: Path) -> tuple[int, ...]:
        return _version_tuple(p.name[len("cuda-") :])

    return sorted(dirs, key=key, reverse=True)


def _toolkit_candidates(which: Which, environ: Mapping[str, str], local_dir: Path) -> Iterable[Path]:
    """Places a CUDA toolkit may live, in the order a build should prefer them."""
    for var in _TOOLKIT_ENV_VARS:
        value = environ.get(var, "").strip()
        if value:
            yield Path(value)
    nvcc = which("nvcc")
    if nvcc:
        yield Path(os.path.realpath(nvcc)).parent.parent
    yield local_dir / "cuda"
    yield from _versioned_cuda_dirs(local_dir)


def cuda_toolkit_root(
    *,
    which: Which = shutil.which,
    environ: Mapping[str, str] | None = None,
    local_dir: Path = _LOCAL_DIR,
) -> Path | None:
    """The CUDA toolkit to build against: CUDA_HOME/CUDA_PATH/CUDAToolkit_ROOT, nvcc, /usr/local/cuda*."""
    env = os.environ if environ is None else environ
    # nvcc on PATH may be a wrapper script (e.g. /usr/local/bin/nvcc), whose prefix is not a
    # toolkit; requiring the runtime headers next to bin/nvcc skips such prefixes.
    for candidate in _toolkit_candidates(which, env, local_dir):
        if _is_toolkit(candidate):
            return candidate
    return None


def _toolkit_version(root: Path, run: Runner) -> str | None:
    """Toolkit version from version.json, else its nvcc, else CUDA_VERSION in cuda.h."""
    try:
        data = json.loads((root / "version.json").read_text(encoding="utf-8"))
        version = data["cuda"]["version"]
        if isinstance(version, str) and version:
            return version
    except (OSError, ValueError, KeyError, TypeError):
        pass
    nvcc = root / "bin" / "nvcc"
    if nvcc.is_file():
        version = nvcc_version(str(nvcc), run=run)
        if version:
            return version
    try:
        text = (root / "include" / "cuda.h").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(r"#define\s+CUDA_VERSION\s+(\d+)", text)
    if not m:
        return None
    n = int(m.group(1))
    return f"{n // 1000}.{(n % 1000) // 10}"


def _ldconfig_cublas(run: Runner) -> list[Path]:
    """libcublas.so* paths the dynamic linker cache knows about (`ldconfig -p`)."""
    out = None
    for cmd in ("ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"):
        out = _safe_run(run, [cmd, "-p"])
        if out:
            break
    libs: list[Path] = []
    for line in (out or "").splitlines():
        if "=>" not in line:
            continue
        left, _, right = line.partition("=>")
        name = left.split()[0] if left.split() else ""
        if name == "libcublas.so" or name.startswith("libcublas.so."):
            libs.append(Path(right.strip()))
    return libs


def _locate_cublas(root: Path, run: Runner, include_dirs: Sequence[Path]) -> tuple[Path | None, Path | None]:
    """(library, header) for cuBLAS, each None when missing; the unversioned link library is preferred."""
    libs: list[Path] = []
    try:
        lib_dirs = [root / "lib64", root / "lib", *sorted(root.glob("targets/*/lib"))]
        for d in lib_dirs:
            if d.is_dir():
                libs.extend(sorted(d.glob("libcublas.so*")))
    except OSError:
        pass
    libs.extend(_ldconfig_cublas(run))
    libs = [p for p in libs if p.exists()]
    library = next((p for p in libs if p.name == "libcublas.so"), libs[0] if libs else None)

    header: Path | None = None
    try:
        header_dirs = [
            root / "include",
            *sorted(root.glob("targets/*/include")),
            *include_dirs,
        ]
    except OSError:
        header_dirs = [root / "include", *include_dirs]
    for d in header_dirs:
        if (d / "cublas_v2.h").is_file():
            header = d / "cublas_v2.h"
            break
    return library, header


def find_cublas(
    root: Path,
    *,
    run: Runner = _run,
    include_dirs: Sequence[Path] = _SYSTEM_INCLUDE_DIRS,
) -> Path | None:
    """cuBLAS library under the toolkit (or the system library dirs); None unless cublas_v2.h exists too."""
    library, header = _locate_cublas(root, run, include_dirs)
    return library if library is not None and header is not None else None


def _parse_gpu_query(text: str | None) -> list[tuple[str, str]]:
    """(name, compute capability 'X.Y') per line of `nvidia-smi --query-gpu=name,compute_cap` output."""
    gpus: list[tuple[str, str]] = []
    for line in (text or "").splitlines():
        name, sep, cap = line.rpartition(",")
        cap = cap.strip()
        if sep and name.strip() and re.fullmatch(r"\d+\.\d+", cap):
            gpus.append((name.strip(), cap))
    return gpus


def _query_gpus(run: Runner, nvidia_smi: str = "nvidia-smi") -> list[tuple[str, str]]:
    """GPUs nvidia-smi reports; [] when it is absent or fails."""
    out = _safe_run(run, [nvidia_smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"])
    return _parse_gpu_query(out)


def gpu_compute_capabilities(*, run: Runner = _run) -> list[str]:
    """Distinct compute capabilities of the local GPUs as CMake architectures (['90']); [] without GPU."""
    caps: list[str] = []
    for _, cap in _query_gpus(run):
        arch = cap.replace(".", "")
        if arch not in caps:
            caps.append(arch)
    return caps


def _python_tool(version_info: Sequence[int] | None) -> Tool:
    """The running interpreter, which must be recent enough for the binding."""
    v = tuple(version_info if version_info is not None else sys.version_info[:3])
    version = ".".join(str(p) for p in v[:3])
    ok = v[:2] >= MIN_PYTHON
    want = ".".join(map(str, MIN_PYTHON))
    return Tool(
        name="Python",
        found=ok,
        version=version,
        path=sys.executable or None,
        required=True,
        fix=f"install Python >= {want} (e.g. apt-get install python3, or uv python install {want})",
        detail="" if ok else f"Python {version} is older than {want}",
    )


def _cmake_tool(which: Which, run: Runner) -> Tool:
    """CMake, which must be new enough for llama.cpp's CMakeLists."""
    want = ".".join(map(str, MIN_CMAKE))
    path = which("cmake")
    fix = "apt-get install cmake  (or: pip install cmake)"
    if not path:
        return Tool("CMake", False, None, None, True, fix, "cmake not on PATH")
    out = _safe_run(run, [path, "--version"])
    m = re.search(r"version\s+(\d+\.\d+(?:\.\d+)?)", out or "")
    if not m:
        return Tool("CMake", False, None, path, True, fix, "`cmake --version` failed")
    version = m.group(1)
    if _version_tuple(version)[:2] < MIN_CMAKE:
        return Tool(
            "CMake",
            False,
            version,
            path,
            True,
            f"pip install 'cmake>={want}'  (this cmake is {version}; llama.cpp needs >= {want})",
            f"too old: {version} < {want}",
        )
    return Tool("CMake", True, version, path, True, fix)


def _ninja_tool(which: Which, run: Runner) -> Tool:
    """ninja, the preferred generator; required only when there is no make to fall back on."""
    path = which("ninja")
    version = _first_line(_safe_run(run, [path, "--version"])) if path else ""
    if path and version:
        return Tool("ninja", True, version, path, False, "pip install ninja")
    has_make = which("make") is not None
    detail = "CMake will use make instead" if has_make else "no make either: CMake needs a build tool"
    return Tool("ninja", False, None, path, not has_make, "pip install ninja", detail)


def _compiler_tool(
    name: str,
    env_var: str,
    candidates: Sequence[str],
    fix: str,
    which: Which,
    run: Runner,
    environ: Mapping[str, str],
) -> Tool:
    """A C or C++ compiler: the one named by CC/CXX (as CMake would use it), else the first on PATH."""
    override = environ.get(env_var, "").strip()
    path: str | None = None
    detail = ""
    if override:
        try:
            parts = shlex.split(override)
        except ValueError:
            parts = []
        path = which(parts[0]) if parts else None
        if path is None:
            return Tool(
                name,
                False,
                None,
                None,
                True,
                f"point {env_var} at an installed compiler or unset it; otherwise: {fix}",
                f"{env_var}={override!r} is not an executable",
            )
        detail = f"from {env_var}"
    else:
        for cand in candidates:
            path = which(cand)
            if path:
                break
    if not path:
        return Tool(
            name,
            False,
            None,
            None,
            True,
            fix,
            f"none of {', '.join(candidates)} on PATH",
        )
    banner = _first_line(_safe_run(run, [path, "--version"]))
    if not banner:
        return Tool(name, False, None, path, True, fix, f"`{path} --version` failed")
    detail = f"{detail}: {banner}" if detail else banner
    return Tool(name, True, _version_in(banner), path, True, fix, detail)


def _nvcc_tool(cuda: bool, root: Path | None, which: Which, run: Runner, environ: Mapping[str, str]) -> Tool:
    """nvcc: CUDACXX if set (CMake honours it), else PATH, else the toolkit's bin/."""
    fix = (
        "install the CUDA toolkit (NVIDIA's packages: apt-get install cuda-toolkit-13-0; "
        "Debian/Ubuntu: apt-get install nvidia-cuda-toolkit; conda: conda install -c nvidia cuda-nvcc) "
        "and put its bin/ on PATH or set CUDACXX"
    )
    detail = ""
    override = environ.get("CUDACXX", "").strip()
    path: str | None
    if override:
        path = which(override)
        detail = "from CUDACXX"
    else:
        path = which("nvcc")
        if path is None and root is not None and (root / "bin" / "nvcc").is_file():
            path = str(root / "bin" / "nvcc")
            detail = "not on PATH; CMake needs CUDACXX or -DCMAKE_CUDA_COMPILER"
    if path is None:
        missing = f"CUDACXX={override!r} is not an executable" if override else "nvcc not found"
        return Tool("nvcc", False, None, None, cuda, fix, missing)
    version = nvcc_version(path, run=run)
    if version is None:
        return Tool("nvcc", False, None, path, cuda, fix, f"`{path} --version` failed")
    return Tool("nvcc", True, version, path, cuda, fix, detail)


def _toolkit_tool(cuda: bool, root: Path | None, run: Runner, environ: Mapping[str, str]) -> Tool:
    """The CUDA toolkit directory CMake's FindCUDAToolkit will use."""
    fix = "install the CUDA toolkit, or set CUDA_HOME (or CUDAToolkit_ROOT) to its directory"
    ignored = [
        f"{var}={environ[var]} is not a toolkit"
        for var in _TOOLKIT_ENV_VARS
        if environ.get(var, "").strip() and Path(environ[var].strip()) != root
    ]
    detail = "; ".join(ignored)
    if root is None:
        return Tool(
            "CUDA toolkit",
            False,
            None,
            None,
            cuda,
            fix,
            detail or "no CUDA toolkit found",
        )
    return Tool("CUDA toolkit", True, _toolkit_version(root, run), str(root), cuda, fix, detail)


def _cublas_fix(toolkit_version: str | None) -> str:
    """Install hint for cuBLAS matching the toolkit's major.minor when known."""
    parts = _version_tuple(toolkit_version) if toolkit_version else ()
    suffix = f"{parts[0]}-{parts[1]}" if len(parts) >= 2 else "<major>-<minor>"
    return (
        "install the CUDA toolkit's cuBLAS (Debian/Ubuntu: apt-get install "
        f"libcublas-dev-{suffix} or the 'cuda-libraries-dev-{suffix}' package; "
        "conda: conda install -c nvidia libcublas-dev)"
    )


def _cublas_tool(
    cuda: bool,
    root: Path | None,
    toolkit_version: str | None,
    run: Runner,
    include_dirs: Sequence[Path],
) -> Tool:
    """cuBLAS library and header, which llama.cpp's CUDA backend links against."""
    fix = _cublas_fix(toolkit_version)
    if root is None:
        return Tool("cuBLAS", False, None, None, cuda, fix, "no CUDA toolkit to look in")
    library, header = _locate_cublas(root, run, include_dirs)
    if library is None or header is None:
        what = []
        if library is None:
            what.append(f"libcublas.so not found under {root} or in the linker cache")
        if header is None:
            what.append(f"cublas_v2.h not found under {root}")
        return Tool(
            "cuBLAS",
            False,
            None,
            str(library) if library else None,
            cuda,
            fix,
            "; ".join(what),
        )
    real = Path(os.path.realpath(library)).name
    version = real.split(".so.", 1)[1] if ".so." in real else None
    detail = (
        "" if library.name == "libcublas.so" else f"only {library.name}; no libcublas.so link to link against"
    )
    return Tool("cuBLAS", True, version, str(library), cuda, fix, detail)


def _gpu_tool(which: Which, run: Runner) -> Tool:
    """Local GPUs; never required, since a CUDA build can be compiled without one."""
    fix = "install the NVIDIA driver (it provides nvidia-smi); only needed to run a CUDA build"
    smi = which("nvidia-smi")
    if smi is None:
        return Tool("GPU", False, None, None, False, fix, "no nvidia-smi")
    gpus = _query_gpus(run, smi)
    if not gpus:
        return Tool("GPU", False, None, smi, False, fix, "nvidia-smi reports no GPU")
    counts: dict[tuple[str, str], int] = {}
    for gpu in gpus:
        counts[gpu] = counts.get(gpu, 0) + 1
    version = "; ".join(
        f"{n}x {name}, compute {cap}" if n > 1 else f"{name}, compute {cap}"
        for (name, cap), n in counts.items()
    )
    return Tool("GPU", True, version, smi, False, fix)


def check_toolchain(
    cuda: bool = False,
    *,
    which: Which = shutil.which,
    run: Runner = _run,
    environ: Mapping[str, str] | None = None,
    local_dir: Path = _LOCAL_DIR,
    include_dirs: Sequence[Path] = _SYSTEM_INCLUDE_DIRS,
    python_version: Sequence[int] | None = None,
) -> Report:
    """Probe every tool a CPU (or, with cuda=True, CUDA) build needs; the probes are injectable for tests."""
    env = os.environ if environ is None else environ
    root = cuda_toolkit_root(which=which, environ=env, local_dir=local_dir)
    toolkit = _toolkit_tool(cuda, root, run, env)
    tools = (
        _python_tool(python_version),
        _cmake_tool(which, run),
        _ninja_tool(which, run),
        _compiler_tool(
            "C compiler",
            "CC",
            ("cc", "gcc", "clang"),
            "apt-get install gcc  (or: dnf install gcc; conda install -c conda-forge c-compiler)",
            which,
            run,
            env,
        ),
        _compiler_tool(
            "C++ compiler",
            "CXX",
            ("c++", "g++", "clang++"),
            "apt-get install g++  (or: dnf install gcc-c++; conda install -c conda-forge cxx-compiler)",
            which,
            run,
            env,
        ),
        _nvcc_tool(cuda, root, which, run, env),
        toolkit,
        _cublas_tool(cuda, root, toolkit.version, run, include_dirs),
        _gpu_tool(which, run),
    )
    return Report(tools=tools, cuda_requested=cuda)


def render_table(report: Report) -> str:
    """Aligned text table of the report, the fixes for what is missing, and whether the build can proceed."""
    header = ("Tool", "Status", "Version", "Path", "Note")
    rows = [(t.name, t.status, t.version or "-", t.path or "-", t.detail) for t in report.tools]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]

    missing = report.missing_required
    if missing:
        lines += ["", "Fixes:"]
        lines += [f"  {t.name}: {t.fix}" for t in missing]
    optional = [
        t
        for t in report.tools
        if not t.found
        and not t.required
        and t.fix
        and (report.cuda_requested or (t.name not in _CUDA_TOOLS and t.name != "GPU"))
    ]
    if optional:
        lines += ["", "Optional:"]
        lines += [f"  {t.name}: {t.fix}" for t in optional]

    kind = "CUDA" if report.cuda_requested else "CPU"
    lines.append("")
    if report.ok:
        lines.append(f"{kind} build can proceed.")
    else:
        names = ", ".join(t.name for t in missing)
        lines.append(f"{kind} build cannot proceed: missing {names}.")
    return "\n".join(lines)
