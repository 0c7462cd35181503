"""GGUF reading for the reference backend: metadata, hyper-parameters, dequantisation, layout, cache."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from support.synthetic_gguf import DTYPES, SyntheticSpec, write_model

from llambo.errors import ModelFileNotFound, ModelLoadError
from llambo.reference import gguf_weights
from llambo.reference.gguf_weights import GGUFFile, HParams, Weights, load_weights, read_hparams

# Relative RMS error of a dequantised matrix against the float32 original, per storage type.
DEQUANT_TOLERANCE = {
    "f32": 0.0, "f16": 1e-3, "bf16": 8e-3, "q8_0": 1e-2,
    "q5_0": 6e-2, "q5_1": 6e-2, "q4_0": 0.12, "q4_1": 0.12,
}  # fmt: skip


def _model(tmp_path: Path, **spec: Any) -> Path:
    name = "-".join(f"{k}={v}" for k, v in sorted(spec.items())) or "default"
    return write_model(tmp_path / f"{name}.gguf", SyntheticSpec(**spec))


def _load(path: Path) -> tuple[HParams, Weights, dict[str, Any]]:
    return load_weights(path, cache=False)


def _rewrite(
    src: Path,
    dst: Path,
    *,
    extra_kv: dict[str, tuple[Any, gguf.GGUFValueType]] | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """A copy of a GGUF file with metadata and tensors added (the gguf package's reader and writer)."""
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    for key, (value, vtype) in (extra_kv or {}).items():
        writer.add_key_value(key, value, vtype)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
    for name, data in (extra_tensors or {}).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def _patch_tensor_type(path: Path, name: str, type_id: int) -> None:
    """Overwrite one tensor's ggml type id in place (its info: name, n_dims, dims, type, offset)."""
    data = bytearray(path.read_bytes())
    key = name.encode()
    at = data.index(len(key).to_bytes(8, "little") + key) + 8 + len(key)
    n_dims = int.from_bytes(data[at : at + 4], "little")
    at += 4 + 8 * n_dims
    data[at : at + 4] = type_id.to_bytes(4, "little")
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------
# The container and the metadata
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_metadata_and_tensor_infos_match_the_gguf_package(tmp_path: Path, arch: str) -> None:
    path = _model(tmp_path, arch=arch)
    reader = gguf.GGUFReader(path)
    with GGUFFile(path) as gfile:
        expected = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        assert gfile.metadata.keys() == expected.keys()
        for key, value in expected.items():
            assert gfile.metadata[key] == (pytest.approx(value) if isinstance(value, float) else value), key
        assert list(gfile.tensors) == [t.name for t in reader.tensors]
        for tensor in reader.tensors:
            info = gfile.tensors[tensor.name]
            assert info.type_id == tensor.tensor_type
            assert info.shape == tuple(int(d) for d in reversed(tensor.shape))
            assert info.nbytes == tensor.n_bytes
            assert info.offset == tensor.data_offset
            np.testing.assert_array_equal(
                gfile.raw(tensor.name).reshape(-1), tensor.data.view(np.uint8).reshape(-1)
            )


def test_metadata_values_are_plain_python(tmp_path: Path) -> None:
    _, _, meta = _load(_model(tmp_path))
    assert meta["general.architecture"] == "llama"
    assert meta["general.name"] == "synthetic-llama"
    assert isinstance(meta["llama.context_length"], int)
    assert isinstance(meta["llama.attention.layer_norm_rms_epsilon"], float)
    tokens = meta["tokenizer.ggml.tokens"]
    assert isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)
    assert tokens[-3:] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert isinstance(meta["tokenizer.ggml.token_type"], list)
    assert meta["tokenizer.ggml.add_bos_token"] is False


def test_missing_and_malformed_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelFileNotFound):
        load_weights(tmp_path / "absent.gguf", cache=False)
    with pytest.raises(ModelLoadError, match="directory"):
        load_weights(tmp_path, cache=False)
    not_gguf = tmp_path / "model.bin"
    not_gguf.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_weights(not_gguf, cache=False)
    full = _model(tmp_path).read_bytes()
    for cut in (200, len(full) // 2, len(full) - 100):
        truncated = tmp_path / f"truncated-{cut}.gguf"
        truncated.write_bytes(full[:cut])
        with pytest.raises(ModelLoadError, match="truncated"):
            load_weights(truncated, cache=False)


# ---------------------------------------------------------------------------------------------
# Hyper-parameters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_hparams_are_read(tmp_path: Path, arch: str) -> None:
    spec = SyntheticSpec(arch=arch, n_embd=96, n_layer=3, n_head=6, n_head_kv=2, n_ff=160, n_ctx=512,
                         rope_base=5e5, rms_eps=1e-6, tied_output=False)  # fmt: skip
    hp, _, _ = _load(write_model(tmp_path / "m.gguf", spec))
    assert hp == HParams(
        arch=arch, n_vocab=269, n_embd=96, n_layer=3, n_head=6, n_head_kv=2, head_dim=16, n_ff=160,
        n_ctx_train=512, rope_base=5e5, n_rot=16, rope_type="norm" if arch == "llama" else "neox",
        rope_scaling="none", rope_scale_factor=1.0, rms_eps=pytest.approx(1e-6), tied_output=False,
    )  # fmt: skip
    assert (hp.n_embd_q, hp.n_embd_kv, hp.rope_freq_scale) == (96, 32, 1.0)


@pytest.mark.parametrize(
    ("extra", "factor"),
    [
        ({"rope.scaling.type": "linear", "rope.scaling.factor": 4.0}, 4.0),
        ({"rope.scaling.factor": 2.0}, 2.0),  # llama.cpp's default type is linear
        ({"rope.scale_linear": 8.0}, 8.0),  # the older key
        ({"rope.scaling.type": "none", "rope.scaling.factor": 4.0}, 1.0),
        ({"rope.scaling.type": "linear"}, 1.0),
    ],
)
def test_rope_scaling_keys(tmp_path: Path, extra: dict[str, Any], factor: float) -> None:
    with GGUFFile(_model(tmp_path)) as gfile:
        gfile.metadata.update({f"llama.{k}": v for k, v in extra.items()})
        hp = read_hparams(gfile)
    assert hp.rope_scale_factor == factor
    assert hp.rope_freq_scale == pytest.approx(1 / factor)
    assert hp.rope_scaling == ("none" if factor == 1.0 else "linear")


def test_yarn_rope_scaling_fails_at_load(tmp_path: Path) -> None:
    path = _rewrite(
        _model(tmp_path),
        tmp_path / "yarn.gguf",
        extra_kv={
            "llama.rope.scaling.type": ("yarn", gguf.GGUFValueType.STRING),
            "llama.rope.scaling.factor": (4.0, gguf.GGUFValueType.FLOAT32),
        },
    )
    with pytest.raises(ModelLoadError, match="rope scaling type 'yarn' is not supported"):
        load_weights(path, cache=False)


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"architecture 'gpt2' is not supported.*llama, qwen2"):
        load_weights(_model(tmp_path, arch="gpt2"), cache=False)


def test_per_layer_head_counts_must_agree(tmp_path: Path) -> None:
    with GGUFFile(_model(tmp_path)) as gfile:
        gfile.metadata["llama.attention.head_count"] = [4, 4]
        assert read_hparams(gfile).n_head == 4
        gfile.metadata["llama.attention.head_count"] = [4, 2]
        with pytest.raises(ModelLoadError, match="varies per layer"):
            read_hparams(gfile)


# ---------------------------------------------------------------------------------------------
# Weights: values, layout, errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_synthetic_dtype_dequantises_close_to_the_original(tmp_path: Path, dtype: str) -> None:
    _, original, _ = _load(_model(tmp_path, dtype="f32", tied_output=False))
    _, weights, _ = _load(_model(tmp_path, dtype=dtype, tied_output=False))
    pairs = [(original.tok_embd, weights.tok_embd), (original.output, weights.output)]
    for a, b in zip(original.layers, weights.layers, strict=True):
        pairs += [(a.wqkv, b.wqkv), (a.wo, b.wo), (a.w_gate_up, b.w_gate_up), (a.w_down, b.w_down)]
        np.testing.assert_array_equal(a.attn_norm, b.attn_norm)  # 1-D tensors stay float32
    for want, got in pairs:
        assert got.dtype == np.float32 and got.shape == want.shape
        error = np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2))
        assert error <= DEQUANT_TOLERANCE[dtype], (dtype, error)


@pytest.mark.parametrize("dtype", ["f32", "q4_1", "q8_0"])
def test_weights_equal_gguf_dequantize_exactly_in_the_documented_layout(tmp_path: Path, dtype: str) -> None:
    path = _model(tmp_path, arch="qwen2", dtype=dtype, tied_output=False)
    hp, weights, _ = _load(path)
    reader = gguf.GGUFReader(path)
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    np.testing.assert_array_equal(weights.tok_embd, tensors["token_embd.weight"])
    np.testing.assert_array_equal(weights.output, tensors["output.weight"])
    for i, layer in enumerate(weights.layers):
        b = f"blk.{i}"
        np.testing.assert_array_equal(layer.wq, tensors[f"{b}.attn_q.weight"])
        np.testing.assert_array_equal(layer.wk, tensors[f"{b}.attn_k.weight"])
        np.testing.assert_array_equal(layer.wv, tensors[f"{b}.attn_v.weight"])
        assert layer.bq is not None and layer.bk is not None and layer.bv is not None
        np.testing.assert_array_equal(layer.bq, tensors[f"{b}.attn_q.bias"])
        np.testing.assert_array_equal(layer.bk, tensors[f"{b}.attn_k.bias"])
        np.testing.assert_array_equal(layer.bv, tensors[f"{b}.attn_v.bias"])
        np.testing.assert_array_equal(layer.wo, tensors[f"{b}.attn_output.weight"])
        np.testing.assert_array_equal(layer.w_gate, tensors[f"{b}.ffn_gate.weight"])
        np.testing.assert_array_equal(layer.w_up, tensors[f"{b}.ffn_up.weight"])
        np.testing.assert_array_equal(layer.w_down, tensors[f"{b}.ffn_down.weight"])
        np.testing.assert_array_equal(layer.ffn_norm, tensors[f"{b}.ffn_norm.weight"])
        # (out, in) views; stored (in, out) C-contiguous unless in > out (ffn_down).
        for matrix in (layer.wqkv, layer.wo, layer.w_gate_up):
            assert matrix.T.flags.c_contiguous
        assert layer.w_down.flags.c_contiguous
        assert layer.wqkv.shape == (hp.n_embd_q + 2 * hp.n_embd_kv, hp.n_embd)
        assert layer.w_gate_up.shape == (2 * hp.n_ff, hp.n_embd)


def test_weights_share_one_read_only_arena(tmp_path: Path) -> None:
    _, weights, _ = _load(_model(tmp_path, tied_output=False))
    arrays = [weights.tok_embd, weights.output, weights.output_norm]
    for layer in weights.layers:
        arrays += [layer.attn_norm, layer.wqkv, layer.wo, layer.ffn_norm, layer.w_gate_up, layer.w_down]
    total = sum(a.nbytes for a in arrays)
    assert total <= weights.nbytes < total + 64 * len(arrays)  # nothing but alignment padding besides
    for array in arrays:
        assert np.shares_memory(array, weights.arena)
        assert not array.flags.writeable


def test_tied_output_is_the_embedding(tmp_path: Path) -> None:
    hp, tied, _ = _load(_model(tmp_path, tied_output=True))
    assert hp.tied_output and tied.output is tied.tok_embd
    hp, untied, _ = _load(_model(tmp_path, tied_output=False))
    assert not hp.tied_output and untied.output is not untied.tok_embd
    assert untied.output.shape == untied.tok_embd.shape == (hp.n_vocab, hp.n_embd)


def test_llama_has_no_biases(tmp_path: Path) -> None:
    _, weights, _ = _load(_model(tmp_path, arch="llama"))
    assert all(layer.bqkv is None and layer.bq is None for layer in weights.layers)


# The types llama.cpp models are commonly stored in, read through the loader's chunked path and
# compared with gguf's own dequantisation of the same (random) bytes.
ALL_TYPES = [
    "F32",
    "F16",
    "BF16",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
]


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_every_tensor_type_is_read_like_gguf_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, type_name: str
) -> None:
    monkeypatch.setattr(gguf_weights, "_CHUNK_ELEMENTS", 700)  # several chunks per tensor
    qtype = gguf.GGMLQuantizationType[type_name]
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = 9, 2 * 256
    rng = np.random.default_rng(7)
    if type_name in ("F32", "F16"):
        raw = rng.standard_normal((rows, cols)).astype(np.float32 if type_name == "F32" else np.float16)
        raw_bytes = raw.view(np.uint8)
    else:
        # Bit 6 cleared in every byte: no float16 scale field can be inf or NaN.
        raw_bytes = rng.integers(0, 256, (rows, cols // block * type_size), dtype=np.uint8) & np.uint8(0xBF)
    writer = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    writer.add_tensor("t", raw_bytes, raw_shape=raw_bytes.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with GGUFFile(tmp_path / "t.gguf") as gfile:
        assert gfile.tensors["t"].shape == (rows, cols)
        got = gfile.dequantize("t")
    np.testing.assert_array_equal(got, gguf.quants.dequantize(raw_bytes, qtype))


@pytest.mark.parametrize(
    ("type_id", "shown"), [(int(gguf.GGMLQuantizationType.I32), "I32"), (200, "unknown type 200")]
)
def test_unsupported_tensor_types_are_named(tmp_path: Path, type_id: int, shown: str) -> None:
    path = _model(tmp_path)
    _patch_tensor_type(path, "blk.1.attn_q.weight", type_id)  # F32 -> I32 keeps the byte size
    with pytest.raises(ModelLoadError, match=rf"'blk.1.attn_q.weight' has type {shown}"):
        load_weights(path, cache=False)


def test_unknown_tensors_are_named(tmp_path: Path) -> None:
    path = _rewrite(
        _model(tmp_path),
        tmp_path / "extra.gguf",
        extra_tensors={"blk.0.attn_output.bias": np.zeros(64, np.float32)},
    )
    with pytest.raises(
        ModelLoadError, match=r"does not know what to do with tensor.*blk\.0\.attn_output\.bias"
    ):
        load_weights(path, cache=False)


def test_wrong_tensor_shapes_are_named(tmp_path: Path) -> None:
    path = _model(tmp_path)
    with GGUFFile(path) as gfile:
        gfile.metadata["llama.feed_forward_length"] = 100
        hp = read_hparams(gfile)
        with pytest.raises(
            ModelLoadError, match=r"'blk.0.ffn_gate.weight' has shape \(128, 64\), expected \(100, 64\)"
        ):
            gguf_weights._plan(gfile, hp)


# ---------------------------------------------------------------------------------------------
# The dequantisation cache
# ---------------------------------------------------------------------------------------------


def _wait_for_cache_writers() -> None:
    for thread in threading.enumerate():
        if thread.name == "llambo-dequant-cache":
            thread.join()


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache folder, with the size floor lifted so that synthetic models are cached."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LLAMBO_CACHE_DIR", str(root))
    monkeypatch.delenv(gguf_weights.CACHE_ENV, raising=False)
    monkeypatch.setattr(gguf_weights, "_CACHE_MIN_BYTES", 0)
    return root / "dequant"


def test_small_models_are_not_cached(
    tmp_path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gguf_weights, "_CACHE_MIN_BYTES", 64 << 20)
    assert not load_weights(_model(tmp_path))[1].cached
    _wait_for_cache_writers()
    assert not cache_root.exists()


def test_the_cache_is_written_then_reused(tmp_path: Path, cache_root: Path) -> None:
    path = _model(tmp_path, arch="qwen2", dtype="q8_0")
    hp, first, meta = load_weights(path)
    assert not first.cached
    _wait_for_cache_writers()
    files = list(cache_root.glob("*.npy"))
    assert len(files) == 1 and not list(cache_root.glob("*.tmp"))
    assert files[0].with_suffix(".source").read_text() == str(path.resolve())
    hp2, second, meta2 = load_weights(path)
    assert second.cached and hp2 == hp and meta2 == meta
    np.testing.assert_array_equal(second.arena, first.arena)
    assert not second.tok_embd.flags.writeable
    assert second.output is second.tok_embd

    # A changed file gets a new entry, which replaces the old one.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert not load_weights(path)[1].cached
    _wait_for_cache_writers()
    assert len(list(cache_root.glob("*.npy"))) == 1
    assert list(cache_root.glob("*.npy")) != files


def test_a_cache_file_of_the_wrong_size_is_ignored(tmp_path: Path, cache_root: Path) -> None:
    path = _model(tmp_path)
    load_weights(path)
    _wait_for_cache_writers()
    (entry,) = cache_root.glob("*.npy")
    np.save(entry, np.zeros(10, np.float32))
    _, weights, _ = load_weights(path)
    assert not weights.cached
    _, reference, _ = load_weights(path, cache=False)
    np.testing.assert_array_equal(weights.arena, reference.arena)


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_the_cache_can_be_turned_off(
    tmp_path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    path = _model(tmp_path)
    if how == "argument":
        load_weights(path, cache=False)
    else:
        monkeypatch.setenv(gguf_weights.CACHE_ENV, "0")
        load_weights(path)
    _wait_for_cache_writers()
    assert not cache_root.exists() or not list(cache_root.iterdir())


def test_entries_of_deleted_models_are_pruned(tmp_path: Path, cache_root: Path) -> None:
    kept, deleted = _model(tmp_path, seed=1), _model(tmp_path, seed=2)
    load_weights(deleted)
    _wait_for_cache_writers()
    deleted.unlink()
    stray = cache_root / "0123456789abcdef-0123456789abcdef.npy"  # no .source: an interrupted write
    np.save(stray, np.zeros(4, np.float32))
    load_weights(kept)  # writing a new entry prunes the others
    _wait_for_cache_writers()
    (entry,) = cache_root.glob("*.npy")
    assert entry.with_suffix(".source").read_text() == str(kept.resolve())
    assert sorted(p.suffix for p in cache_root.iterdir()) == [".npy", ".source"]
