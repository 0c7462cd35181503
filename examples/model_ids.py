"""The original module's functions: load a model by path, get an id, generate, free it.

python examples/model_ids.py [MODEL.gguf] ["prompt"]
"""

from __future__ import annotations

import json
import sys

import llambo
from llambo.default_model import ensure_default_model


def main(argv: list[str]) -> int:
    path = argv[0] if argv else str(ensure_default_model())
    prompt = argv[1] if len(argv) > 1 else "The three primary colours are"
    model_id = llambo.load_model(path, use_mmap=True, n_gpu_layers=0)
    try:
        info = json.loads(llambo.get_model_info(model_id))
        print(f"model {model_id}: {info['name']} on the {info['backend']} backend")
        print(f"{len(llambo.tokenize(model_id, prompt))} prompt tokens")
        print(prompt + llambo.infer(model_id, prompt, max_tokens=32, temperature=0))
    finally:
        llambo.free_model(model_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
