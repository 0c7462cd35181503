"""Bad files and bad arguments: each is a Python exception, raised before C where it can be, never a crash."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

import llambo
from llambo.api import LoadParams
from llambo.errors import (
    ContextOverflowError,
    InvalidModelId,
    InvalidRequest,
    ModelFileNotFound,
    ModelLoadError,
)
from llambo.gguf_file import check_gguf_file
from llambo.native import model as native_model_module
from llambo.native.model import NativeModel

pytestmark = pytest.mark.native

PARAMS = LoadParams(n_ctx=256)


@pytest.fixture(scope="module")
def model_bytes(default_model_path: Path) -> bytes:
    return default_model_path.read_bytes()


def _no_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to reach the library fail loudly."""

    def refuse() -> None:
        raise AssertionError("the native library must not be reached")

    monkeypatch.setattr(native_model_module, "load_library", refuse)


# ---------------------------------------------------------------------------------------------
# Files rejected in Python
# ---------------------------------------------------------------------------------------------


def test_a_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_c(monkeypatch)
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelFileNotFound, match=r"nope\.gguf") as caught:
        NativeModel(missing, PARAMS)
    assert isinstance(caught.value, FileNotFoundError)
    assert isinstance(caught.value, ModelLoadError)


def test_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_c(monkeypatch)
    with pytest.raises(ModelLoadError, match="directory"):
        NativeModel(tmp_path, PARAMS)


def test_an_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_c(monkeypatch)
    path = tmp_path / "locked.gguf"
    path.write_bytes(b"GGUF" + bytes(100))

    def denied(self: Path, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)  # as root, chmod 0 would not stop the read
    with pytest.raises(ModelLoadError, match=r"cannot read .*Permission denied"):
        NativeModel(path, PARAMS)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"not a GGUF file \(magic b''\)"),
        (b"GGML" + bytes(100), r"not a GGUF file \(magic b'GGML'\)"),
        (b"\x7fELF" + bytes(100), r"not a GGUF file \(magic b'\\x7fELF'\)"),
        (b"GGUF", "truncated"),
        (b"GGUF" + struct.pack("<I", 3) + bytes(4), "truncated"),
        (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "version 1"),
        (b"GGUF" + struct.pack("<IQQ", 3 << 24, 0, 0), "big-endian"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 2**62), "cannot fit"),
        (b"GGUF" + struct.pack("<IQQ", 3, 2**40, 1), "cannot fit"),
    ],
)
def test_headers_rejected_in_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, message: str
) -> None:
    _no_c(monkeypatch)
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        NativeModel(path, PARAMS)


def test_check_gguf_file_accepts_the_default_model(default_model_path: Path) -> None:
    check_gguf_file(default_model_path)


# ---------------------------------------------------------------------------------------------
# Files only llama.cpp can judge: it must refuse them with a reason, and the process lives on
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [4, 16, 24, 100, 1000, 1 << 20, "half", "all but one"])
def test_truncated_models(tmp_path: Path, model_bytes: bytes, size: int | str) -> None:
    cut = {"half": len(model_bytes) // 2, "all but one": len(model_bytes) - 1}.get(str(size), size)
    assert isinstance(cut, int)
    path = tmp_path / f"truncated-{cut}.gguf"
    path.write_bytes(model_bytes[:cut])
    with pytest.raises(ModelLoadError) as caught:
        NativeModel(path, PARAMS)
    assert str(path) in str(caught.value)


def test_the_reason_comes_from_llama_cpp(tmp_path: Path, model_bytes: bytes) -> None:
    path = tmp_path / "half.gguf"
    path.write_bytes(model_bytes[: len(model_bytes) // 2])
    with pytest.raises(ModelLoadError, match="not within the file bounds"):
        NativeModel(path, PARAMS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_after_a_valid_header(tmp_path: Path, model_bytes: bytes, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "random.gguf"
    path.write_bytes(model_bytes[:24] + rng.randbytes(200_000))
    with pytest.raises(ModelLoadError, match=r"llama\.cpp could not load"):
        NativeModel(path, PARAMS)


def test_random_bytes_in_the_metadata(tmp_path: Path, model_bytes: bytes) -> None:
    data = bytearray(model_bytes[: 2 << 20])
    rng = random.Random(7)
    for _ in range(200):
        data[rng.randrange(24, 4000)] = rng.randrange(256)
    path = tmp_path / "scrambled.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError):
        NativeModel(path, PARAMS)


def test_a_failed_load_leaks_no_model(tmp_path: Path, model_bytes: bytes) -> None:
    path = tmp_path / "half.gguf"
    path.write_bytes(model_bytes[: len(model_bytes) // 2])
    live = len(native_model_module._LIVE)
    for _ in range(3):
        with pytest.raises(ModelLoadError):
            NativeModel(path, PARAMS)
    assert len(native_model_module._LIVE) == live


# ---------------------------------------------------------------------------------------------
# Bad arguments through the functional API: TypeError/ValueError before anything native runs
# ---------------------------------------------------------------------------------------------

UNUSED_ID = 31  # never loaded by these tests: argument errors must come before the id is looked up


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"prompt": None}, TypeError),
        ({"prompt": b"bytes"}, TypeError),
        ({"prompt": "x", "max_tokens": -1}, ValueError),
        ({"prompt": "x", "max_tokens": 1.5}, TypeError),
        ({"prompt": "x", "temperature": -0.1}, ValueError),
        ({"prompt": "x", "temperature": float("nan")}, ValueError),
        ({"prompt": "x", "top_p": 0.0}, ValueError),
        ({"prompt": "x", "top_p": 1.5}, ValueError),
        ({"prompt": "x", "min_p": 2.0}, ValueError),
        ({"prompt": "x", "top_k": -1}, ValueError),
        ({"prompt": "x", "seed": -5}, ValueError),
        ({"prompt": "x", "no_such_option": 1}, TypeError),
    ],
)
def test_infer_checks_arguments_first(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        llambo.infer(UNUSED_ID, **kwargs)  # type: ignore[arg-type]


def test_other_functions_check_arguments_first(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_c(monkeypatch)
    with pytest.raises(TypeError):
        llambo.tokenize(UNUSED_ID, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        llambo.tokenize("0", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        llambo.tokenize(True, "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        llambo.detokenize(UNUSED_ID, "abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        llambo.detokenize(UNUSED_ID, [1.0])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        llambo.load_model(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        llambo.load_model("x.gguf", use_mmap="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        llambo.load_model("x.gguf", n_gpu_layers=-2)
    with pytest.raises(ValueError):
        llambo.load_model("x.gguf", n_batch=0)
    with pytest.raises(ValueError, match="choose one of: auto, native, reference"):
        llambo.load_model("x.gguf", backend="cuda")
    with pytest.raises(TypeError):
        llambo.free_model("0")  # type: ignore[arg-type]
    with pytest.raises(InvalidModelId, match="model id 31"):
        llambo.free_model(UNUSED_ID)
    with pytest.raises(InvalidModelId):
        llambo.get_model_info(UNUSED_ID)


def test_a_missing_file_through_load_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_c(monkeypatch)
    with pytest.raises(ModelFileNotFound):
        llambo.load_model(tmp_path / "absent.gguf")
    assert all(entry["path"] != str(tmp_path / "absent.gguf") for entry in llambo.list_models())


def test_a_prompt_longer_than_the_context_through_infer(default_model_path: Path) -> None:
    model_id = llambo.load_model(default_model_path, n_ctx=64)
    try:
        with pytest.raises(ContextOverflowError, match=r"\b64\b"):
            llambo.infer(model_id, "word " * 200, max_tokens=4)
        with pytest.raises(InvalidRequest, match="empty"):
            llambo.infer(model_id, "", max_tokens=4)
    finally:
        llambo.free_model(model_id)
