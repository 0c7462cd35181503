"""A short multi-turn conversation with ``llambo.Model``, streaming each reply as it is generated.

python examples/chat_session.py [MODEL.gguf]
"""

from __future__ import annotations

import sys

import llambo


def main(argv: list[str]) -> int:
    path = argv[0] if argv else None  # None: the default model, fetched the first time
    history: list[dict[str, str]] = [{"role": "system", "content": "You are a concise assistant."}]
    with llambo.Model(path, n_ctx=2048) as model:
        print(f"[{model.backend}] {model.info().name}")
        for question in ("What is the largest planet?", "And the smallest?"):
            history.append({"role": "user", "content": question})
            print(f"> {question}")
            stream = model.chat_stream(history, temperature=0, max_tokens=64, repeat_penalty=1.1)
            for piece in stream:
                print(piece, end="", flush=True)
            print()
            assert stream.result is not None
            history.append({"role": "assistant", "content": stream.result.text})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
