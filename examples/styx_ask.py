"""Ask the default model a question over 9P (Styx), the way any 9P client would.

    python examples/styx_ask.py "What is the capital of France?"
    python examples/styx_ask.py --connect tcp!127.0.0.1!5640 "Why is the sky blue?"

With --connect it talks to a running server (`python -m llambo.styx`); without, it tries the
default address and, if nobody listens there, starts a server in this process on a free port.
The model is loaded by writing `load <path>` to /ctl, the question is written to
/models/N/data and the answer is streamed back by reading the same open file.
"""

from __future__ import annotations

import argparse
import sys
import time

from llambo.default_model import ensure_default_model
from llambo.styx import Client, ServerThread, StyxServer
from llambo.styx.address import DEFAULT_ADDRESS


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="*", help="what to ask (default: the capital of France)")
    parser.add_argument("--connect", metavar="ADDRESS", help="a running server, e.g. tcp!127.0.0.1!5640")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    question = " ".join(args.question) or "What is the capital of France?"
    # The default model is a chat model: its ChatML turn markers are written into the prompt
    # (the data file takes plain text; special tokens in it are parsed, as llama.cpp's tools do).
    prompt = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"

    path = ensure_default_model()
    server: ServerThread | None = None
    address = args.connect or DEFAULT_ADDRESS
    try:
        client = Client(address)
    except OSError:
        if args.connect:
            print(f"no server at {address}", file=sys.stderr)
            return 1
        server = ServerThread(StyxServer(), "tcp!127.0.0.1!0")
        address = str(server.start())
        print(f"started a server on {address}", file=sys.stderr)
        client = Client(address)
    try:
        model_id = client.load(str(path))
        info = client.info(model_id)
        print(f"model {model_id}: {info['name']} ({info['backend']}) at {address}\n", file=sys.stderr)
        print(f"Q: {question}\nA: ", end="", flush=True)
        started = time.perf_counter()
        for piece in client.stream(model_id, prompt, max_tokens=args.max_tokens, temperature=0):
            print(piece, end="", flush=True)
        elapsed = time.perf_counter() - started
        status = client.status(model_id)
        print(
            f"\n\n[{status['backend']}] {status['tokens']} tokens at {status['tokens_per_second']} tokens/s; "
            f"{elapsed:.2f} s from write to the last read",
            file=sys.stderr,
        )
        client.free(model_id)
    finally:
        client.close()
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
