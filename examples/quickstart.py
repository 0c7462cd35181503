"""Answer a prompt with the default model, streaming, and report which backend ran and how fast.

python examples/quickstart.py "The three primary colours are"
"""

from __future__ import annotations

import json
import sys

import llambo
from llambo.api import SamplingParams
from llambo.chat import render_chat
from llambo.default_model import ensure_default_model
from llambo.generation import TextStream
from llambo.registry import default_registry


def main(argv: list[str]) -> int:
    question = " ".join(argv) or "What is the capital of France? Answer in one sentence."
    path = ensure_default_model()
    model_id = llambo.load_model(path)
    try:
        info = json.loads(llambo.get_model_info(model_id))
        print(f"model: {info['name']} ({info['file_type']}, {info['n_params'] / 1e6:.0f}M parameters)")
        print(f"backend: {info['backend']}\n", flush=True)
        model = default_registry().get(model_id)
        prompt = render_chat(model.chat_template(), [{"role": "user", "content": question}])
        stream = TextStream(model, prompt, SamplingParams(temperature=0, max_tokens=128, repeat_penalty=1.1))
        print(f"> {question}\n")
        for piece in stream:
            print(piece, end="", flush=True)
        print()
        assert stream.result is not None
        timings = stream.result.timings
        print(
            f"\n[{stream.result.backend}] {timings.generated_tokens} tokens, "
            f"{timings.tokens_per_second:.1f} tokens/s "
            f"(prompt: {timings.prompt_tokens_per_second:.0f} tokens/s)",
            file=sys.stderr,
        )
    finally:
        llambo.free_model(model_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
