"""Tiny random-weight GGUF models (llama, qwen2) written with the `gguf` package, for tests and GPU checks.

They load in llama.cpp and in the reference backend alike, so parity and offload checks can run
where the 98 MB default model cannot travel. Weights are random but seeded: the same arguments
always give the same file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

# A few merges so the byte-level BPE has multi-byte tokens to exercise.
_MERGES = ("Ġ t", "h e", "Ġt he", "i n", "a n", "Ġ a", "e r", "o n", "Ġ s", "r e")
_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes, indexed by byte value."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of a synthetic model; defaults give a ~1 MB llama that loads in milliseconds."""

    arch: str = "llama"  # "llama" or "qwen2"
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx: int = 256
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    tied_output: bool = True
    dtype: str = "f32"  # one of DTYPES (f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1, bf16) for the 2-D weights
    seed: int = 0
    chat_template: bool = True


def _vocab() -> tuple[list[str], list[int]]:
    tokens = byte_level_alphabet()
    for merge in _MERGES:
        tokens.append(merge.replace(" ", ""))
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    for special in _SPECIALS:
        tokens.append(special)
        types.append(int(gguf.TokenType.CONTROL))
    return tokens, types


# Types stored through gguf's own quantizer (q8_0 first; the rest were added for the reference backend).
_QUANTIZED = {
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "q4_1": (gguf.GGMLQuantizationType.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    "q5_0": (gguf.GGMLQuantizationType.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0),
    "q5_1": (gguf.GGMLQuantizationType.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
}
DTYPES = ("f32", "f16", *_QUANTIZED)


def _matrix(writer: gguf.GGUFWriter, name: str, data: np.ndarray, dtype: str) -> None:
    if dtype == "f32":
        writer.add_tensor(name, data.astype(np.float32))
    elif dtype == "f16":
        writer.add_tensor(name, data.astype(np.float16))
    elif dtype in _QUANTIZED:
        qtype = _QUANTIZED[dtype][0]
        quant = gguf.quants.quantize(data.astype(np.float32), qtype)
        writer.add_tensor(name, quant, raw_shape=quant.shape, raw_dtype=qtype)
    else:
        raise ValueError(f"unsupported dtype {dtype!r}: use one of {', '.join(DTYPES)}")


def write_model(path: Path, spec: SyntheticSpec | None = None) -> Path:
    """Write a synthetic model to ``path`` and return it."""
    spec = spec or SyntheticSpec()
    rng = np.random.default_rng(spec.seed)
    tokens, types = _vocab()
    n_vocab = len(tokens)
    head_dim = spec.n_embd // spec.n_head
    n_embd_kv = head_dim * spec.n_head_kv

    writer = gguf.GGUFWriter(str(path), spec.arch)
    writer.add_name(f"synthetic-{spec.arch}")
    writer.add_context_length(spec.n_ctx)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(spec.rope_base)
    writer.add_layer_norm_rms_eps(spec.rms_eps)
    writer.add_vocab_size(n_vocab)
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        **{name: ftype for name, (_, ftype) in _QUANTIZED.items()},
    }[spec.dtype]
    writer.add_file_type(int(file_type))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default" if spec.arch == "llama" else "qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(list(_MERGES))
    eos = tokens.index("<|endoftext|>")
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(False)
    if spec.chat_template:
        writer.add_chat_template(CHATML_TEMPLATE)

    def weight(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + rng.standard_normal(spec.n_embd) * 0.1).astype(np.float32)

    _matrix(writer, "token_embd.weight", weight(n_vocab, spec.n_embd, scale=1.0), spec.dtype)
    writer.add_tensor("output_norm.weight", norm())
    if not spec.tied_output:
        _matrix(writer, "output.weight", weight(n_vocab, spec.n_embd, scale=0.1), spec.dtype)
    for i in range(spec.n_layer):
        prefix = f"blk.{i}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", norm())
        _matrix(writer, f"{prefix}.attn_q.weight", weight(spec.n_embd, spec.n_embd, scale=0.2), spec.dtype)
        _matrix(writer, f"{prefix}.attn_k.weight", weight(n_embd_kv, spec.n_embd, scale=0.2), spec.dtype)
        _matrix(writer, f"{prefix}.attn_v.weight", weight(n_embd_kv, spec.n_embd, scale=0.2), spec.dtype)
        if spec.arch == "qwen2":
            writer.add_tensor(f"{prefix}.attn_q.bias", weight(spec.n_embd, scale=0.1))
            writer.add_tensor(f"{prefix}.attn_k.bias", weight(n_embd_kv, scale=0.1))
            writer.add_tensor(f"{prefix}.attn_v.bias", weight(n_embd_kv, scale=0.1))
        _matrix(
            writer, f"{prefix}.attn_output.weight", weight(spec.n_embd, spec.n_embd, scale=0.2), spec.dtype
        )
        writer.add_tensor(f"{prefix}.ffn_norm.weight", norm())
        _matrix(writer, f"{prefix}.ffn_gate.weight", weight(spec.n_ff, spec.n_embd, scale=0.2), spec.dtype)
        _matrix(writer, f"{prefix}.ffn_up.weight", weight(spec.n_ff, spec.n_embd, scale=0.2), spec.dtype)
        _matrix(writer, f"{prefix}.ffn_down.weight", weight(spec.n_embd, spec.n_ff, scale=0.2), spec.dtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
