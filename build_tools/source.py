"""The llama.cpp source: the pinned sdist (fetched with pip, verified, pruned) or a local checkout."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from llambo._fetch import cache_dir, pip_download

REPO_ROOT = Path(__file__).resolve().parent.parent
PIN_FILE = REPO_ROOT / "third_party" / "pin.json"
DEFAULT_DEST = REPO_ROOT / "third_party" / "llama.cpp"
STAMP_NAME = ".llambo-source.json"

# What the library build needs from the llama.cpp tree (paths relative to its root).
KEEP_DIRS = ("cmake/", "include/", "src/", "vendor/", "licenses/", "ggml/cmake/", "ggml/include/")
KEEP_FILES = ("CMakeLists.txt", "LICENSE", "AUTHORS", "ggml/CMakeLists.txt", "ggml/LICENSE")
# ggml backends kept besides the top-level ggml/src files; others need a full local checkout.
KEEP_GGML_BACKENDS = ("ggml-cpu", "ggml-cuda", "ggml-hip", "ggml-musa", "ggml-blas", "ggml-rpc")


class SourceError(Exception):
    """The llama.cpp source is missing, corrupt or not a llama.cpp tree."""


@dataclass(frozen=True)
class Pin:
    """The pinned sdist that carries llama.cpp (third_party/pin.json)."""

    package: str
    version: str
    filename: str
    sha256: str
    subdir: str
    llama_cpp_commit: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def identity(self) -> str:
        """Changes whenever any field of the pin changes."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return "pinned:" + hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class SourceInfo:
    """A llama.cpp tree ready to build, and what identifies it (for rebuild decisions)."""

    path: Path
    origin: str  # "pinned" or "local"
    llama_cpp_version: str
    commit: str
    identity: str

    def to_json(self) -> dict[str, str]:
        return {
            "path": str(self.path),
            "origin": self.origin,
            "llama_cpp_version": self.llama_cpp_version,
            "commit": self.commit,
            "identity": self.identity,
        }


def load_pin(path: Path = PIN_FILE) -> Pin:
    """Read the pin file; every field is required."""
    data = json.loads(path.read_text())
    fields = Pin.__dataclass_fields__
    missing = [name for name in fields if name not in data]
    if missing:
        raise SourceError(f"{path} lacks {', '.join(missing)}")
    return Pin(**{name: str(data[name]) for name in fields})


def llama_cpp_version(tree: Path) -> str:
    """The version llama.cpp's CMakeLists.txt declares (LLAMA_VERSION_MAJOR.MINOR.PATCH)."""
    text = (tree / "CMakeLists.txt").read_text(errors="replace")
    parts = []
    for name in ("MAJOR", "MINOR", "PATCH"):
        match = re.search(rf"set\(LLAMA_VERSION_{name}\s+(\d+)\)", text)
        parts.append(match.group(1) if match else "?")
    return ".".join(parts)


def _keep(rel: str) -> bool:
    """Whether a path inside the llama.cpp tree is part of the pruned library source."""
    if rel in KEEP_FILES or rel.startswith(KEEP_DIRS):
        return True
    if rel.startswith("ggml/src/"):
        rest = rel[len("ggml/src/") :]
        return "/" not in rest or rest.split("/", 1)[0] in KEEP_GGML_BACKENDS
    return False


def _read_stamp(dest: Path) -> dict[str, str] | None:
    try:
        data = json.loads((dest / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def extract_tree(
    sdist: Path, pin: Pin, staging: Path, keep: Callable[[str], bool] = lambda rel: True
) -> tuple[int, str | None]:
    """Extract the files of the sdist's llama.cpp tree that ``keep`` accepts into ``staging``.

    Returns (files written, the llama.cpp commit the sdist records or None); a member whose path
    would land outside ``staging`` raises SourceError.
    """
    count = 0
    commit = None
    prefix = pin.subdir.rstrip("/") + "/"
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/", 1)
            if len(parts) != 2:
                continue
            inner = parts[1]
            if inner == f".git/modules/{pin.subdir}/HEAD":
                fh = tar.extractfile(member)
                commit = fh.read().decode().strip() if fh else None
                continue
            if not inner.startswith(prefix) or not member.isfile():
                continue
            rel = inner[len(prefix) :]
            if rel == ".git" or not keep(rel):  # .git: a submodule pointer into the sdist's git data
                continue
            if rel.startswith("/") or ".." in rel.split("/"):
                raise SourceError(f"refusing unsafe path {member.name!r} in {sdist.name}")
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            if src is None:
                continue
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
            count += 1
    return count, commit


def extract_pruned(sdist: Path, pin: Pin, dest: Path) -> int:
    """Extract the pruned llama.cpp tree from the sdist into ``dest`` (replaced atomically)."""
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        count, commit = extract_tree(sdist, pin, staging, _keep)
    except SourceError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not (staging / "include" / "llama.h").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise SourceError(f"{sdist.name} has no {pin.subdir}/include/llama.h: not the expected sdist")
    if commit and commit != pin.llama_cpp_commit:
        shutil.rmtree(staging, ignore_errors=True)
        raise SourceError(
            f"{sdist.name} carries llama.cpp {commit}, but the pin says {pin.llama_cpp_commit}; "
            "update third_party/pin.json"
        )
    stamp = {
        "origin": "pinned",
        "package": pin.requirement,
        "sha256": pin.sha256,
        "identity": pin.identity,
        "llama_cpp_version": llama_cpp_version(staging),
        "commit": pin.llama_cpp_commit,
        "files": str(count),
        "extracted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (staging / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    return count


def fetch_pinned(pin: Pin | None = None, dest: Path = DEFAULT_DEST, *, quiet: bool = False) -> SourceInfo:
    """Make ``dest`` hold the pinned, pruned llama.cpp tree; reuse it when its stamp matches."""
    pin = pin or load_pin()
    stamp = _read_stamp(dest)
    if stamp is None or stamp.get("identity") != pin.identity:
        if stamp is not None:
            _say(
                f"llama.cpp source in {dest} is from {stamp.get('package')}, "
                f"pin is {pin.requirement}: replacing it",
                quiet,
            )
        downloads = cache_dir() / "downloads"
        _say(f"fetching {pin.requirement} (source) with pip into {downloads}", quiet)
        sdist = pip_download(
            pin.requirement, pin.filename, downloads, pin.sha256, source_only=True, quiet=quiet
        )
        count = extract_pruned(sdist, pin, dest)
        _say(f"extracted {count} files of llama.cpp into {dest}", quiet)
        stamp = _read_stamp(dest)
        assert stamp is not None
    return SourceInfo(
        path=dest,
        origin="pinned",
        llama_cpp_version=stamp["llama_cpp_version"],
        commit=stamp["commit"],
        identity=stamp["identity"],
    )


def local_source(path: Path) -> SourceInfo:
    """Describe a local llama.cpp checkout given with --source or LLAMBO_LLAMA_CPP_DIR."""
    path = path.expanduser().resolve()
    if not (path / "include" / "llama.h").is_file() or not (path / "CMakeLists.txt").is_file():
        raise SourceError(
            f"{path} is not a llama.cpp source tree (no include/llama.h or CMakeLists.txt); "
            "point --source / LLAMBO_LLAMA_CPP_DIR at the root of a llama.cpp checkout"
        )
    commit = _git_head(path) or "unknown"
    header = path / "include" / "llama.h"
    # Identity changes with the checkout, its commit and its public header.
    digest = hashlib.sha256(f"{path}\0{commit}".encode() + header.read_bytes()).hexdigest()[:16]
    return SourceInfo(path, "local", llama_cpp_version(path), commit, "local:" + digest)


def _git_head(path: Path) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def resolve_source(explicit: Path | None = None, *, quiet: bool = False) -> SourceInfo:
    """The source to build: ``explicit``, else ``LLAMBO_LLAMA_CPP_DIR``, else the pinned sdist."""
    env = os.environ.get("LLAMBO_LLAMA_CPP_DIR")
    if explicit is not None:
        return local_source(explicit)
    if env:
        return local_source(Path(env))
    return fetch_pinned(quiet=quiet)


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[llambo] {message}", file=sys.stderr, flush=True)
