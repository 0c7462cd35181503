"""GGUF files for the reference backend: metadata, hyper-parameters and float32 weights.

The file is memory-mapped and its header parsed here with ``struct`` (the layout is llama.cpp's
``gguf.cpp``: magic, version, counts, key/values, tensor infos, aligned data). ``gguf.GGUFReader``
would do the same, but it builds a numpy view per string and spent 2.3 s on the default model's
98k vocabulary and merge strings alone, more than the whole load budget; this parser takes ~0.1 s.
Dequantisation itself is ``gguf.quants.dequantize``.

Weights are dequantised to float32 once, tensor by tensor and in row chunks, into one preallocated
arena. Every matrix is exposed as ``(out, in)`` like the GGUF tensor and the forward pass computes
``x @ W.T``; the *storage* is chosen for OpenBLAS's gemv, which decode is bound by. Matrices with
``in <= out`` (QKV, output, gate+up, attn_output) are stored transposed, ``(in, out)`` C-contiguous,
and ``ffn_down`` (``in > out``) as ``(out, in)``: on this 2-core machine gate+up took 237 us stored
``(in, out)`` against 375 us, ffn_down 125 us stored ``(out, in)`` against 163 us, and the decode
matmuls ~20 ms in all against 27 ms with every matrix ``(out, in)``. Prefill (sgemm) is the same
either way. Q/K/V are fused into one ``wqkv`` matrix and gate/up into one ``w_gate_up`` (views
expose the parts), so each layer does four large matmuls; no second copy of any weight exists.

The arena of a model of 64 MiB or more (in float32) can live in a dequantisation cache,
``<cache>/dequant/<key>.npy``, keyed by the GGUF's resolved path, size and mtime (hashing it would
add ~0.2 s per 100 MB to every load, and model files are replaced, not edited in place) plus the
layout version. A later load memory-maps it read-only instead of dequantising. The file is written
under a temporary name and renamed once flushed; a ``.source`` file beside it names the GGUF, so
entries whose model is gone (or was replaced) are removed whenever a new entry is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import shutil
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
import numpy.typing as npt

from .._fetch import cache_dir
from ..errors import ModelFileNotFound, ModelLoadError

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "GGUFFile",
    "HParams",
    "LayerWeights",
    "TensorInfo",
    "Weights",
    "dequant_cache_dir",
    "load_weights",
    "read_hparams",
]

F32Array = npt.NDArray[np.float32]
RopeType = Literal["norm", "neox"]

log = logging.getLogger(__name__)

# llama.cpp's rope mode per architecture (llama_model_rope_type): llama's converter permutes Q/K
# for NORM (adjacent pairs); qwen2 keeps the Hugging Face order and uses NEOX (halves).
SUPPORTED_ARCHITECTURES: dict[str, RopeType] = {"llama": "norm", "qwen2": "neox"}

CACHE_ENV = "LLAMBO_REFERENCE_CACHE"
"""Set to 0/false/off/no to neither read nor write the dequantisation cache."""
_LAYOUT_VERSION = 2  # bump when the arena layout changes: old cache files are then ignored
_ALIGN = 16  # float32 elements (64 bytes) between arrays in the arena
_CHUNK_ELEMENTS = 1 << 18  # elements dequantised per step: temporaries stay in cache
_FREE_SPACE_FACTOR = 2  # write a cache file only if this many times its size is free
_CACHE_MIN_BYTES = 64 << 20  # smaller models dequantise in well under 0.2 s: not worth a file
_STALE_TMP_SECONDS = 24 * 3600  # a temporary file this old was left by a writer that died

# ---------------------------------------------------------------------------------------------
# The GGUF container
# ---------------------------------------------------------------------------------------------

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")
_V = gguf.GGUFValueType
_SCALARS: dict[int, struct.Struct] = {
    _V.UINT8: struct.Struct("<B"),
    _V.INT8: struct.Struct("<b"),
    _V.UINT16: struct.Struct("<H"),
    _V.INT16: struct.Struct("<h"),
    _V.UINT32: struct.Struct("<I"),
    _V.INT32: struct.Struct("<i"),
    _V.FLOAT32: struct.Struct("<f"),
    _V.BOOL: struct.Struct("<?"),
    _V.UINT64: struct.Struct("<Q"),
    _V.INT64: struct.Struct("<q"),
    _V.FLOAT64: struct.Struct("<d"),
}
_ARRAY_DTYPES: dict[int, str] = {
    _V.UINT8: "<u1", _V.INT8: "<i1", _V.UINT16: "<u2", _V.INT16: "<i2", _V.UINT32: "<u4",
    _V.INT32: "<i4", _V.FLOAT32: "<f4", _V.BOOL: "?", _V.UINT64: "<u8", _V.INT64: "<i8",
    _V.FLOAT64: "<f8",
}  # fmt: skip


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are and how to read them."""

    name: str
    type_id: int  # ggml_type
    shape: tuple[int, ...]  # numpy order: GGUF's ne[] reversed, so the last axis is ne0
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        try:
            return gguf.GGMLQuantizationType(self.type_id).name
        except ValueError:
            return f"unknown type {self.type_id}"

    @property
    def n_rows(self) -> int:
        """Rows of ``shape[-1]`` elements (every axis but the last, multiplied)."""
        return int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1


class _Cursor:
    """Reads little-endian GGUF values from a buffer, turning overruns into ModelLoadError."""

    def __init__(self, buffer: mmap.mmap, path: Path, offset: int) -> None:
        self.buffer = buffer
        self.path = path
        self.offset = offset
        self.size = len(buffer)

    def _need(self, n: int) -> None:
        if n < 0 or self.offset + n > self.size:
            raise ModelLoadError(
                f"{self.path} is truncated or corrupt: a GGUF field runs past the end of the file"
            )

    def unpack(self, fmt: struct.Struct) -> Any:
        self._need(fmt.size)
        (value,) = fmt.unpack_from(self.buffer, self.offset)
        self.offset += fmt.size
        return value

    def string(self) -> str:
        n = self.unpack(_U64)
        self._need(n)
        text = self.buffer[self.offset : self.offset + n].decode("utf-8", "replace")
        self.offset += n
        return text

    def strings(self, count: int) -> list[str]:
        """``count`` strings, in one tight loop (the vocabulary is ~50k of them)."""
        buffer, unpack, offset, size = self.buffer, _U64.unpack_from, self.offset, self.size
        out: list[str] = []
        append = out.append
        try:
            for _ in range(count):
                (n,) = unpack(buffer, offset)
                offset += 8
                end = offset + n
                if end > size:
                    raise struct.error("overrun")
                append(buffer[offset:end].decode("utf-8", "replace"))
                offset = end
        except struct.error:
            raise ModelLoadError(
                f"{self.path} is truncated or corrupt: a string array runs past the end"
            ) from None
        self.offset = offset
        return out

    def value(self, type_id: int) -> Any:
        scalar = _SCALARS.get(type_id)
        if scalar is not None:
            return self.unpack(scalar)
        if type_id == _V.STRING:
            return self.string()
        if type_id == _V.ARRAY:
            item_type = self.unpack(_U32)
            count = self.unpack(_U64)
            if item_type == _V.STRING:
                return self.strings(count)
            dtype = _ARRAY_DTYPES.get(item_type)
            if dtype is not None:
                nbytes = count * np.dtype(dtype).itemsize
                self._need(nbytes)
                items = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.offset).tolist()
                self.offset += nbytes
                return items
            return [self.value(item_type) for _ in range(count)]
        raise ModelLoadError(f"{self.path} has a metadata value of unknown GGUF type {type_id}")


class GGUFFile:
    """A GGUF file, memory-mapped: its metadata as plain Python values and its tensors' raw bytes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.fspath(path)).expanduser()
        try:
            with self.path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < _HEADER.size:
                    raise ModelLoadError(f"{self.path} is too short ({size} bytes) to be a GGUF file")
                self._mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise ModelFileNotFound(f"no model file at {self.path}") from None
        except IsADirectoryError:
            raise ModelLoadError(f"{self.path} is a directory, not a GGUF model file") from None
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read the model file {self.path}: {exc}") from None
        self._bytes: npt.NDArray[np.uint8] | None = np.frombuffer(self._mmap, dtype=np.uint8)
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    def _parse(self) -> None:
        magic, version, n_tensors, n_kv = _HEADER.unpack_from(self._mmap, 0)
        if magic != _MAGIC:
            raise ModelLoadError(f"{self.path} is not a GGUF file (magic {magic!r})")
        if version not in _VERSIONS:
            raise ModelLoadError(f"{self.path} is GGUF version {version}; versions 2 and 3 are supported")
        self.version: int = version
        cursor = _Cursor(self._mmap, self.path, _HEADER.size)
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cursor.string()
            self.metadata[key] = cursor.value(cursor.unpack(_U32))
        infos: list[tuple[str, tuple[int, ...], int, int]] = []
        for _ in range(n_tensors):
            name = cursor.string()
            n_dims = cursor.unpack(_U32)
            if not 1 <= n_dims <= 4:
                raise ModelLoadError(f"{self.path}: tensor {name!r} has {n_dims} dimensions")
            dims = tuple(cursor.unpack(_U64) for _ in range(n_dims))
            infos.append((name, dims[::-1], cursor.unpack(_U32), cursor.unpack(_U64)))
        alignment = self.metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ModelLoadError(f"{self.path}: general.alignment {alignment!r} is not a power of two")
        data_start = -(-cursor.offset // alignment) * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, type_id, offset in infos:
            if name in self.tensors:
                raise ModelLoadError(f"{self.path}: tensor {name!r} appears twice")
            start = data_start + offset
            self.tensors[name] = info = TensorInfo(
                name, type_id, shape, start, _tensor_nbytes(shape, type_id)
            )
            if info.nbytes >= 0 and start + info.nbytes > len(self._mmap):
                raise ModelLoadError(
                    f"{self.path} is truncated: tensor {name!r} ends at byte {start + info.nbytes}, "
                    f"past the end of the {len(self._mmap)}-byte file"
                )

    def raw(self, name: str) -> npt.NDArray[np.uint8]:
        """The tensor's bytes as ``(n_rows, bytes_per_row)`` (a read-only view of the mapping)."""
        info = self.tensors[name]
        if self._bytes is None:
            raise ValueError(f"{self.path} is closed")
        if info.nbytes < 0:
            raise ModelLoadError(
                f"{self.path}: tensor {name!r} has type {info.type_name}, which cannot be read"
            )
        data = self._bytes[info.offset : info.offset + info.nbytes]
        return data.reshape(info.n_rows, -1)

    def dequantize(self, name: str) -> F32Array:
        """The whole tensor as float32, in its numpy shape (a new array; for tests and tools)."""
        info = self.tensors[name]
        out = np.empty((info.n_rows, info.shape[-1]), dtype=np.float32)
        _dequantize_rows(self.raw(name), info, out)
        return out.reshape(info.shape)

    def close(self) -> None:
        """Drop the mapping (it is unmapped once no array view of it is left)."""
        self._bytes = None
        with contextlib.suppress(BufferError, ValueError):  # a view still alive: GC unmaps later
            self._mmap.close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tensor_nbytes(shape: tuple[int, ...], type_id: int) -> int:
    """Bytes of a tensor, or -1 when its type is unknown to ``gguf`` or its rows do not fit blocks."""
    try:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        return -1
    if shape[-1] % block:
        return -1
    return int(np.prod(shape, dtype=np.int64)) // block * type_size


def _dequantize_rows(raw: npt.NDArray[np.uint8], info: TensorInfo, out: np.ndarray) -> None:
    """Dequantise ``raw`` (rows of blocks) into ``out`` (rows of floats), a chunk of rows at a time.

    ``out`` may be any writable view, e.g. a transposed one; only one chunk's temporaries exist.
    """
    qtype = gguf.GGMLQuantizationType(info.type_id)
    n_rows, n_cols = out.shape
    step = max(1, _CHUNK_ELEMENTS // n_cols)
    for row in range(0, n_rows, step):
        chunk = gguf.quants.dequantize(raw[row : row + step], qtype)
        out[row : row + step] = chunk.reshape(-1, n_cols)


def _check_type_supported(gfile: GGUFFile, info: TensorInfo) -> None:
    """Fail now, naming the tensor and its type, if ``gguf`` cannot dequantise it."""
    if info.nbytes < 0:
        raise ModelLoadError(
            f"{gfile.path}: tensor {info.name!r} has type {info.type_name}, which the reference backend "
            "cannot read (unknown to the gguf package, or rows not a whole number of blocks)"
        )
    try:
        gguf.quants.dequantize(gfile.raw(info.name)[:1], gguf.GGMLQuantizationType(info.type_id))
    except NotImplementedError:
        raise ModelLoadError(
            f"{gfile.path}: tensor {info.name!r} has type {info.type_name}, which the reference backend "
            "cannot dequantise"
        ) from None


# ---------------------------------------------------------------------------------------------
# Hyper-parameters
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HParams:
    """What the forward pass needs to know about a model, read from its GGUF metadata."""

    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx_train: int
    rope_base: float
    n_rot: int
    rope_type: RopeType
    rope_scaling: Literal["none", "linear"]
    rope_scale_factor: float  # positions are divided by it (linear scaling); 1.0 without scaling
    rms_eps: float
    tied_output: bool

    @property
    def n_embd_q(self) -> int:
        return self.n_head * self.head_dim

    @property
    def n_embd_kv(self) -> int:
        return self.n_head_kv * self.head_dim

    @property
    def rope_freq_scale(self) -> float:
        """llama.cpp's ``freq_scale``: every rotation angle is multiplied by it."""
        return 1.0 / self.rope_scale_factor


def _key(meta: dict[str, Any], path: Path, key: str, kind: type, default: Any = None) -> Any:
    value = meta.get(key, default)
    if value is None:
        raise ModelLoadError(f"{path}: the GGUF metadata has no {key!r}, which the model needs")
    if isinstance(value, list) and kind is int:  # per-layer arrays (llama.cpp's get_key_or_arr)
        if not value or any(v != value[0] for v in value):
            raise ModelLoadError(f"{path}: {key} varies per layer ({value[:8]}...), which is not supported")
        value = value[0]
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise ModelLoadError(f"{path}: GGUF key {key!r} is {value!r}, expected {kind.__name__}")


def read_hparams(gfile: GGUFFile) -> HParams:
    """The hyper-parameters of a llama or qwen2 GGUF; anything else raises ModelLoadError."""
    meta, path = gfile.metadata, gfile.path
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelLoadError(f"{path}: the GGUF metadata has no general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: architecture {arch!r} is not supported by the reference backend "
            f"(it runs {', '.join(SUPPORTED_ARCHITECTURES)}); use the native backend"
        )

    def key(name: str, kind: type, default: Any = None) -> Any:
        return _key(meta, path, f"{arch}.{name}", kind, default)

    n_embd = key("embedding_length", int)
    n_head = key("attention.head_count", int)
    if n_head <= 0 or n_embd <= 0:
        raise ModelLoadError(f"{path}: n_embd {n_embd} and n_head {n_head} must be positive")
    n_head_kv = key("attention.head_count_kv", int, n_head)
    head_dim = key("attention.key_length", int, n_embd // n_head)
    if key("attention.value_length", int, head_dim) != head_dim:
        raise ModelLoadError(f"{path}: key and value head sizes differ, which is not supported")
    if n_head_kv <= 0 or n_head % n_head_kv:
        raise ModelLoadError(f"{path}: {n_head} query heads cannot share {n_head_kv} key/value heads")
    n_rot = key("rope.dimension_count", int, head_dim)
    if n_rot % 2 or not 0 < n_rot <= head_dim:
        raise ModelLoadError(f"{path}: rope dimension count {n_rot} must be even and <= head size {head_dim}")

    # As llama.cpp reads them: the type defaults to linear, the factor to none (1).
    scaling = key("rope.scaling.type", str, "linear")
    factor = meta.get(f"{arch}.rope.scaling.factor", meta.get(f"{arch}.rope.scale_linear", 0.0))
    if not isinstance(factor, (int, float)) or factor < 0:
        raise ModelLoadError(f"{path}: rope scaling factor {factor!r} is not a positive number")
    factor = float(factor) or 1.0
    if scaling == "none":
        factor = 1.0
    elif scaling != "linear":
        raise ModelLoadError(
            f"{path}: rope scaling type {scaling!r} is not supported by the reference backend "
            "(only none and linear); use the native backend"
        )

    if "token_embd.weight" not in gfile.tensors:
        raise ModelLoadError(f"{path}: the model has no token_embd.weight tensor")
    return HParams(
        arch=arch,
        n_vocab=gfile.tensors["token_embd.weight"].shape[0],
        n_embd=n_embd,
        n_layer=key("block_count", int),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=key("feed_forward_length", int),
        n_ctx_train=key("context_length", int, 0),
        rope_base=key("rope.freq_base", float, 10000.0),
        n_rot=n_rot,
        rope_type=SUPPORTED_ARCHITECTURES[arch],
        rope_scaling="none" if factor == 1.0 else "linear",
        rope_scale_factor=factor,
        rms_eps=key("attention.layer_norm_rms_epsilon", float),
        tied_output="output.weight" not in gfile.tensors,
    )


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerWeights:
    """One transformer block's weights; matrices are ``(out, in)`` (see the module docstring on storage)."""

    attn_norm: F32Array  # (n_embd,)
    wqkv: F32Array  # (n_embd_q + 2 * n_embd_kv, n_embd): Q, K and V fused
    bqkv: F32Array | None  # (n_embd_q + 2 * n_embd_kv,) or None (llama has no biases)
    wo: F32Array  # (n_embd, n_embd_q)
    ffn_norm: F32Array  # (n_embd,)
    w_gate_up: F32Array  # (2 * n_ff, n_embd): gate and up fused
    w_down: F32Array  # (n_embd, n_ff)
    n_embd_q: int
    n_embd_kv: int

    @property
    def wq(self) -> F32Array:  # (n_embd_q, n_embd)
        return self.wqkv[: self.n_embd_q]

    @property
    def wk(self) -> F32Array:  # (n_embd_kv, n_embd)
        return self.wqkv[self.n_embd_q : self.n_embd_q + self.n_embd_kv]

    @property
    def wv(self) -> F32Array:  # (n_embd_kv, n_embd)
        return self.wqkv[self.n_embd_q + self.n_embd_kv :]

    @property
    def bq(self) -> F32Array | None:
        return None if self.bqkv is None else self.bqkv[: self.n_embd_q]

    @property
    def bk(self) -> F32Array | None:
        return None if self.bqkv is None else self.bqkv[self.n_embd_q : self.n_embd_q + self.n_embd_kv]

    @property
    def bv(self) -> F32Array | None:
        return None if self.bqkv is None else self.bqkv[self.n_embd_q + self.n_embd_kv :]

    @property
    def w_gate(self) -> F32Array:  # (n_ff, n_embd)
        return self.w_gate_up[: self.w_gate_up.shape[0] // 2]

    @property
    def w_up(self) -> F32Array:  # (n_ff, n_embd)
        return self.w_gate_up[self.w_gate_up.shape[0] // 2 :]


@dataclass(frozen=True)
class Weights:
    """Every weight of a model in float32, all views into one arena (in memory or a cache file)."""

    tok_embd: F32Array  # (n_vocab, n_embd)
    output_norm: F32Array  # (n_embd,)
    output: F32Array  # (n_vocab, n_embd); the same array object as tok_embd when tied
    layers: tuple[LayerWeights, ...]
    rope_freqs: F32Array | None  # (n_rot / 2,) llama3-style frequency divisors, or None
    arena: F32Array = field(repr=False)  # (n_floats,) the storage behind every array above
    cached: bool = False  # whether the arena is a memory-mapped cache file

    @property
    def nbytes(self) -> int:
        return int(self.arena.nbytes)


@dataclass(frozen=True)
class _Part:
    """One GGUF tensor filling rows ``row0:row0 + rows`` of a destination array."""

    tensor: TensorInfo
    row0: int
    rows: int


@dataclass(frozen=True)
class _Slot:
    """One array of the arena: its exposed shape, where it starts and which tensors fill it."""

    name: str
    shape: tuple[int, ...]  # (out, in) for matrices, (n,) for vectors
    offset: int  # in float32 elements
    parts: tuple[_Part, ...]

    @property
    def stored_transposed(self) -> bool:
        """Whether the matrix is stored ``(in, out)`` (see the module docstring for why)."""
        return len(self.shape) == 2 and self.shape[1] <= self.shape[0]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class _Planner:
    """Lays out the arena: which GGUF tensors go where, with every shape and type checked."""

    def __init__(self, gfile: GGUFFile, hp: HParams) -> None:
        self.gfile = gfile
        self.hp = hp
        self.slots: dict[str, _Slot] = {}
        self.used: set[str] = set()
        self.size = 0

    def _tensor(self, name: str, shape: tuple[int, ...]) -> TensorInfo:
        info = self.gfile.tensors.get(name)
        if info is None:
            raise ModelLoadError(f"{self.gfile.path}: the model has no tensor {name!r}")
        if info.shape != shape:
            raise ModelLoadError(
                f"{self.gfile.path}: tensor {name!r} has shape {info.shape}, expected {shape} "
                "(as (out, in) from the hyper-parameters)"
            )
        _check_type_supported(self.gfile, info)
        self.used.add(name)
        return info

    def add(self, slot: str, shape: tuple[int, ...], names: list[str], rows: list[int]) -> None:
        """A slot of ``shape`` filled by ``names`` stacked along the first axis (``rows`` each)."""
        parts, row0 = [], 0
        for name, n in zip(names, rows, strict=True):
            parts.append(_Part(self._tensor(name, (n, *shape[1:])), row0, n))
            row0 += n
        assert row0 == shape[0]
        self.slots[slot] = _Slot(slot, shape, self.size, tuple(parts))
        self.size += -(-int(np.prod(shape, dtype=np.int64)) // _ALIGN) * _ALIGN

    def has(self, name: str) -> bool:
        return name in self.gfile.tensors


def _plan(gfile: GGUFFile, hp: HParams) -> _Planner:
    plan = _Planner(gfile, hp)
    e, q, kv, ff = hp.n_embd, hp.n_embd_q, hp.n_embd_kv, hp.n_ff
    plan.add("tok_embd", (hp.n_vocab, e), ["token_embd.weight"], [hp.n_vocab])
    plan.add("output_norm", (e,), ["output_norm.weight"], [e])
    if not hp.tied_output:
        plan.add("output", (hp.n_vocab, e), ["output.weight"], [hp.n_vocab])
    if hp.arch == "llama" and plan.has("rope_freqs.weight"):
        plan.add("rope_freqs", (hp.n_rot // 2,), ["rope_freqs.weight"], [hp.n_rot // 2])
    for i in range(hp.n_layer):
        b = f"blk.{i}"
        plan.add(f"{b}.attn_norm", (e,), [f"{b}.attn_norm.weight"], [e])
        if plan.has(f"{b}.attn_qkv.weight"):
            plan.add(f"{b}.wqkv", (q + 2 * kv, e), [f"{b}.attn_qkv.weight"], [q + 2 * kv])
        else:
            names = [f"{b}.attn_q.weight", f"{b}.attn_k.weight", f"{b}.attn_v.weight"]
            plan.add(f"{b}.wqkv", (q + 2 * kv, e), names, [q, kv, kv])
        if plan.has(f"{b}.attn_qkv.bias"):
            plan.add(f"{b}.bqkv", (q + 2 * kv,), [f"{b}.attn_qkv.bias"], [q + 2 * kv])
        elif any(plan.has(f"{b}.attn_{x}.bias") for x in "qkv"):
            names = [f"{b}.attn_q.bias", f"{b}.attn_k.bias", f"{b}.attn_v.bias"]
            plan.add(f"{b}.bqkv", (q + 2 * kv,), names, [q, kv, kv])
        plan.add(f"{b}.wo", (e, q), [f"{b}.attn_output.weight"], [e])
        plan.add(f"{b}.ffn_norm", (e,), [f"{b}.ffn_norm.weight"], [e])
        plan.add(f"{b}.w_gate_up", (2 * ff, e), [f"{b}.ffn_gate.weight", f"{b}.ffn_up.weight"], [ff, ff])
        plan.add(f"{b}.w_down", (e, ff), [f"{b}.ffn_down.weight"], [e])
    unused = sorted(set(gfile.tensors) - plan.used)
    if unused:
        shown = ", ".join(unused[:6]) + (f" and {len(unused) - 6} more" if len(unused) > 6 else "")
        raise ModelLoadError(
            f"{gfile.path}: the reference backend does not know what to do with tensor(s) {shown} "
            f"of this {hp.arch} model (a variant it does not implement); use the native backend"
        )
    return plan


def _view(arena: F32Array, slot: _Slot) -> F32Array:
    """The slot's exposed array: vectors as is, matrices ``(out, in)`` over either storage order."""
    flat = arena[slot.offset : slot.offset + slot.size]
    if len(slot.shape) == 1:
        return flat
    out_dim, in_dim = slot.shape
    matrix: F32Array = flat.reshape(in_dim, out_dim).T if slot.stored_transposed else flat.reshape(slot.shape)
    return matrix


def _fill(gfile: GGUFFile, arena: F32Array, plan: _Planner) -> None:
    for slot in plan.slots.values():
        view = _view(arena, slot)
        for part in slot.parts:
            info = part.tensor
            dest = view[part.row0 : part.row0 + part.rows]  # (rows, in) view, or (rows,) for vectors
            _dequantize_rows(gfile.raw(info.name), info, dest if dest.ndim == 2 else dest[None, :])


def _weights(arena: F32Array, plan: _Planner, hp: HParams, *, cached: bool) -> Weights:
    arrays = {name: _view(arena, slot) for name, slot in plan.slots.items()}
    tok_embd = arrays["tok_embd"]
    layers = tuple(
        LayerWeights(
            attn_norm=arrays[f"blk.{i}.attn_norm"],
            wqkv=arrays[f"blk.{i}.wqkv"],
            bqkv=arrays.get(f"blk.{i}.bqkv"),
            wo=arrays[f"blk.{i}.wo"],
            ffn_norm=arrays[f"blk.{i}.ffn_norm"],
            w_gate_up=arrays[f"blk.{i}.w_gate_up"],
            w_down=arrays[f"blk.{i}.w_down"],
            n_embd_q=hp.n_embd_q,
            n_embd_kv=hp.n_embd_kv,
        )
        for i in range(hp.n_layer)
    )
    return Weights(
        tok_embd=tok_embd,
        output_norm=arrays["output_norm"],
        output=arrays.get("output", tok_embd),
        layers=layers,
        rope_freqs=arrays.get("rope_freqs"),
        arena=arena,
        cached=cached,
    )


# ---------------------------------------------------------------------------------------------
# The dequantisation cache
# ---------------------------------------------------------------------------------------------


def dequant_cache_dir() -> Path:
    """Where dequantised arenas are kept: ``<cache>/dequant``."""
    return cache_dir() / "dequant"


def _cache_enabled(cache: bool | None) -> bool:
    if cache is not None:
        return cache
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def _cache_names(path: Path) -> tuple[Path, str]:
    """(the resolved model path, the cache file name for this exact file version and layout)."""
    resolved = path.resolve()
    st = resolved.stat()
    prefix = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:16]
    version = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:{_LAYOUT_VERSION}".encode()).hexdigest()[:16]
    return resolved, f"{prefix}-{version}.npy"


def _open_cached(file: Path, n_floats: int) -> F32Array | None:
    """The cached arena memory-mapped read-only, or None if absent or not the expected size."""
    try:
        mapped = np.load(file, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if mapped.dtype != np.float32 or mapped.shape != (n_floats,):
        log.warning("ignoring the dequantisation cache %s: it does not match the model", file)
        return None
    arena: F32Array = np.asarray(mapped)  # a plain ndarray: memmap views are slower to slice
    return arena


def _finish_cache_file(handle: Any, tmp: Path, final: Path, source: Path) -> None:
    """Flush the new cache file to disk, rename it into place and prune entries that are stale."""
    try:
        os.fsync(handle.fileno())
        handle.close()
        final.with_suffix(".source").write_text(os.fsdecode(source), encoding="utf-8")
        os.replace(tmp, final)
    except OSError as exc:
        log.warning("could not write the dequantisation cache %s: %s", final, exc)
        tmp.unlink(missing_ok=True)
        return
    _prune(final.parent)


def _prune(folder: Path) -> None:
    """Remove cache entries whose GGUF is gone or changed, and temporary files left by dead writers."""
    for entry in folder.glob("*.npy"):
        marker = entry.with_suffix(".source")
        try:
            source = Path(marker.read_text(encoding="utf-8"))
            current = source.exists() and _cache_names(source)[1] == entry.name
        except (OSError, UnicodeDecodeError):
            current = False  # no readable marker: an entry from an interrupted write
        if not current:
            entry.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
    for tmp in folder.glob("*.tmp"):
        with contextlib.suppress(OSError):
            if time.time() - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                tmp.unlink()


def _new_cache_arena(final: Path, n_floats: int) -> tuple[F32Array, Any, Path] | None:
    """A writable arena backed by a temporary .npy next to ``final``, or None if that is not possible."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(final.parent).free < _FREE_SPACE_FACTOR * 4 * n_floats:
            log.info("not caching dequantised weights: too little free space in %s", final.parent)
            return None
        tmp = final.with_name(f"{final.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
        handle = tmp.open("w+b")
        header = {"descr": "<f4", "fortran_order": False, "shape": (n_floats,)}
        np.lib.format.write_array_header_1_0(handle, header)
        offset = handle.tell()
        handle.truncate(offset + 4 * n_floats)
        mapped = np.memmap(handle, dtype=np.float32, mode="r+", offset=offset, shape=(n_floats,))
        return np.asarray(mapped), handle, tmp
    except OSError as exc:
        log.warning("not caching dequantised weights in %s: %s", final.parent, exc)
        return None


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_weights(
    path: str | os.PathLike[str], *, cache: bool | None = None
) -> tuple[HParams, Weights, dict[str, Any]]:
    """Read a GGUF model: hyper-parameters, float32 weights and metadata (plain Python values).

    ``cache`` (default: on unless ``LLAMBO_REFERENCE_CACHE=0``) reuses or writes the dequantised
    arena in :func:`dequant_cache_dir` (models under 64 MiB are never cached). Unsupported
    architectures, tensor types or tensors raise :class:`~llambo.errors.ModelLoadError` naming
    them, before any weight is dequantised.
    """
    with GGUFFile(path) as gfile:
        hp = read_hparams(gfile)
        plan = _plan(gfile, hp)
        weights = None
        if _cache_enabled(cache) and 4 * plan.size >= _CACHE_MIN_BYTES:
            weights = _load_through_cache(gfile, plan, hp)
        if weights is None:
            arena = np.empty(plan.size, dtype=np.float32)
            _fill(gfile, arena, plan)
            arena.flags.writeable = False
            weights = _weights(arena, plan, hp, cached=False)
        return hp, weights, gfile.metadata


def _load_through_cache(gfile: GGUFFile, plan: _Planner, hp: HParams) -> Weights | None:
    """The cached arena, or a fresh one dequantised into a new cache file; None if neither works."""
    source, name = _cache_names(gfile.path)
    final = dequant_cache_dir() / name
    arena = _open_cached(final, plan.size)
    if arena is not None:
        return _weights(arena, plan, hp, cached=True)
    fresh = _new_cache_arena(final, plan.size)
    if fresh is None:
        return None
    arena, handle, tmp = fresh
    try:
        _fill(gfile, arena, plan)
    except BaseException:
        handle.close()
        tmp.unlink(missing_ok=True)
        raise
    arena.flags.writeable = False
    # fsync, rename and prune off the caller's path: the weights are usable now.
    threading.Thread(
        target=_finish_cache_file, args=(handle, tmp, final, source), name="llambo-dequant-cache"
    ).start()
    return _weights(arena, plan, hp, cached=False)
