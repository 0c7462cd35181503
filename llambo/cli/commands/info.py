"""``llambo info``: what a model is (architecture, size, context, vocabulary), or its ModelInfo JSON."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..common import open_model

if TYPE_CHECKING:
    from ...api import ModelInfo


def _count(n: int) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


def describe(info: ModelInfo, *, metadata: bool = False) -> str:
    """A human summary of ``info``."""
    special = ", ".join(f"{name} {token}" for name, token in info.special_tokens.items() if token is not None)
    ctx = (
        f"{info.n_ctx} tokens (trained on {info.n_ctx_train})" if info.n_ctx_train else f"{info.n_ctx} tokens"
    )
    rows = [
        ("path", info.path),
        ("architecture", info.architecture),
        ("parameters", _count(info.n_params)),
        ("file", f"{info.file_size / 2**20:.1f} MiB, {info.file_type}"),
        ("context", ctx),
        ("layers", f"{info.n_layer}, embedding {info.n_embd}, heads {info.n_head} (kv {info.n_head_kv})"),
        ("vocabulary", f"{info.n_vocab} tokens ({info.vocab_type})"),
        ("special tokens", special or "none"),
        ("chat template", "yes" if info.has_chat_template else "no"),
        ("backend", f"{info.backend}" + (f", {info.n_gpu_layers} GPU layers" if info.n_gpu_layers else "")),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [info.name or "(unnamed model)"]
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    if metadata:
        lines.append("  metadata:")
        lines += [f"    {key} = {value}" for key, value in sorted(info.metadata.items())]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the description of MODEL (default: the default model)."""
    with open_model(args, path=args.model_arg) as model:
        info = model.info()
    print(info.to_json() if args.json else describe(info, metadata=args.metadata))
    return 0
