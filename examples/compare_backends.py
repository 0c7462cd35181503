"""Run the same greedy chat on both backends and show that they agree (the reference is numpy).

python examples/compare_backends.py [MODEL.gguf]
"""

from __future__ import annotations

import sys

import llambo
from llambo.default_model import ensure_default_model

QUESTION = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a planet."}]


def main(argv: list[str]) -> int:
    path = argv[0] if argv else str(ensure_default_model())
    info = llambo.backend_info()
    if not info["native"]["available"]:
        print(f"native backend unavailable: {info['native']['reason']}")
        return 1
    results = {}
    for backend in ("native", "reference"):
        with llambo.Model(path, backend=backend, n_ctx=512) as model:
            result = model.chat(QUESTION, temperature=0, max_tokens=24)
        results[backend] = result
        speed = result.timings.tokens_per_second
        print(f"{backend:>9}: {result.text!r} ({len(result.tokens)} tokens, {speed:.0f} tokens/s)")
    same = results["native"].tokens == results["reference"].tokens
    print("identical tokens" if same else "the backends diverged (see docs/BENCHMARKS.md on parity)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
