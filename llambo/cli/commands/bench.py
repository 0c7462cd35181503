"""``llambo bench``: prompt and decode speed, in tokens/s, of each backend on one model.

Each run evaluates a ``-p`` token prompt from an empty context (prompt speed; the first token is
sampled inside the clock, so asynchronous backends are measured to completion), then decodes
``-n`` tokens one at a time with greedy sampling (decode speed), ignoring end-of-generation tokens
so that every run does the same work. A short warm-up run precedes the measured ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...errors import LlamboError
from ..common import PROG, model_path

if TYPE_CHECKING:
    from ...api import LoadedModel

_TEXT = (
    "The history of computing is a story of ideas meeting machines. Early mechanical calculators "
    "gave way to electronic computers, which filled rooms and consumed enormous power, yet could "
    "perform only a few thousand operations each second. Over the following decades transistors, "
    "integrated circuits and microprocessors made machines smaller, cheaper and far faster, and "
    "software grew from hand-written machine code into vast systems written by many people."
)


@dataclass
class Measurement:
    """The runs of one backend, in tokens/s."""

    backend: str
    prompt_tps: list[float] = field(default_factory=list)
    decode_tps: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "prompt_tps": self.prompt_tps,
            "decode_tps": self.decode_tps,
            "prompt_tps_mean": statistics.fmean(self.prompt_tps),
            "decode_tps_mean": statistics.fmean(self.decode_tps),
        }


def bench_prompt(model: LoadedModel, n: int) -> list[int]:
    """``n`` tokens of ordinary English text (with the model's BOS, if it adds one)."""
    tokens = model.tokenize(_TEXT, add_special=True, parse_special=False)
    body = model.tokenize(" " + _TEXT, add_special=False, parse_special=False)
    while len(tokens) < n:
        tokens += body
    return tokens[:n]


def measure_once(model: LoadedModel, prompt: list[int], n_gen: int) -> tuple[float, float]:
    """(prompt tokens/s, decode tokens/s) of one run."""
    from ...api import SamplingParams

    session = model.session(SamplingParams(temperature=0, max_tokens=n_gen, seed=0))
    try:
        start = time.perf_counter()
        session.prefill(prompt)
        token = session.sample()
        prefilled = time.perf_counter()
        for _ in range(n_gen):
            session.feed(token)
            token = session.sample()
        done = time.perf_counter()
    finally:
        session.close()
    return len(prompt) / (prefilled - start), n_gen / (done - prefilled)


def measure(args: argparse.Namespace, backend: str) -> Measurement:
    """Load the model on ``backend`` and time ``--repeat`` runs after a warm-up."""
    from ...model import Model
    from ...registry import default_registry

    n_prompt, n_gen = args.prompt_tokens, args.gen_tokens
    with Model(
        args.path,
        backend=backend,
        n_ctx=n_prompt + n_gen,
        n_threads=args.threads,
        n_gpu_layers=args.gpu_layers if backend == "native" else 0,
    ) as model:
        loaded = default_registry().get(model.id)
        prompt = bench_prompt(loaded, n_prompt)
        print(f"{PROG}: bench: {backend}: warm-up, then {args.repeat} run(s)", file=sys.stderr, flush=True)
        measure_once(loaded, prompt[: min(n_prompt, 8)], min(n_gen, 2))
        result = Measurement(backend)
        for _ in range(args.repeat):
            prompt_tps, decode_tps = measure_once(loaded, prompt, n_gen)
            result.prompt_tps.append(prompt_tps)
            result.decode_tps.append(decode_tps)
    return result


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def render(report: dict[str, Any], measurements: list[Measurement]) -> str:
    """The results as a table, with the native/reference ratio when both ran."""
    head = (
        f"model: {report['model']}\n"
        f"prompt {report['prompt_tokens']} tokens, decode {report['gen_tokens']} tokens, "
        f"{report['repeat']} run(s) per backend, {report['threads']} thread(s)\n"
    )
    rows = [("backend", "prompt tokens/s", "decode tokens/s")]
    rows += [(m.backend, _cell(m.prompt_tps), _cell(m.decode_tps)) for m in measurements]
    ratio = report["ratio"]
    if ratio is not None:
        rows.append(("native/reference", f"{ratio['prompt']:.1f}x", f"{ratio['decode']:.1f}x"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}" for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return head + "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Measure each backend asked for and print the table (or JSON)."""
    from ...selection import backend_info

    args.path = model_path(args.model)
    skipped: dict[str, str] = {}
    backends = ["native", "reference"] if args.backend == "all" else [args.backend]
    if args.backend == "all":
        native = backend_info("native")["native"]
        if not native["available"]:
            reason = str(native["reason"] or "unavailable")
            skipped["native"] = reason
            backends.remove("native")
            print(f"{PROG}: bench: skipping native: {' '.join(reason.split())}", file=sys.stderr, flush=True)
    measurements = [measure(args, backend) for backend in backends]
    if not measurements:
        raise LlamboError("no backend to measure")
    by_name = {m.backend: m for m in measurements}
    ratio = None
    if "native" in by_name and "reference" in by_name:
        native_m, reference_m = by_name["native"], by_name["reference"]
        ratio = {
            "prompt": statistics.fmean(native_m.prompt_tps) / statistics.fmean(reference_m.prompt_tps),
            "decode": statistics.fmean(native_m.decode_tps) / statistics.fmean(reference_m.decode_tps),
        }
    report: dict[str, Any] = {
        "model": str(args.path),
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "repeat": args.repeat,
        "threads": args.threads or os.cpu_count() or 1,
        "results": [m.to_dict() for m in measurements],
        "ratio": ratio,
        "skipped": skipped,
    }
    print(json.dumps(report, indent=2) if args.json else render(report, measurements))
    return 0
