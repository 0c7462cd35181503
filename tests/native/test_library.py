"""Finding, loading and initialising libllama (``llambo.native.library``).

The search order and the stale-build rule are checked on fake directory trees with a fake opener
(nothing is loaded); the rest loads the real library that the build put in ``llambo/_lib``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llambo.errors import NativeUnavailable
from llambo.native import library, llama_h
from llambo.native.library import ENV_VAR, LIBRARY_FILE, LOGGER_NAME

PIN = "1111111111111111111111111111111111111111"
OLD = "0000000000000000000000000000000000000000"
LEVEL = llama_h.ggml_log_level


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts and ends with no LLAMBO_LIBRARY and no cached library."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    library._reset_for_tests()
    yield
    library._reset_for_tests()


# ---------------------------------------------------------------------------------------------
# Fake trees
# ---------------------------------------------------------------------------------------------


def _lib_file(folder: Path, commit: str | None, *, info_dir: Path | None = None, mtime: float = 0) -> Path:
    """A fake libllama in ``folder``, with a BUILD_INFO.json (in ``info_dir``) unless commit is None."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LIBRARY_FILE
    path.write_bytes(b"not really a library")
    if mtime:
        os.utime(path, (mtime, mtime))
    if commit is not None:
        info = {"llama_cpp_commit": commit, "source_origin": "pinned"}
        ((info_dir or folder) / "BUILD_INFO.json").write_text(json.dumps(info))
    return path


def _checkout(root: Path, pin: str | None = PIN) -> Path:
    """A fake checkout: build_tools/ and (unless pin is None) third_party/pin.json."""
    (root / "build_tools").mkdir(parents=True)
    if pin is not None:
        (root / "third_party").mkdir()
        (root / "third_party" / "pin.json").write_text(json.dumps({"llama_cpp_commit": pin}))
    return root


def _build(root: Path, variant: str, commit: str | None, mtime: float) -> Path:
    """A fake ``build/<variant>/bin/libllama.so`` with BUILD_INFO.json in ``build/<variant>``."""
    build_dir = root / "build" / variant
    return _lib_file(build_dir / "bin", commit, info_dir=build_dir, mtime=mtime)


def _no_library(name: str) -> str | None:
    return None


class FakeOpener:
    """Stands in for dlopen + declare: records what was opened, fails for chosen paths."""

    def __init__(self, failures: dict[Path, Exception] | None = None) -> None:
        self.opened: list[Path] = []
        self.failures = failures or {}

    def __call__(self, path: Path) -> ctypes.CDLL:
        self.opened.append(path)
        if path in self.failures:
            raise self.failures[path]
        return ctypes.CDLL(None)  # any loaded object will do: the search only passes it on


def _outcomes(result: library._SearchResult) -> list[tuple[str, str]]:
    return [(a.source, a.outcome) for a in result.attempts]


# ---------------------------------------------------------------------------------------------
# Candidates, in search order
# ---------------------------------------------------------------------------------------------


def test_search_order_without_env(tmp_path: Path) -> None:
    package_lib = tmp_path / "pkg" / "_lib"
    _lib_file(package_lib, PIN)
    repo = _checkout(tmp_path / "repo")
    older = _build(repo, "cpu", PIN, mtime=1_000_000)
    newer = _build(repo, "cuda", PIN, mtime=2_000_000)
    found = library.candidates(
        env={}, package_lib=package_lib, repo_root=repo, find_library=lambda name: f"lib{name}.so.0"
    )
    assert found == [
        ("package", package_lib / LIBRARY_FILE, False),
        ("checkout build", newer, False),
        ("checkout build", older, False),
        ("system", Path("libllama.so.0"), False),
    ]


def test_env_comes_first_and_is_required(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    target = _lib_file(folder, None)
    for value in (str(target), str(folder)):
        found = library.candidates(
            env={ENV_VAR: value}, package_lib=tmp_path / "none", repo_root=tmp_path, find_library=_no_library
        )
        assert found[0] == (ENV_VAR, target, True)
        assert [required for _, _, required in found[1:]] == [False] * (len(found) - 1)


def test_empty_env_is_unset(tmp_path: Path) -> None:
    found = library.candidates(
        env={ENV_VAR: ""}, package_lib=tmp_path, repo_root=tmp_path, find_library=_no_library
    )
    assert [source for source, _, _ in found] == ["package", "system"]


def test_checkout_builds_only_in_a_checkout(tmp_path: Path) -> None:
    _build(tmp_path, "cpu", PIN, mtime=1_000_000)  # build/ but no build_tools/: e.g. site-packages
    found = library.candidates(
        env={}, package_lib=tmp_path / "_lib", repo_root=tmp_path, find_library=_no_library
    )
    assert [source for source, _, _ in found] == ["package", "system"]
    assert found[-1] == ("system", None, False)


def test_checkout_without_builds(tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    found = library.candidates(
        env={}, package_lib=tmp_path / "_lib", repo_root=repo, find_library=_no_library
    )
    assert found[1] == ("checkout build", None, False)


def test_expected_commit_pin_then_package_build_info(tmp_path: Path) -> None:
    package_lib = tmp_path / "_lib"
    _lib_file(package_lib, OLD)
    repo = _checkout(tmp_path / "repo", pin=PIN)
    assert library.expected_llama_cpp_commit(package_lib=package_lib, repo_root=repo) == PIN
    wheel_site = tmp_path / "site-packages"  # not a checkout: the wheel's own build info counts
    wheel_site.mkdir()
    assert library.expected_llama_cpp_commit(package_lib=package_lib, repo_root=wheel_site) == OLD
    assert library.expected_llama_cpp_commit(package_lib=tmp_path / "nothing", repo_root=wheel_site) is None


def test_the_real_checkout_expects_the_pin(repo_root: Path) -> None:
    pin = json.loads((repo_root / "third_party" / "pin.json").read_text())
    assert library.expected_llama_cpp_commit() == pin["llama_cpp_commit"]


# ---------------------------------------------------------------------------------------------
# The search (fake opener)
# ---------------------------------------------------------------------------------------------


def test_stale_builds_are_skipped_without_being_opened(tmp_path: Path) -> None:
    package_lib = tmp_path / "_lib"
    stale_package = _lib_file(package_lib, OLD)
    repo = _checkout(tmp_path / "repo", pin=PIN)
    stale_build = _build(repo, "cuda", OLD, mtime=2_000_000)
    fresh_build = _build(repo, "cpu", PIN, mtime=1_000_000)
    cands = library.candidates(env={}, package_lib=package_lib, repo_root=repo, find_library=_no_library)
    opener = FakeOpener()

    result = library._search(
        cands, library.expected_llama_cpp_commit(package_lib=package_lib, repo_root=repo), opener
    )

    assert opener.opened == [fresh_build]
    assert result.found is not None
    assert (result.found.source, result.found.path) == ("checkout build", fresh_build)
    assert result.found.verdict.build_info == {"llama_cpp_commit": PIN, "source_origin": "pinned"}
    assert result.found.verdict.warnings == []
    skipped = f"skipped: built from llama.cpp {OLD}, expected {PIN}; rebuild with `nox -s build`"
    assert _outcomes(result) == [
        ("package", skipped),
        ("checkout build", skipped),
        ("checkout build", "loaded"),
        ("system", library.NOT_TRIED),
    ]
    assert [a.path for a in result.attempts[:2]] == [stale_package, stale_build]


def test_explicit_library_is_used_despite_a_commit_mismatch(tmp_path: Path) -> None:
    mine = _lib_file(tmp_path / "mine", OLD)
    cands = library.candidates(
        env={ENV_VAR: str(mine)}, package_lib=tmp_path / "_lib", repo_root=tmp_path, find_library=_no_library
    )
    result = library._search(cands, PIN, FakeOpener())
    assert result.found is not None
    assert result.found.source == ENV_VAR
    assert result.found.verdict.mismatch
    assert f"built from llama.cpp {OLD}, expected {PIN}" in result.found.verdict.warnings[0]


def test_libraries_without_build_info_are_used_with_a_warning(tmp_path: Path) -> None:
    lib = _lib_file(tmp_path / "_lib", None)
    cands = library.candidates(env={}, package_lib=lib.parent, repo_root=tmp_path, find_library=_no_library)
    result = library._search(cands, PIN, FakeOpener())
    assert result.found is not None
    assert result.found.verdict.build_info is None
    assert "unchecked" in result.found.verdict.warnings[0]
    system = library._search([("system", Path("libllama.so.0"), False)], PIN, FakeOpener())
    assert system.found is not None
    assert "unchecked" in system.found.verdict.warnings[0]


def test_a_missing_required_library_stops_the_search(tmp_path: Path) -> None:
    fallback = _lib_file(tmp_path / "_lib", PIN)
    missing = tmp_path / "no" / "such" / LIBRARY_FILE
    opener = FakeOpener()
    result = library._search([(ENV_VAR, missing, True), ("package", fallback, False)], PIN, opener)
    assert result.found is None
    assert opener.opened == []
    assert _outcomes(result) == [
        (ENV_VAR, f"not found: {missing} does not exist"),
        ("package", library.NOT_TRIED),
    ]
    message = library._unavailable_message(result)
    assert ENV_VAR in message and str(missing) in message
    assert str(fallback) not in message
    assert "nox -s build" in message


def test_a_failing_required_library_stops_the_search(tmp_path: Path) -> None:
    mine = _lib_file(tmp_path / "mine", PIN)
    fallback = _lib_file(tmp_path / "_lib", PIN)
    opener = FakeOpener({mine: OSError(f"{mine}: invalid ELF header")})
    result = library._search([(ENV_VAR, mine, True), ("package", fallback, False)], PIN, opener)
    assert result.found is None
    assert opener.opened == [mine]
    assert "invalid ELF header" in library._unavailable_message(result)


def test_a_failing_optional_library_falls_through(tmp_path: Path) -> None:
    broken = _lib_file(tmp_path / "_lib", PIN)
    repo = _checkout(tmp_path / "repo")
    good = _build(repo, "cpu", PIN, mtime=1_000_000)
    cands = library.candidates(env={}, package_lib=broken.parent, repo_root=repo, find_library=_no_library)
    opener = FakeOpener({broken: OSError("libggml.so: cannot open shared object file")})
    result = library._search(cands, PIN, opener)
    assert result.found is not None and result.found.path == good
    assert result.attempts[0].outcome == "failed: libggml.so: cannot open shared object file"


def test_a_loaded_but_unusable_library_taints_the_process(tmp_path: Path) -> None:
    old = _lib_file(tmp_path / "_lib", PIN)
    repo = _checkout(tmp_path / "repo")
    _build(repo, "cpu", PIN, mtime=1_000_000)
    cands = library.candidates(env={}, package_lib=old.parent, repo_root=repo, find_library=_no_library)
    opener = FakeOpener({old: llama_h.MissingSymbolsError(["llama_vocab_n_tokens"])})
    result = library._search(cands, PIN, opener)
    assert result.found is None and result.tainted
    assert opener.opened == [old]  # the checkout build would bind to the loaded ggml: not tried
    message = library._unavailable_message(result)
    assert "llama_vocab_n_tokens" in message and "restart Python" in message


def test_nothing_anywhere_lists_every_candidate(tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    cands = library.candidates(
        env={}, package_lib=tmp_path / "_lib", repo_root=repo, find_library=_no_library
    )
    result = library._search(cands, PIN, FakeOpener())
    message = library._unavailable_message(result)
    assert message.startswith("no usable llama.cpp library")
    assert "package: " in message and "checkout build: -: not found" in message
    assert "system: -: not found by ctypes.util.find_library" in message
    assert library.FIX in message


# ---------------------------------------------------------------------------------------------
# The real library
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def native() -> library.NativeLibrary:
    try:
        return library.load_library()
    except NativeUnavailable as exc:
        pytest.fail(f"the native library must be built before the tests: {exc}")


@pytest.mark.native
def test_load_the_built_library(native: library.NativeLibrary) -> None:
    assert native.source == "package"
    assert native.path == library.PACKAGE_LIB / LIBRARY_FILE
    assert native.build_info is not None
    assert native.build_info["llama_cpp_commit"] == library.expected_llama_cpp_commit()
    assert native.system_info
    assert isinstance(native.supports_gpu_offload, bool)
    assert native.supports_gpu_offload == bool(native.build_info.get("cuda"))
    assert native.warnings == ()
    assert native.lib.llama_vocab_n_tokens.restype is ctypes.c_int32
    assert native.lib.llama_decode.argtypes == llama_h.FUNCTIONS["llama_decode"].argtypes
    assert library.load_library() is native  # cached


@pytest.mark.native
def test_library_status_when_available(native: library.NativeLibrary) -> None:
    status = library.library_status()
    assert status["available"] is True
    assert status["path"] == str(native.path)
    assert status["source"] == "package"
    assert status["system_info"] == native.system_info
    assert "reason" not in status
    assert status["candidates"][0] == {"source": "package", "path": str(native.path), "outcome": "loaded"}
    json.dumps(status)  # diagnostics can print it as it is


@pytest.mark.native
def test_concurrent_first_loads_share_one_result() -> None:
    results: list[library.NativeLibrary] = []
    threads = [threading.Thread(target=lambda: results.append(library.load_library())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert all(result is results[0] for result in results)


@pytest.mark.native
def test_env_naming_a_missing_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / LIBRARY_FILE
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(NativeUnavailable) as caught:
        library.load_library()
    assert str(missing) in str(caught.value)
    assert ENV_VAR in str(caught.value)
    status = library.library_status()
    assert status["available"] is False
    assert str(missing) in status["reason"]
    assert status["candidates"][0]["outcome"].startswith("not found")
    # A failure is not cached: once the variable is gone the package's library loads.
    monkeypatch.delenv(ENV_VAR)
    assert library.load_library().source == "package"


@pytest.mark.native
def test_env_naming_a_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(library.PACKAGE_LIB))
    native = library.load_library()
    assert native.source == ENV_VAR
    assert native.path == library.PACKAGE_LIB / LIBRARY_FILE
    assert native.build_info is not None
    assert native.system_info


@pytest.mark.native
def test_env_naming_a_file_that_is_not_a_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    junk = tmp_path / LIBRARY_FILE
    junk.write_bytes(b"this is not an ELF file\n" * 8)
    with pytest.raises(OSError) as loader:
        ctypes.CDLL(str(junk))
    monkeypatch.setenv(ENV_VAR, str(junk))
    with pytest.raises(NativeUnavailable) as caught:
        library.load_library()
    assert str(loader.value) in str(caught.value)
    assert ENV_VAR in str(caught.value)
    assert library.FIX in str(caught.value)


def test_importing_loads_nothing() -> None:
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc/self/maps")
    code = (
        "import logging, llambo.native.library\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('libllama' in maps, logging.getLogger('llambo.native').level)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", str(logging.WARNING)]


def test_an_application_log_level_is_kept() -> None:
    code = (
        "import logging\n"
        "logging.getLogger('llambo.native').setLevel(logging.INFO)\n"
        "import llambo.native.library\n"
        "print(logging.getLogger('llambo.native').level)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(logging.INFO)


# ---------------------------------------------------------------------------------------------
# The log bridge
# ---------------------------------------------------------------------------------------------


def _records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER_NAME]


def test_log_lines_are_assembled_and_mapped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    bridge = library._LogBridge(logging.getLogger(LOGGER_NAME))
    calls: list[tuple[int, bytes | None]] = [
        (LEVEL.GGML_LOG_LEVEL_INFO, b"llama_model_loader: loaded meta data"),
        (LEVEL.GGML_LOG_LEVEL_CONT, b" with 3 key-value pairs\n"),
        (LEVEL.GGML_LOG_LEVEL_WARN, b"first warning\nsecond warning\n"),
        (LEVEL.GGML_LOG_LEVEL_DEBUG, b"a debug line\n"),
        (LEVEL.GGML_LOG_LEVEL_INFO, b"load_tensors: "),
        (LEVEL.GGML_LOG_LEVEL_CONT, b"."),
        (LEVEL.GGML_LOG_LEVEL_CONT, b"."),
        (LEVEL.GGML_LOG_LEVEL_CONT, b".\n"),
        (LEVEL.GGML_LOG_LEVEL_ERROR, b"error: "),
        (LEVEL.GGML_LOG_LEVEL_CONT, b"100% "),  # a % must not be taken for a format
        (LEVEL.GGML_LOG_LEVEL_CONT, b"broken\n"),
        (LEVEL.GGML_LOG_LEVEL_NONE, b"continues at ERROR\n"),
        (LEVEL.GGML_LOG_LEVEL_INFO, b"unterminated"),
        (LEVEL.GGML_LOG_LEVEL_WARN, b"ends the unterminated one\r\n"),
        (LEVEL.GGML_LOG_LEVEL_INFO, b"bad \xff byte, \xc3"),  # a UTF-8 character split over calls
        (LEVEL.GGML_LOG_LEVEL_CONT, b"\xa9 whole\n\n   \n"),  # blank lines are dropped
        (LEVEL.GGML_LOG_LEVEL_INFO, b"trailing"),
    ]
    for level, text in calls:
        bridge(level, text, None)
    assert _records(caplog) == [
        (logging.INFO, "llama_model_loader: loaded meta data with 3 key-value pairs"),
        (logging.WARNING, "first warning"),
        (logging.WARNING, "second warning"),
        (logging.DEBUG, "a debug line"),
        (logging.INFO, "load_tensors: ..."),
        (logging.ERROR, "error: 100% broken"),
        (logging.ERROR, "continues at ERROR"),
        (logging.INFO, "unterminated"),
        (logging.WARNING, "ends the unterminated one"),
        (logging.INFO, "bad \ufffd byte, \u00e9 whole"),
    ]
    bridge.flush()
    assert _records(caplog)[-1] == (logging.INFO, "trailing")


def test_log_continuation_before_any_message_is_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    bridge = library._LogBridge(logging.getLogger(LOGGER_NAME))
    bridge(LEVEL.GGML_LOG_LEVEL_NONE, b"no level yet\n", None)
    bridge(LEVEL.GGML_LOG_LEVEL_CONT, b"still none\n", None)
    bridge(99, b"unknown level\n", None)
    assert _records(caplog) == [
        (logging.INFO, "no level yet"),
        (logging.INFO, "still none"),
        (logging.INFO, "unknown level"),
    ]


def test_log_bridge_never_raises() -> None:
    class Exploding(logging.Logger):
        def log(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("handler failure")

    bridge = library._LogBridge(Exploding("exploding"))
    bridge(LEVEL.GGML_LOG_LEVEL_ERROR, b"boom\n", None)  # must return normally
    bridge(LEVEL.GGML_LOG_LEVEL_INFO, None, None)
    bridge("not a level", b"x\n", None)  # type: ignore[arg-type]


def test_errors_are_visible_at_the_default_level(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger(LOGGER_NAME)
    assert logger.level == logging.WARNING  # set by the module, as nobody else set one
    caplog.set_level(logging.DEBUG)  # the root logger only: llambo.native keeps its own level
    bridge = library._LogBridge(logger)
    bridge(LEVEL.GGML_LOG_LEVEL_INFO, b"chatty\n", None)
    bridge(LEVEL.GGML_LOG_LEVEL_DEBUG, b"chattier\n", None)
    bridge(LEVEL.GGML_LOG_LEVEL_ERROR, b"something failed\n", None)
    assert _records(caplog) == [(logging.ERROR, "something failed")]


@pytest.mark.native
def test_llama_cpp_errors_reach_python_logging(
    native: library.NativeLibrary, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER_NAME)
    missing = tmp_path / "missing.gguf"
    params = native.lib.llama_model_default_params()
    model = native.lib.llama_model_load_from_file(str(missing).encode(), params)
    assert model is None
    errors = [message for level, message in _records(caplog) if level == logging.ERROR]
    assert errors, "llama.cpp logged no error through the bridge"
    assert any(str(missing) in message for message in errors)
