"""Facts about GGUF files that both backends need: a header check made before any parsing, and
the names of llama.cpp's file types."""

from __future__ import annotations

import stat
import struct
from pathlib import Path

from .errors import ModelFileNotFound, ModelLoadError

__all__ = ["check_gguf_file", "file_type_name"]

_GGUF_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor count, key/value count
_GGUF_VERSIONS = (2, 3)
# Smallest possible encodings: a key/value is a u64 key length and a u32 type; a tensor info is a
# u64 name length, a u32 dimension count, a u32 type and a u64 offset.
_MIN_KV_BYTES = 12
_MIN_TENSOR_INFO_BYTES = 24


def check_gguf_file(path: Path) -> None:
    """Raise unless ``path`` is a readable regular file with a plausible GGUF header.

    Catches what needs no parsing (missing, directory, wrong magic, truncated header, counts
    that cannot fit the file) so that such files never reach the C loader.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelFileNotFound(f"no model file at {path}") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read the model file {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ModelLoadError(f"{path} is a directory, not a GGUF model file")
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"{path} is not a regular file")
    try:
        with path.open("rb") as handle:
            head = handle.read(_GGUF_HEADER.size)
    except OSError as exc:
        raise ModelLoadError(f"cannot read the model file {path}: {exc.strerror or exc}") from None
    if head[:4] != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (magic {head[:4]!r})")
    if len(head) < _GGUF_HEADER.size:
        raise ModelLoadError(f"{path} is truncated: {len(head)} bytes, shorter than a GGUF header")
    _, version, n_tensors, n_kv = _GGUF_HEADER.unpack(head)
    if version not in _GGUF_VERSIONS:
        hint = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
        raise ModelLoadError(f"{path} is GGUF version {version}{hint}; llama.cpp reads versions 2 and 3")
    room = info.st_size - _GGUF_HEADER.size
    if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > room:
        raise ModelLoadError(
            f"{path} is corrupt or truncated: its header lists {n_kv} metadata entries and "
            f"{n_tensors} tensors, which cannot fit in {info.st_size} bytes"
        )


# enum llama_ftype (llama.h), as the quantization names llama.cpp's tools print.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
    18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
    25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M",
    32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0",
    1024: "GUESSED",
}  # fmt: skip


def file_type_name(value: str | None) -> str:
    """The quantization name of a ``general.file_type`` value (the number itself if unknown)."""
    if value is None:
        return "unknown"
    try:
        return _FILE_TYPES.get(int(value), value)
    except ValueError:
        return value
