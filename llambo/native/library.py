"""Find, load and initialise llama.cpp's shared library (libllama), once, lazily and thread-safely.

Search order (the first usable library wins):

1. ``LLAMBO_LIBRARY``: a path to libllama.so or a folder holding it. When set it is required:
   if it cannot be used, :class:`~llambo.errors.NativeUnavailable` is raised and no other place
   is searched.
2. ``llambo/_lib/`` inside the package (what ``nox -s build`` installs, or a wheel ships).
3. The local build directories of this checkout, ``<repo>/build/*/bin/libllama.so``, newest
   libllama first (only when the package sits in a checkout, i.e. next to ``build_tools/``).
4. The system: ``ctypes.util.find_library("llama")``.

A library whose ``BUILD_INFO.json`` names a llama.cpp commit other than the expected one (the
``llama_cpp_commit`` of ``third_party/pin.json`` when the checkout has it, else that of the
package's own ``_lib/BUILD_INFO.json``) is skipped, without being opened, for candidates 2 and 3;
candidate 1 is used anyway, with a logged warning. A library without ``BUILD_INFO.json`` is used
with a recorded warning, as its llama.cpp version cannot be checked.

Choices:

* Only libllama is opened, with the default ``RTLD_LOCAL``: the ggml libraries it needs are found
  through its ``RUNPATH=$ORIGIN``. Preloading them would leave them in the process when libllama
  then fails to load, where a later candidate's libllama would bind to them by name (two builds
  mixed), and ``RTLD_GLOBAL`` would also expose ggml's symbols to every library loaded afterwards.
  A failed ``dlopen`` is undone by the loader, so a failed candidate leaves nothing behind.
* ``llama_backend_init()`` runs once per process; ``llama_backend_free()`` is never called at
  exit, since models may still be alive then: call :func:`backend_free` after freeing them.
* llama.cpp's log lines go to the ``logging`` logger ``"llambo.native"``, whose level is set to
  WARNING unless the application set one: quiet by default, errors always shown.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from ..errors import NativeUnavailable
from . import llama_h

__all__ = [
    "ENV_VAR",
    "LOGGER_NAME",
    "PACKAGE_LIB",
    "REPO_ROOT",
    "NativeLibrary",
    "backend_free",
    "candidates",
    "expected_llama_cpp_commit",
    "library_status",
    "load_library",
]

ENV_VAR = "LLAMBO_LIBRARY"
LOGGER_NAME = "llambo.native"
LIBRARY_FILE = "libllama.dylib" if sys.platform == "darwin" else "libllama.so"
BUILD_INFO_FILE = "BUILD_INFO.json"

PACKAGE_LIB = Path(__file__).resolve().parent.parent / "_lib"
"""Where a build or a wheel puts the libraries inside the package."""
REPO_ROOT = PACKAGE_LIB.parent.parent
"""The checkout holding the package (when it is one: see :func:`_is_checkout`)."""

SOURCE_ENV = ENV_VAR
SOURCE_PACKAGE = "package"
SOURCE_CHECKOUT = "checkout build"
SOURCE_SYSTEM = "system"

FIX = (
    "Build it with `nox -s build` or `python -m build_tools build`, "
    f"or set {ENV_VAR} to a libllama.so (or the folder holding it)."
)

NOT_TRIED = "not tried"

_log = logging.getLogger(__name__)
_native_log = logging.getLogger(LOGGER_NAME)
if _native_log.level == logging.NOTSET:  # quiet unless the application chose a level
    _native_log.setLevel(logging.WARNING)

Candidate: TypeAlias = tuple[str, Path | None, bool]
Opener: TypeAlias = Callable[[Path], ctypes.CDLL]


@dataclass(frozen=True)
class NativeLibrary:
    """The loaded, declared and initialised libllama, with where it came from."""

    lib: ctypes.CDLL
    path: Path
    source: str
    build_info: dict[str, Any] | None
    system_info: str
    supports_gpu_offload: bool
    warnings: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Candidates and the expected llama.cpp commit
# ---------------------------------------------------------------------------------------------


def _is_checkout(repo_root: Path | None) -> bool:
    return repo_root is not None and (repo_root / "build_tools").is_dir()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def candidates(
    *,
    env: Mapping[str, str] | None = None,
    package_lib: Path | None = None,
    repo_root: Path | None = None,
    find_library: Callable[[str], str | None] | None = None,
) -> list[Candidate]:
    """The places searched, as ``(source, path, required)`` in search order; None: nothing there.

    The keyword arguments replace the process's environment, the package's ``_lib``, the checkout
    root and ``ctypes.util.find_library`` (for tests and diagnostics).
    """
    env = os.environ if env is None else env
    package_lib = PACKAGE_LIB if package_lib is None else package_lib
    repo_root = REPO_ROOT if repo_root is None else repo_root
    if find_library is None:
        import ctypes.util

        find_library = ctypes.util.find_library

    found: list[Candidate] = []
    raw = env.get(ENV_VAR, "")
    if raw:
        path = Path(raw).expanduser().absolute()
        found.append((SOURCE_ENV, path / LIBRARY_FILE if path.is_dir() else path, True))
    found.append((SOURCE_PACKAGE, package_lib / LIBRARY_FILE, False))
    if _is_checkout(repo_root):
        builds = sorted(repo_root.glob(f"build/*/bin/{LIBRARY_FILE}"), key=_mtime, reverse=True)
        found.extend((SOURCE_CHECKOUT, build, False) for build in builds)
        if not builds:
            found.append((SOURCE_CHECKOUT, None, False))
    name = find_library("llama")
    found.append((SOURCE_SYSTEM, Path(name) if name else None, False))
    return found


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file is absent; ValueError when it is malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def _commit_of(info: Mapping[str, Any] | None) -> str | None:
    commit = info.get("llama_cpp_commit") if info is not None else None
    return commit if isinstance(commit, str) and commit and commit != "unknown" else None


def expected_llama_cpp_commit(
    *, package_lib: Path | None = None, repo_root: Path | None = None
) -> str | None:
    """The llama.cpp commit the mirror in ``llama_h`` matches: the checkout's pin, else the wheel's build."""
    package_lib = PACKAGE_LIB if package_lib is None else package_lib
    repo_root = REPO_ROOT if repo_root is None else repo_root
    sources = [package_lib / BUILD_INFO_FILE]
    if _is_checkout(repo_root):
        sources.insert(0, repo_root / "third_party" / "pin.json")
    for source in sources:
        try:
            commit = _commit_of(_read_json(source))
        except ValueError:
            continue
        if commit is not None:
            return commit
    return None


def _has_directory(path: Path) -> bool:
    """False for a bare file name that the dynamic loader searches for (a system library)."""
    return os.sep in str(path)


def _build_info_path(library: Path) -> Path | None:
    """BUILD_INFO.json next to the library, or in the build directory above its ``bin/``."""
    if not _has_directory(library):
        return None
    beside = library.parent / BUILD_INFO_FILE
    if beside.is_file() or library.parent.name != "bin":
        return beside
    return library.parent.parent / BUILD_INFO_FILE


# ---------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------


@dataclass
class _Attempt:
    source: str
    path: Path | None
    outcome: str

    def to_json(self) -> dict[str, str | None]:
        return {"source": self.source, "path": str(self.path) if self.path else None, "outcome": self.outcome}


@dataclass
class _Verdict:
    """What a candidate's BUILD_INFO.json says about it, before it is opened."""

    build_info: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    skip: str | None = None  # why the candidate is not even opened
    mismatch: bool = False  # built from another llama.cpp, used anyway (it was asked for)


@dataclass
class _Found:
    lib: ctypes.CDLL
    source: str
    path: Path
    verdict: _Verdict


@dataclass
class _SearchResult:
    """What a search found, every candidate's outcome, and why it stopped when it found nothing."""

    found: _Found | None = None
    attempts: list[_Attempt] = field(default_factory=list)
    headline: str | None = None
    tainted: bool = False


def _open(path: Path) -> ctypes.CDLL:
    """Open and declare one libllama (the production opener)."""
    lib = ctypes.CDLL(str(path))
    llama_h.declare(lib)
    return lib


def _check_build_info(source: str, path: Path, expected: str | None) -> _Verdict:
    """Judge one candidate by its BUILD_INFO.json: usable, usable with warnings, or stale (skipped)."""
    required = source == SOURCE_ENV
    info_path = _build_info_path(path)
    if info_path is None:
        return _Verdict(
            warnings=[f"{path} ({source}) has no {BUILD_INFO_FILE}; its llama.cpp version is unchecked"]
        )
    try:
        info = _read_json(info_path)
    except ValueError as exc:
        if required:
            return _Verdict(warnings=[f"{exc}; the llama.cpp version of {path} is unchecked"])
        return _Verdict(
            skip=f"{exc}; cannot tell which llama.cpp it was built from, rebuild with `nox -s build`"
        )
    if info is None:
        return _Verdict(warnings=[f"no {BUILD_INFO_FILE} next to {path}; its llama.cpp version is unchecked"])
    commit = _commit_of(info)
    if expected is None or commit is None:
        what = "no llama.cpp commit is recorded for it" if commit is None else "no pin to compare it with"
        return _Verdict(info, [f"{path}: {what}; its llama.cpp version is unchecked"])
    if commit == expected:
        return _Verdict(info)
    built = f"built from llama.cpp {commit}, expected {expected}"
    if required:
        return _Verdict(info, [f"{path} was {built}; used because {ENV_VAR} names it"], mismatch=True)
    skip = f"{built}; rebuild with `nox -s build`"
    if info.get("source_origin") == "local":
        skip += f" (a build from a local llama.cpp tree can be chosen with {ENV_VAR})"
    return _Verdict(info, skip=skip)


def _search(cands: list[Candidate], expected: str | None, opener: Opener = _open) -> _SearchResult:
    """Try each candidate in order; stop at the first usable one, a required failure or a taint."""
    result = _SearchResult()
    stopped: _Attempt | None = None
    for index, (source, path, required) in enumerate(cands):
        attempt = _Attempt(source, path, "")
        result.attempts.append(attempt)
        stop = False
        if path is None:
            attempt.outcome = (
                "not found: no build/*/bin/" + LIBRARY_FILE
                if source == SOURCE_CHECKOUT
                else "not found by ctypes.util.find_library('llama')"
            )
        elif _has_directory(path) and not path.is_file():
            attempt.outcome = f"not found: {path} does not exist" if not path.exists() else "not a file"
            stop = required
        else:
            verdict = _check_build_info(source, path, expected)
            if verdict.skip is not None:
                attempt.outcome = f"skipped: {verdict.skip}"
            else:
                try:
                    lib = opener(path)
                except OSError as exc:
                    attempt.outcome = f"failed: {exc}"
                    stop = required
                except llama_h.MissingSymbolsError as exc:
                    attempt.outcome = f"failed: {exc}"
                    result.tainted = stop = True
                else:
                    attempt.outcome = "loaded"
                    result.found = _Found(lib, source, path, verdict)
                    stop = True
        if stop:
            stopped = attempt
            result.attempts.extend(_Attempt(s, p, NOT_TRIED) for s, p, _ in cands[index + 1 :])
            break
    if result.found is None:
        if result.tainted and stopped is not None:
            result.headline = (
                f"the llama.cpp library {stopped.path} was loaded but cannot be used, and a loaded library "
                "cannot be unloaded: fix or remove it and restart Python"
            )
        elif stopped is not None and stopped.source == SOURCE_ENV:
            result.headline = (
                f"{ENV_VAR} names {stopped.path}, which is not a usable llama.cpp library; "
                f"no other place is searched while {ENV_VAR} is set"
            )
        else:
            result.headline = "no usable llama.cpp library (libllama) was found"
    return result


def _unavailable_message(result: _SearchResult) -> str:
    lines = [f"{result.headline}; tried:"]
    lines += [
        f"  - {a.source}: {a.path if a.path is not None else '-'}: {a.outcome}"
        for a in result.attempts
        if a.outcome != NOT_TRIED
    ]
    lines.append(FIX)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# llama.cpp's log, into Python logging
# ---------------------------------------------------------------------------------------------

_LEVELS: dict[int, int] = {
    llama_h.ggml_log_level.GGML_LOG_LEVEL_DEBUG: logging.DEBUG,
    llama_h.ggml_log_level.GGML_LOG_LEVEL_INFO: logging.INFO,
    llama_h.ggml_log_level.GGML_LOG_LEVEL_WARN: logging.WARNING,
    llama_h.ggml_log_level.GGML_LOG_LEVEL_ERROR: logging.ERROR,
}
_CONTINUING = frozenset(
    {llama_h.ggml_log_level.GGML_LOG_LEVEL_NONE, llama_h.ggml_log_level.GGML_LOG_LEVEL_CONT}
)


class _LogBridge:
    """The Python side of the log callback: buffers partial lines, emits one record per line."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger if logger is not None else _native_log
        self._lock = threading.Lock()
        self._pending = bytearray()
        self._level = logging.INFO

    def __call__(self, level: int, text: bytes | None, user_data: int | None = None) -> None:
        """Called by llama.cpp (through the C callback); never raises into C."""
        try:
            with self._lock:
                lines = self._feed(level, text or b"")
            self._emit(lines)
        except BaseException:  # an exception cannot cross into C
            pass

    def flush(self) -> None:
        """Emit the unfinished line, if any (llama.cpp normally ends its lines itself)."""
        with self._lock:
            lines = [(self._level, bytes(self._pending))] if self._pending else []
            self._pending.clear()
        self._emit(lines)

    def _feed(self, level: int, text: bytes) -> list[tuple[int, bytes]]:
        lines: list[tuple[int, bytes]] = []
        if level not in _CONTINUING:
            if self._pending:  # a new message ends an unfinished one
                lines.append((self._level, bytes(self._pending)))
                self._pending.clear()
            self._level = _LEVELS.get(level, logging.INFO)
        self._pending += text
        while (end := self._pending.find(b"\n")) >= 0:
            lines.append((self._level, bytes(self._pending[:end])))
            del self._pending[: end + 1]
        return lines

    def _emit(self, lines: list[tuple[int, bytes]]) -> None:
        for level, raw in lines:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self.logger.log(level, "%s", line)


_log_bridge = _LogBridge()
_log_callback: Any = None  # the C callback object: must live as long as the process
_log_installed: set[int] = set()  # handles of libraries whose log goes to _log_bridge


def _install_log_bridge(lib: ctypes.CDLL) -> None:
    global _log_callback
    if lib._handle in _log_installed:
        return
    if _log_callback is None:
        _log_callback = llama_h.ggml_log_callback(_log_bridge)
    lib.llama_log_set(_log_callback, None)
    _log_installed.add(lib._handle)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


class _DlInfo(ctypes.Structure):
    _fields_ = (
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    )


def _loaded_path(lib: ctypes.CDLL) -> Path | None:
    """The file the dynamic loader opened for ``lib`` (a system library is opened by name)."""
    try:
        dladdr = ctypes.CDLL(None).dladdr
        dladdr.argtypes = (ctypes.c_void_p, ctypes.POINTER(_DlInfo))
        dladdr.restype = ctypes.c_int
        info = _DlInfo()
        address = ctypes.cast(lib.llama_backend_init, ctypes.c_void_p).value
        if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
            return None
        return Path(os.fsdecode(info.dli_fname)).resolve()
    except (OSError, AttributeError, ValueError):
        return None


_lock = threading.Lock()
_cached: NativeLibrary | None = None
_last_attempts: list[_Attempt] = []
_taint: str | None = None  # set when an unusable libllama was loaded: nothing else may be tried
_initialised: set[int] = set()  # handles on which llama_backend_init() has run


def load_library() -> NativeLibrary:
    """The loaded libllama (searched, opened and initialised on first use, then cached).

    Raises NativeUnavailable listing every candidate and why it was not used. A failure is not
    cached: the next call searches again (a build may have been made in between).
    """
    global _cached, _last_attempts, _taint
    cached = _cached
    if cached is not None:
        return cached
    with _lock:
        if _cached is not None:
            return _cached
        if _taint is not None:
            raise NativeUnavailable(_taint)
        result = _search(candidates(), expected_llama_cpp_commit())
        _last_attempts = result.attempts
        if result.found is None:
            message = _unavailable_message(result)
            if result.tainted:
                _taint = message
            raise NativeUnavailable(message)
        found = result.found
        for warning in found.verdict.warnings:
            _log.log(logging.WARNING if found.verdict.mismatch else logging.DEBUG, "%s", warning)
        lib = found.lib
        _install_log_bridge(lib)
        if lib._handle not in _initialised:
            lib.llama_backend_init()
            _initialised.add(lib._handle)
        system_info = (lib.llama_print_system_info() or b"").decode("utf-8", errors="replace").strip()
        path = found.path if _has_directory(found.path) else (_loaded_path(lib) or found.path)
        _cached = NativeLibrary(
            lib=lib,
            path=path,
            source=found.source,
            build_info=found.verdict.build_info,
            system_info=system_info,
            supports_gpu_offload=bool(lib.llama_supports_gpu_offload()),
            warnings=tuple(found.verdict.warnings),
        )
        return _cached


def backend_free() -> None:
    """Call ``llama_backend_free()`` if the backend was initialised; only once every model is freed."""
    global _cached
    with _lock:
        if _cached is None or _cached.lib._handle not in _initialised:
            return
        _cached.lib.llama_backend_free()
        _initialised.discard(_cached.lib._handle)
        _cached = None  # the next load_library() initialises it again


def library_status() -> dict[str, Any]:
    """Whether libllama is usable, where from and why not, for diagnostics; never raises."""
    status: dict[str, Any] = {
        "available": False,
        "path": None,
        "source": None,
        "build_info": None,
        "system_info": None,
        "supports_gpu_offload": None,
        "warnings": [],
    }
    try:
        native = load_library()
    except Exception as exc:
        reason = str(exc) if isinstance(exc, NativeUnavailable) else f"{type(exc).__name__}: {exc}"
        status["reason"] = reason
    else:
        status.update(
            available=True,
            path=str(native.path),
            source=native.source,
            build_info=native.build_info,
            system_info=native.system_info,
            supports_gpu_offload=native.supports_gpu_offload,
            warnings=list(native.warnings),
        )
    status["candidates"] = [attempt.to_json() for attempt in _last_attempts]
    return status


def _reset_for_tests() -> None:
    """Forget the cached library and the last search; the library itself stays loaded."""
    global _cached, _last_attempts
    with _lock:
        _cached = None
        _last_attempts = []
