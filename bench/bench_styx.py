"""Cost of serving a model over 9P (Styx) against calling it directly from Python, in one run.

    python bench/bench_styx.py [--model PATH] [--threads 1] [--requests 40] [--tokens 128]

Both paths use the very same loaded model: this process runs the server (its event loop on a
thread) on 127.0.0.1 and makes the direct calls on the object the registry holds for the id the
server loaded through /ctl. The 9P client is a separate process, as real 9P clients are (a
client thread here would compete with the server for this interpreter's lock). Requests are
greedy, so both paths generate the same text (checked), and they alternate one by one so that
drift in machine load hits both alike.

* protocol alone: two 9P read round trips on a small file (``status``), no generation involved.
* latency: a short request as one 9P write plus reads to EOF on an open fid, timed in the
  client. What 9P adds per request (target < 1 ms) is that time minus the same request's own
  generation in the server (tokenizing the prompt and the generation loop, the work a direct
  ``generate()`` call does, each timed where it runs; the hand-offs between threads are not
  counted as generation), so the noise of generation time cancels. For reference it also
  prints the paired difference against a direct ``generate()`` call, which estimates the same
  cost far more noisily, and the ratio of direct calls to the server's generations, which
  shows that they do the same work.
* throughput: a long request; generated tokens over wall time, write to EOF against the call
  (target: 9P within 5% of direct).

This is a measurement, not a test: it prints the numbers, their ratios and whether the targets
were met. On a machine shared with other work expect noise; run it twice.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from llambo.api import LoadedModel, LoadParams, SamplingParams
from llambo.generation import generate
from llambo.registry import ModelRegistry
from llambo.styx import Client, ServerThread, StyxServer
from llambo.styx.fcall import ORDWR

LATENCY_PROMPT = "The capital of France is"
THROUGHPUT_PROMPT = "Write a long story about a dragon who learns to bake bread. Once upon a time"


def client_process(address: str, model_id: int) -> int:
    """The 9P side: one request per line on stdin (JSON), one timing per line on stdout."""
    with Client(address) as client:
        fid = client.open_path(f"models/{model_id}/data", ORDWR)
        status = client.open_path(f"models/{model_id}/status")
        for line in sys.stdin:
            if line.startswith("rtt"):  # the protocol alone: a read of status and the read at its end
                times = []
                for _ in range(int(line.split()[1])):
                    started = time.perf_counter()
                    text = client.read(status, 0)
                    client.read(status, len(text))
                    times.append(time.perf_counter() - started)
                print(json.dumps({"seconds": statistics.median(times), "text": ""}), flush=True)
                continue
            request = line.strip().encode()
            started = time.perf_counter()
            client.write(fid, 0, request)
            data, offset = bytearray(), 0
            while chunk := client.read(fid, offset):
                data += chunk
                offset += len(chunk)
            elapsed = time.perf_counter() - started
            print(json.dumps({"seconds": elapsed, "text": data.decode("utf-8")}), flush=True)
        client.clunk(fid)
    return 0


class Remote:
    """The client process, driven one request at a time."""

    def __init__(self, address: str, model_id: int) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--client", address, "--model-id", str(model_id)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def round_trips(self, count: int) -> float:
        """The median time of two 9P read round trips (a small file and its end), in the client."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"rtt {count}\n")
        self.process.stdin.flush()
        return float(json.loads(self.process.stdout.readline())["seconds"])

    def ask(self, prompt: str, max_tokens: int) -> tuple[float, str]:
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        return float(answer["seconds"]), str(answer["text"])

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


def direct(model: LoadedModel, prompt: str, max_tokens: int) -> tuple[float, str, int]:
    """The same request as a Python call; (seconds, text, generated tokens)."""
    started = time.perf_counter()
    result = generate(model, prompt, SamplingParams(max_tokens=max_tokens, temperature=0))
    return time.perf_counter() - started, result.text, result.timings.generated_tokens


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a GGUF file (default: the embedded default model)")
    parser.add_argument(
        "--threads", type=int, default=1, help="llama.cpp threads (default 1: steadier numbers)"
    )
    parser.add_argument("--requests", type=int, default=40, help="short requests per path")
    parser.add_argument("--latency-tokens", type=int, default=4, help="tokens per short request")
    parser.add_argument("--runs", type=int, default=7, help="long requests per path")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per long request")
    parser.add_argument("--client", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--model-id", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return client_process(args.client, args.model_id)
    if args.model is None:
        from llambo.default_model import ensure_default_model

        args.model = ensure_default_model()

    registry = ModelRegistry()
    server = ServerThread(
        StyxServer(registry, models_root=args.model.parent, load_params=LoadParams(n_threads=args.threads))
    )
    address = str(server.start())
    remote: Remote | None = None
    try:
        with Client(address) as loader:
            model_id = loader.load(str(args.model))
        model = registry.get(model_id)
        remote = Remote(address, model_id)
        print(f"model {args.model.name}, {args.threads} thread(s), server at {address}")

        for _ in range(3):  # warm both paths up (first-use allocations, caches, the client's imports)
            direct(model, LATENCY_PROMPT, args.latency_tokens)
            remote.ask(LATENCY_PROMPT, args.latency_tokens)

        tree = server.server.tree
        direct_times, styx_times, differences, added, worker_times = [], [], [], [], []
        for _ in range(args.requests):
            seconds, expected, _ = direct(model, LATENCY_PROMPT, args.latency_tokens)
            styx_seconds, text = remote.ask(LATENCY_PROMPT, args.latency_tokens)
            assert text == expected, (text, expected)
            request = tree.state(model_id).latest
            assert request is not None and request.work_seconds is not None
            direct_times.append(seconds)
            styx_times.append(styx_seconds)
            worker_times.append(request.work_seconds)
            differences.append(styx_seconds - seconds)
            added.append(styx_seconds - request.work_seconds)
        added_ms = statistics.median(added) * 1000
        paired_ms = statistics.median(differences) * 1000
        direct_ms, styx_ms = statistics.median(direct_times) * 1000, statistics.median(styx_times) * 1000
        same_work = statistics.median(d / w for d, w in zip(direct_times, worker_times, strict=True))
        floor_ms = remote.round_trips(200) * 1000
        print(f"\nprotocol alone: two read round trips (status, then its end) {floor_ms:9.3f} ms")
        print(f"\nlatency, {args.requests} requests of {args.latency_tokens} tokens (medians):")
        print(f"  direct generate()       {direct_ms:9.3f} ms")
        print(f"  9P write + reads to EOF {styx_ms:9.3f} ms")
        print(f"  the server's generation {statistics.median(worker_times) * 1000:9.3f} ms")
        print(f"  added by 9P             {added_ms:9.3f} ms   target < 1 ms: {verdict(added_ms < 1)}")
        print(f"  paired 9P - direct      {paired_ms:9.3f} ms   (the same cost, with generation noise)")
        print(f"  direct / server's gen.  {same_work:9.3f}      (about 1: the same work)")

        direct_rates, styx_rates = [], []
        tokens = 0
        for _ in range(args.runs):
            seconds, expected, tokens = direct(model, THROUGHPUT_PROMPT, args.tokens)
            styx_seconds, text = remote.ask(THROUGHPUT_PROMPT, args.tokens)
            assert text == expected
            direct_rates.append(tokens / seconds)
            styx_rates.append(tokens / styx_seconds)
        ratio = statistics.median(styx_rates) / statistics.median(direct_rates)
        print(f"\nthroughput, {args.runs} requests of {tokens} tokens (medians, prompt included):")
        print(f"  direct generate()       {statistics.median(direct_rates):9.1f} tokens/s")
        print(f"  9P write + reads to EOF {statistics.median(styx_rates):9.1f} tokens/s")
        print(f"  ratio 9P / direct       {ratio:9.3f}   target >= 0.95: {verdict(ratio >= 0.95)}")
    finally:
        if remote is not None:
            remote.close()
        server.stop()
        registry.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
