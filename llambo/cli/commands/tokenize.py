"""``llambo tokenize``: a text's token ids, optionally with each token's text."""

from __future__ import annotations

import argparse
import json

from ...registry import default_registry
from ..common import open_model, read_stdin


def run(args: argparse.Namespace) -> int:
    """Print the ids (one line), or ``id  piece`` lines with ``--pieces``; ``--json`` for JSON."""
    text = read_stdin("text") if args.text in (None, "-") else args.text
    with open_model(args) as model:
        tokens = model.tokenize(text, add_special=not args.no_bos, parse_special=args.parse_special)
        pieces = [_piece(model.id, token) for token in tokens] if args.pieces else []
    if args.json:
        data: object = (
            [{"id": t, "piece": p} for t, p in zip(tokens, pieces, strict=True)] if args.pieces else tokens
        )
        print(json.dumps(data, ensure_ascii=False))
    elif args.pieces:
        width = len(str(max(tokens, default=0)))
        for token, piece in zip(tokens, pieces, strict=True):
            print(f"{token:>{width}}  {json.dumps(piece, ensure_ascii=False)}")
    else:
        print(" ".join(map(str, tokens)))
    return 0


def _piece(model_id: int, token: int) -> str:
    """One token's text: its bytes (an incomplete UTF-8 sequence as ``\\xNN``), or a special token's name."""
    loaded = default_registry().get(model_id)
    data = loaded.token_bytes(token)
    if data:
        return data.decode("utf-8", errors="backslashreplace")
    return loaded.detokenize([token], unparse_special=True)
