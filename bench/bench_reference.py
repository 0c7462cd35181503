"""llambo's reference (numpy) path against its native (llama.cpp) path on the same model, in one run.

    PYTHONPATH=. python bench/bench_reference.py [--model PATH] [--threads 2] [--repeat 6] [--json PATH]
    PYTHONPATH=. python bench/bench_reference.py --quick     # 2 pairs, 32 tokens, no waiting

Figures (target in brackets):

* decode: tokens/s of ``llambo.generation.generate``, greedy, ``--gen-tokens`` tokens after a short
  text prompt, from ``InferenceResult.timings`` (the sample + feed loop, prefill excluded)
  [reference >= 0.35x native].
* pp128, pp512: tokens/s of ``model.logits(tokens)`` on random token ids (BOS first), evaluated from
  an empty context [reference >= 1.0x native].
* peak memory: in a fresh subprocess per backend (and per reference cache mode), VmHWM from
  /proc/self/status after loading and generating, minus VmHWM right after ``import numpy``;
  against the model's float32 weight size (every GGUF tensor's element count x 4) [<= 1.6x].
* load: ``llambo.reference.gguf_weights.load_weights`` on the default model, cold (cache off, and
  a first load writing a fresh cache) [<= 3 s] and from the dequantised cache [<= 0.5 s]. The
  cache lives in a temporary ``LLAMBO_CACHE_DIR`` (removed at the end), never the user's.

Both models live in this process (``LoadParams(n_threads=--threads, n_ctx=--ctx)``); the reference
path's thread count is numpy's BLAS one, set through ``OPENBLAS_NUM_THREADS`` before numpy is
imported. Speed figures are measured ``--repeat`` times as pairs, native and reference back to back,
each first in turn; ratios are medians of the paired reference/native ratios. The script first
waits (up to ``--wait`` s) for the 1-minute load average to drop below ``--max-load``. Only rates,
sizes and times are compared, never tokens, so it does not depend on the reference's numerics. This
is a measurement, not a test: it exits 0 whether or not the targets are met.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench_native import (
    Samples,
    _add,
    _median,
    _paired_ratio,
    _spread,
    _verdict,
    cpu_model,
    say,
    wait_for_quiet,
)

from llambo.api import LoadedModel, LoadParams, SamplingParams
from llambo.default_model import ensure_default_model
from llambo.generation import generate

DECODE_TARGET = 0.35
PREFILL_TARGET = 1.0
MEMORY_TARGET = 1.6
COLD_LOAD_TARGET_S = 3.0
CACHED_LOAD_TARGET_S = 0.5
PREFILL_SIZES = (128, 512)
BACKENDS = ("native", "reference")
DECODE_PROMPT = "Once upon a time, in a small village by the sea, there lived"
CACHE_DIR_ENV = "LLAMBO_CACHE_DIR"
REFERENCE_CACHE_ENV = "LLAMBO_REFERENCE_CACHE"
# Memory runs: label -> (backend, reference cache mode: "off", "fresh" or "warm").
MEMORY_RUNS = {
    "native": ("native", "off"),
    "reference, cache off": ("reference", "off"),
    "reference, writing a fresh cache": ("reference", "fresh"),
    "reference, from the cache": ("reference", "warm"),
}


# ---------------------------------------------------------------------------------------------
# Speed: decode and prefill, in pairs
# ---------------------------------------------------------------------------------------------


def load_models(path: Path, params: LoadParams) -> dict[str, LoadedModel]:
    """Both backends' models of ``path`` (the reference one through the current cache settings)."""
    from llambo.native.model import NativeModel
    from llambo.reference.model import ReferenceModel

    return {"native": NativeModel(path, params), "reference": ReferenceModel(path, params)}


def random_prompt(model: LoadedModel, n_tokens: int, rng: random.Random) -> list[int]:
    """BOS (when the model adds one) then random token ids, as llama-bench's pp uses."""
    bos = model.tokenize("", add_special=True)[:1]
    return bos + [rng.randrange(model.n_vocab) for _ in range(n_tokens - len(bos))]


def prefill_tps(model: LoadedModel, tokens: Sequence[int]) -> float:
    """Tokens/s of one ``logits()`` call from an empty context."""
    started = time.perf_counter()
    model.logits(tokens)
    return len(tokens) / (time.perf_counter() - started)


class Decoder:
    """Greedy ``generate`` runs; remembers the fewest tokens any run produced."""

    def __init__(self, n_gen: int) -> None:
        self.params = SamplingParams(temperature=0.0, max_tokens=n_gen)
        self.fewest: dict[str, int] = {}

    def __call__(self, model: LoadedModel) -> float:
        timings = generate(model, DECODE_PROMPT, self.params).timings
        fewest = self.fewest.get(model.backend, timings.generated_tokens)
        self.fewest[model.backend] = min(fewest, timings.generated_tokens)
        return timings.tokens_per_second


def prefill_tests(model: LoadedModel, seed: int) -> dict[str, Callable[[LoadedModel], float]]:
    """ppN by name: each measures one model's prefill of the same random prompt, in tokens/s."""
    rng = random.Random(seed)
    tests: dict[str, Callable[[LoadedModel], float]] = {}
    for size in PREFILL_SIZES:
        tokens = random_prompt(model, size, rng)
        tests[f"pp{size}"] = functools.partial(prefill_tps, tokens=tokens)
    return tests


def run_pairs(
    models: dict[str, LoadedModel],
    tests: dict[str, Callable[[LoadedModel], float]],
    repeat: int,
    threads: int,
) -> Samples:
    """``repeat`` times, per test: native and reference back to back, each first in turn."""
    samples: Samples = {}
    for index in range(repeat):
        say(f"pair {index + 1}/{repeat}")
        for test, measure in tests.items():
            for backend in BACKENDS if index % 2 == 0 else BACKENDS[::-1]:
                _add(samples, f"{backend}:{test}", threads, measure(models[backend]))
    return samples


# ---------------------------------------------------------------------------------------------
# Load time and the dequantisation cache
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set (or, for None, remove) environment variables for the duration of the block."""
    saved = {name: os.environ.get(name) for name in values}

    def apply(settings: dict[str, str | None]) -> None:
        for name, value in settings.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    apply(values)
    try:
        yield
    finally:
        apply(saved)


def wait_for_cache_file(cache_root: Path, timeout_s: float = 120.0) -> bool:
    """Wait for the background writer of a new cache entry; True once the entry is in place."""
    for thread in threading.enumerate():
        if thread.name.startswith("llambo-dequant"):
            thread.join(timeout_s)
    return any((cache_root / "dequant").glob("*.npy"))


def timed_load(path: Path, cache: bool) -> tuple[float, bool]:
    """Seconds of one ``load_weights`` and whether its arena came from the cache."""
    from llambo.reference.gguf_weights import load_weights

    started = time.perf_counter()
    _, weights, _ = load_weights(path, cache=cache)
    elapsed = time.perf_counter() - started
    return elapsed, weights.cached


def run_loads(
    path: Path, params: LoadParams, repeat: int, scratch: Path
) -> tuple[dict[str, list[float]], Path]:
    """Cold, fresh-cache and cached load times; returns them and a populated cache root."""
    from llambo.native.model import NativeModel
    from llambo.reference.model import ReferenceModel

    times: dict[str, list[float]] = {}
    keep = scratch / "cache-warm"
    for index in range(repeat):
        say(f"load {index + 1}/{repeat}")
        root = keep if index == repeat - 1 else scratch / f"cache-{index}"
        seconds, _ = timed_load(path, cache=False)
        times.setdefault("cold, cache off", []).append(seconds)
        with environment(**{CACHE_DIR_ENV: str(root), REFERENCE_CACHE_ENV: None}):
            seconds, cached = timed_load(path, cache=True)
            if cached:
                raise SystemExit(f"the fresh cache dir {root} already held an entry")
            times.setdefault("cold, writing a fresh cache", []).append(seconds)
            if not wait_for_cache_file(root):
                raise SystemExit(f"no cache entry was written in {root}: too little disk space?")
            seconds, cached = timed_load(path, cache=True)
            if not cached:
                raise SystemExit(f"the load after writing {root} did not use the cache")
            times.setdefault("from the cache", []).append(seconds)
            started = time.perf_counter()
            ReferenceModel(path, params).close()
            times.setdefault("ReferenceModel(), from the cache", []).append(time.perf_counter() - started)
        started = time.perf_counter()
        NativeModel(path, params).close()
        times.setdefault("NativeModel()", []).append(time.perf_counter() - started)
        if root != keep:
            shutil.rmtree(root, ignore_errors=True)
    return times, keep


def float32_weight_bytes(path: Path) -> int:
    """The model's weights in float32: every tensor's element count times 4."""
    from llambo.reference.gguf_weights import GGUFFile

    with GGUFFile(path) as gfile:
        return sum(4 * _elements(info.shape) for info in gfile.tensors.values())


def _elements(shape: Sequence[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


# ---------------------------------------------------------------------------------------------
# Peak memory, one fresh process per run
# ---------------------------------------------------------------------------------------------


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (e.g. VmHWM, VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"/proc/self/status has no {field}: peak memory needs Linux")


def memory_child(backend: str, path: Path, params: LoadParams, n_gen: int) -> int:
    """In a fresh process: VmHWM after ``import numpy``, after loading, after generating (JSON)."""
    importlib.import_module("numpy")
    record = {"baseline_kib": status_kib("VmHWM")}
    from llambo.backends import get_backend

    model = get_backend(backend).load(path, params)
    record["loaded_kib"] = status_kib("VmHWM")
    result = generate(model, DECODE_PROMPT, SamplingParams(temperature=0.0, max_tokens=n_gen))
    record["peak_kib"] = status_kib("VmHWM")
    record["rss_kib"] = status_kib("VmRSS")
    record["generated"] = len(result.tokens)
    record["from_cache"] = int(bool(getattr(getattr(model, "weights", None), "cached", False)))
    model.close()
    print(json.dumps(record))
    return 0


def run_memory(
    path: Path, args: argparse.Namespace, scratch: Path, warm_root: Path
) -> dict[str, dict[str, int]]:
    """Each MEMORY_RUNS entry in its own subprocess (this script with --memory-child)."""
    results: dict[str, dict[str, int]] = {}
    for label, (backend, mode) in MEMORY_RUNS.items():
        say(f"peak memory: {label}")
        env = dict(os.environ)
        env.pop(REFERENCE_CACHE_ENV, None)
        fresh = scratch / "cache-memory"
        if mode == "off":
            env[REFERENCE_CACHE_ENV] = "0"
        else:
            env[CACHE_DIR_ENV] = str(fresh if mode == "fresh" else warm_root)
        command = [
            sys.executable, __file__, "--memory-child", backend, "--model", str(path),
            "--threads", str(args.threads), "--ctx", str(args.ctx), "--gen-tokens", str(args.gen_tokens),
        ]  # fmt: skip
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wrote = any((fresh / "dequant").glob("*.npy"))
        shutil.rmtree(fresh, ignore_errors=True)
        if proc.returncode != 0:
            raise SystemExit(f"the memory run {label!r} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        record = results[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        if record["from_cache"] != (mode == "warm") or wrote != (mode == "fresh"):
            say(f"WARNING: {label}: from the cache {bool(record['from_cache'])}, wrote a cache entry {wrote}")
    return results


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def blas_description() -> str:
    """numpy's version and its BLAS library, as numpy reports them."""
    import numpy as np

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"numpy {np.__version__}, {blas.get('name')} {blas.get('version')}"
    except (KeyError, TypeError, ValueError):
        return f"numpy {np.__version__}"


def _mib(kib: int) -> float:
    return kib / 1024


def report(
    samples: Samples,
    loads: dict[str, list[float]],
    memory: dict[str, dict[str, int]],
    args: argparse.Namespace,
    info: dict[str, Any],
) -> str:
    """The results as tables, with the ratios and PASS/MISS per target."""
    t = args.threads
    lines = [
        f"model: {info['model']}",
        f"machine: {info['cpu']}, {os.cpu_count()} logical CPUs; {info['python']}, {info['blas']}",
        f"date: {info['date']}",
        f"1-minute load average: {info['load_before']:.2f} before, {info['load_after']:.2f} after",
        f"threads {t} (OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}), n_ctx {args.ctx}; "
        f"{args.repeat} pairs (native and reference back to back, in turn first)",
        "",
        "speed, tokens/s, median ± stdev; ratio: median of the paired reference/native ratios;"
        " best: ratio of the best samples",
        f"{'test':<28} {'native':>15} {'reference':>15} {'ratio':>6} {'best':>6}  target",
    ]
    targets = {"decode": DECODE_TARGET, **{f"pp{size}": PREFILL_TARGET for size in PREFILL_SIZES}}
    labels = {"decode": f"decode, tg{args.gen_tokens} generate"}
    for test, target in targets.items():
        nat, ref = f"native:{test}", f"reference:{test}"
        ratio = _paired_ratio(samples, ref, nat, t)
        best = max(samples[(ref, t)]) / max(samples[(nat, t)])
        lines.append(
            f"{labels.get(test, f'prefill, {test} logits()'):<28}"
            f" {_median(samples, nat, t):>7.1f} ± {_spread(samples, nat, t):<5.1f}"
            f" {_median(samples, ref, t):>7.1f} ± {_spread(samples, ref, t):<5.1f}"
            f" {ratio:>6.3f} {best:>6.3f}  >= {target} {_verdict(ratio >= target)}"
        )
    fewest = info.get("fewest_generated", {})
    if any(count < args.gen_tokens for count in fewest.values()):
        lines.append(f"note: a decode run stopped early (fewest tokens per backend: {fewest})")
    weights_mib = info["float32_weight_bytes"] / 2**20
    lines += [
        "",
        f"peak memory, MiB: VmHWM after loading and generating {args.gen_tokens} tokens, less VmHWM after"
        f" `import numpy`; float32 weights: {weights_mib:.1f} MiB",
        f"{'run':<34} {'baseline':>8} {'loaded':>8} {'peak':>8} {'peak-base':>9} {'x f32':>6}  target",
    ]
    for label, record in memory.items():
        used = _mib(record["peak_kib"] - record["baseline_kib"])
        factor = used / weights_mib
        lines.append(
            f"{label:<34} {_mib(record['baseline_kib']):>8.1f} {_mib(record['loaded_kib']):>8.1f}"
            f" {_mib(record['peak_kib']):>8.1f} {used:>9.1f} {factor:>6.2f}  <= {MEMORY_TARGET}x"
            f" {_verdict(factor <= MEMORY_TARGET)}"
        )
    lines += [
        "",
        f"load time, s, median (min, max) of {len(next(iter(loads.values())))}",
        f"{'load':<34} {'median':>7} {'min':>7} {'max':>7}  target",
    ]
    limits = {
        "cold, cache off": COLD_LOAD_TARGET_S,
        "cold, writing a fresh cache": COLD_LOAD_TARGET_S,
        "from the cache": CACHED_LOAD_TARGET_S,
    }
    for label, values in loads.items():
        median = statistics.median(values)
        limit = limits.get(label)
        verdict = f"<= {limit} s {_verdict(median <= limit)}" if limit is not None else "(for comparison)"
        lines.append(f"{label:<34} {median:>7.3f} {min(values):>7.3f} {max(values):>7.3f}  {verdict}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="GGUF file (default: llambo's default model)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both backends (default: 2)")
    parser.add_argument("--repeat", type=int, help="pairs per speed figure and loads per kind (default: 6)")
    parser.add_argument("--gen-tokens", type=int, help="tokens per decode run (default: 128)")
    parser.add_argument("--ctx", type=int, default=1024, help="n_ctx of both models (default: 1024)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the random prompt token ids")
    parser.add_argument("--max-load", type=float, default=0.5, help="wait for a lower 1-min load average")
    parser.add_argument("--wait", type=float, help="give up waiting after this many seconds (default: 60)")
    parser.add_argument("--quick", action="store_true", help="2 pairs, 32 tokens, no waiting: a smoke run")
    parser.add_argument("--json", type=Path, help="also write every sample and the summary here")
    parser.add_argument("--memory-child", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.repeat = args.repeat or (2 if quick else 6)
    args.gen_tokens = args.gen_tokens or (32 if quick else 128)
    args.wait = args.wait if args.wait is not None else (0.0 if quick else 60.0)
    if args.ctx < max(PREFILL_SIZES) + 1 or args.ctx < args.gen_tokens + 32:
        parser.error(f"--ctx {args.ctx} cannot hold the pp{max(PREFILL_SIZES)} or decode runs")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if "numpy" in sys.modules and os.environ.get("OPENBLAS_NUM_THREADS") != str(args.threads):
        say("WARNING: numpy was imported before OPENBLAS_NUM_THREADS could be set; BLAS threads unknown")
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)  # before numpy is imported
    model_path = (args.model or ensure_default_model()).expanduser().resolve()
    params = LoadParams(n_threads=args.threads, n_ctx=args.ctx)
    if args.memory_child:
        return memory_child(args.memory_child, model_path, params, args.gen_tokens)
    info: dict[str, Any] = {
        "model": str(model_path),
        "cpu": cpu_model(),
        "python": f"Python {platform.python_version()}",
        "blas": blas_description(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "threads": args.threads,
        "n_ctx": args.ctx,
        "float32_weight_bytes": float32_weight_bytes(model_path),
    }
    info["load_before"] = wait_for_quiet(args.max_load, args.wait, 15.0)
    scratch = Path(tempfile.mkdtemp(prefix="llambo-bench-reference-"))
    try:
        say(f"dequantisation caches in {scratch}")
        loads, warm_root = run_loads(model_path, params, args.repeat, scratch)
        memory = run_memory(model_path, args, scratch, warm_root)
        with environment(**{CACHE_DIR_ENV: str(warm_root), REFERENCE_CACHE_ENV: None}):
            models = load_models(model_path, params)
        try:
            decoder = Decoder(args.gen_tokens)
            tests: dict[str, Callable[[LoadedModel], float]] = {"decode": decoder}
            tests.update(prefill_tests(models["native"], args.seed))
            say("warming up")
            for measure in tests.values():
                for model in models.values():
                    measure(model)
            samples = run_pairs(models, tests, args.repeat, args.threads)
            info["fewest_generated"] = decoder.fewest
        finally:
            for model in models.values():
                model.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    info["load_after"] = os.getloadavg()[0]
    text = report(samples, loads, memory, args, info)
    print(text)
    if args.json:
        data = {
            "info": info,
            "samples": {key: values for (key, _), values in samples.items()},
            "loads": loads,
            "memory": memory,
            "report": text,
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
