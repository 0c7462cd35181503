"""llambo's native path against llama.cpp's own ``llama-bench``, built from the same source, in one run.

    PYTHONPATH=. python bench/bench_native.py [--model PATH] [--threads 1,2] [--pairs 10] [--json PATH]

``llama-bench`` is compiled from the full ``vendor/llama.cpp`` tree of the pinned sdist (the one
``third_party/pin.json`` names and llambo's own library is built from), with the same GGML flags,
into ``build/bench-llama-bench``, together with a small C program running llambo's generation
calls without Python (the C loop below); all of it is cached and redone only when the pin changes.

Figures, each in tokens/s and measured as llama-bench measures them:

* pp512: one 512-token prompt of random token ids evaluated from an empty context
  (``NativeSession.prefill`` with n_batch 512, then ``llama_synchronize``).
* tg128 generate: ``llambo.generation.generate`` on a one-token prompt, greedy, 128 tokens: the
  public generation loop, so 128 single-token decodes *and* 128 ``llama_sampler_sample`` calls.
* tg128 decode only: the same 128 single-token decodes through ``NativeSession.feed`` (each
  followed by ``llama_synchronize``, as llama-bench does), no sampling: like for like with
  llama-bench's tg128.
* Python time per generated token: the generate run's wall time minus llama.cpp's own decode and
  sampling time (``llama_perf_context`` t_p_eval_ms + t_eval_ms, ``llama_perf_sampler``
  t_sample_ms), divided by the tokens generated. llama.cpp's counters leave out part of its own
  work (batch checks before a decode's clock starts, the candidate array ``llama_sampler_sample``
  fills before its clock starts), so the same formula is applied to the C loop, which has no
  Python at all; the difference is Python's own share. A separate generate run also measures it
  directly: wall time outside the session's prefill/sample/feed calls.

Each figure is measured ``--pairs`` times as a pair: llama.cpp (one llama-bench run of that test
and thread count, after its own warm-up; for tg also one rep of the C loop) and llambo back to
back, each side first in turn, so that the machine's drifting load hits both alike. Ratios are
medians of the paired ratios. Before measuring, the script waits for the 1-minute load average to
fall below ``--max-load``. This is a measurement, not a test: it exits 0 whether or not the
targets are met.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import functools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from build_tools.source import Pin, SourceError, extract_tree, load_pin
from llambo._fetch import cache_dir, pip_download
from llambo.api import InferenceResult, LoadParams, SamplingParams
from llambo.backends import get_backend
from llambo.default_model import ensure_default_model
from llambo.generation import generate
from llambo.native.library import load_library
from llambo.native.model import NativeModel

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO_ROOT / "build" / "bench-llama.cpp-src"
BUILD_DIR = REPO_ROOT / "build" / "bench-llama-bench"
SOURCE_STAMP = ".llambo-bench-source.json"
BUILD_STAMP = "llambo-bench-build.json"

RATIO_TARGET = 0.98
PYTHON_MS_TARGET = 0.03
SAMPLER_PROBE_CALLS = 200
GREEDY = SamplingParams(temperature=0.0, max_tokens=1)


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# llama-bench, built from the pinned source
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def extract_full_tree(sdist: Path, pin: Pin, dest: Path) -> int:
    """Extract the whole llama.cpp tree of the sdist into ``dest`` (replaced atomically)."""
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    prefix = pin.subdir.rstrip("/") + "/"
    try:
        count, commit = extract_tree(sdist, pin, staging)
    except SourceError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise SystemExit(str(exc)) from None
    if not (staging / "tools" / "llama-bench" / "llama-bench.cpp").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise SystemExit(f"{sdist.name} has no {prefix}tools/llama-bench: not the expected sdist")
    if commit and commit != pin.llama_cpp_commit:
        shutil.rmtree(staging, ignore_errors=True)
        raise SystemExit(f"{sdist.name} carries llama.cpp {commit}, the pin says {pin.llama_cpp_commit}")
    stamp = {"identity": pin.identity, "package": pin.requirement, "commit": pin.llama_cpp_commit}
    (staging / SOURCE_STAMP).write_text(json.dumps({**stamp, "files": count}, indent=2) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return count


def prepare_source(pin: Pin) -> Path:
    """The full llama.cpp tree of the pinned sdist in SOURCE_DIR, extracted when the pin changed."""
    stamp = _read_json(SOURCE_DIR / SOURCE_STAMP)
    if stamp is not None and stamp.get("identity") == pin.identity:
        return SOURCE_DIR
    downloads = cache_dir() / "downloads"
    say(f"getting {pin.requirement} (source) into {downloads}")
    sdist = pip_download(pin.requirement, pin.filename, downloads, pin.sha256, source_only=True, quiet=True)
    count = extract_full_tree(sdist, pin, SOURCE_DIR)
    say(f"extracted {count} files of llama.cpp into {SOURCE_DIR}")
    return SOURCE_DIR


def llambo_build_info() -> dict[str, Any]:
    """The BUILD_INFO.json of the libllama llambo loads (empty if it has none)."""
    return dict(load_library().build_info or {})


def configure_command(source: Path, pin: Pin, native_cpu: bool) -> list[str]:
    """CMake configure for llama-bench with the GGML flags of llambo's own CPU build."""
    command = ["cmake", "-S", str(source), "-B", str(BUILD_DIR)]
    if shutil.which("ninja"):
        command += ["-G", "Ninja"]
    return [
        *command,
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        f"-DGGML_NATIVE={'ON' if native_cpu else 'OFF'}",
        "-DGGML_CUDA=OFF",
        "-DGGML_RPC=OFF",
        "-DLLAMA_BUILD_COMMON=ON",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        "-DLLAMA_OPENSSL=OFF",
        f"-DLLAMA_BUILD_COMMIT={pin.llama_cpp_commit}",
        "-DLLAMA_BUILD_NUMBER=0",
    ]


def _run_build_step(command: list[str]) -> None:
    say("$ " + " ".join(command))
    niced = ["nice", "-n", "10", *command] if shutil.which("nice") else command
    proc = subprocess.run(niced, stdout=sys.stderr, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"command failed with exit code {proc.returncode}: {' '.join(command)}")


def build_llama_bench(pin: Pin, jobs: int | None) -> Path:
    """Configure (when the source or flags changed) and build only the llama-bench target."""
    source = prepare_source(pin)
    native_cpu = bool(llambo_build_info().get("native_cpu", True))
    configure = configure_command(source, pin, native_cpu)
    stamp = _read_json(BUILD_DIR / BUILD_STAMP)
    if stamp is not None and stamp.get("source_identity") != pin.identity:
        say(f"llama.cpp source changed: clean rebuild in {BUILD_DIR}")
        shutil.rmtree(BUILD_DIR)
        stamp = None
    generated = (BUILD_DIR / "build.ninja").exists() or (BUILD_DIR / "Makefile").exists()
    if not (generated and stamp is not None and stamp.get("configure") == configure):
        _run_build_step(configure)
        record = {"source_identity": pin.identity, "configure": configure}
        (BUILD_DIR / BUILD_STAMP).write_text(json.dumps(record, indent=2) + "\n")
    jobs = jobs or os.cpu_count() or 1
    _run_build_step(["cmake", "--build", str(BUILD_DIR), "--target", "llama-bench", "--parallel", str(jobs)])
    binary = BUILD_DIR / "bin" / "llama-bench"
    if not binary.is_file():
        raise SystemExit(f"the build finished but {binary} is missing")
    return binary


# The generate loop in C, without Python: the calls llambo's generate makes, in its order, on a
# context configured as llambo configures its own. After a warm-up rep, runs one rep per line read
# from stdin and prints its figures as one JSON line.
C_LOOP_SOURCE = r"""
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void quiet(enum ggml_log_level level, const char * text, void * data) {
    (void) level; (void) text; (void) data;
}

int main(int argc, char ** argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s MODEL THREADS FIRST_TOKEN N_GEN N_CTX N_BATCH\n", argv[0]);
        return 2;
    }
    const int n_threads = atoi(argv[2]), first = atoi(argv[3]), n_gen = atoi(argv[4]), probes = 200;
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(argv[1], mparams);
    if (!model) return 1;
    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = atoi(argv[5]);
    cparams.n_batch = cparams.n_ubatch = atoi(argv[6]);
    cparams.n_seq_max = 1;
    cparams.n_threads = cparams.n_threads_batch = n_threads;
    cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO;
    cparams.no_perf = false;
    struct llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) return 1;
    struct llama_sampler_chain_params sparams = llama_sampler_chain_default_params();
    sparams.no_perf = false;
    char line[64];
    for (int rep = 0; rep == 0 || fgets(line, sizeof line, stdin); rep++) {
        /* generate: a greedy chain, a one-token prompt, then sample and decode n_gen times */
        const double t0 = now_ms();
        struct llama_sampler * chain = llama_sampler_chain_init(sparams);
        llama_sampler_chain_add(chain, llama_sampler_init_greedy());
        llama_memory_clear(llama_get_memory(ctx), false);
        llama_perf_context_reset(ctx);
        llama_token token = first;
        for (int i = 0; i < n_gen; i++) {
            if (llama_decode(ctx, llama_batch_get_one(&token, 1)) != 0) return 1;
            token = llama_sampler_sample(chain, ctx, -1);
        }
        const double gen_ms = now_ms() - t0;
        const struct llama_perf_context_data gen = llama_perf_context(ctx);
        const double sample_ms = llama_perf_sampler(chain).t_sample_ms;
        /* llama_sampler_sample on the same logits: its time outside t_sample */
        const double s0 = now_ms();
        for (int i = 0; i < probes; i++) llama_sampler_sample(chain, ctx, -1);
        const double probe_ms = now_ms() - s0 - (llama_perf_sampler(chain).t_sample_ms - sample_ms);
        llama_sampler_free(chain);
        /* decode only, as llama-bench's tg: decode and synchronize n_gen times */
        llama_memory_clear(llama_get_memory(ctx), false);
        llama_perf_context_reset(ctx);
        token = first;
        const double d0 = now_ms();
        for (int i = 0; i < n_gen; i++) {
            if (llama_decode(ctx, llama_batch_get_one(&token, 1)) != 0) return 1;
            llama_synchronize(ctx);
        }
        const double dec_ms = now_ms() - d0;
        const struct llama_perf_context_data dec = llama_perf_context(ctx);
        if (rep == 0) continue; /* warm-up */
        printf("{\"gen_ms\": %.6f, \"eval_ms\": %.6f, \"sample_ms\": %.6f, "
               "\"sample_outside_ms\": %.6f, \"dec_ms\": %.6f, \"dec_eval_ms\": %.6f}\n",
               gen_ms, gen.t_p_eval_ms + gen.t_eval_ms, sample_ms, probe_ms / probes,
               dec_ms, dec.t_p_eval_ms + dec.t_eval_ms);
        fflush(stdout);
    }
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
"""


def build_c_loop(binary: Path) -> Path:
    """Compile C_LOOP_SOURCE against the libllama next to ``binary`` (when the source changed)."""
    bin_dir, source = binary.parent, SOURCE_DIR
    c_file, program = BUILD_DIR / "bench_c_loop.c", bin_dir / "bench-c-loop"
    if not (program.is_file() and c_file.is_file() and c_file.read_text() == C_LOOP_SOURCE):
        c_file.write_text(C_LOOP_SOURCE)
        compiler = "cc"
        for line in (BUILD_DIR / "CMakeCache.txt").read_text().splitlines():
            if line.startswith("CMAKE_C_COMPILER:"):
                compiler = line.split("=", 1)[1]
        _run_build_step([
            compiler, "-O2", "-o", str(program), str(c_file),
            f"-I{source / 'include'}", f"-I{source / 'ggml' / 'include'}",
            f"-L{bin_dir}", "-lllama", f"-Wl,-rpath,{bin_dir}",
        ])  # fmt: skip
    return program


class CLoop:
    """The C loop as a long-lived process for one thread count; ``sample()`` runs one rep."""

    def __init__(
        self, program: Path, model: Path, threads: int, first: int, n_gen: int, n_ctx: int, n_batch: int
    ) -> None:
        command = [program, model, threads, first, n_gen, n_ctx, n_batch]
        self.process = subprocess.Popen(
            [str(part) for part in command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def sample(self) -> dict[str, float]:
        process = self.process
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("\n")
        process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            raise SystemExit(f"the C loop exited with {process.wait()}")
        record: dict[str, float] = json.loads(line)
        return record

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def llama_bench_command(
    binary: Path, model: Path, threads: int, n_prompt: int, n_gen: int, n_batch: int
) -> list[str]:
    """One llama-bench test (its own warm-up, then one rep) with llambo's context settings."""
    return [
        str(binary), "-m", str(model), "-p", str(n_prompt), "-n", str(n_gen), "-t", str(threads),
        "-b", str(n_batch), "-ub", str(n_batch), "-ngl", "0", "-fa", "auto", "-r", "1", "-o", "json",
    ]  # fmt: skip


def run_llama_bench(command: list[str]) -> list[dict[str, Any]]:
    """Run llama-bench once and return its JSON records (one per test and thread count)."""
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"llama-bench failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    records: list[dict[str, Any]] = json.loads(proc.stdout)
    return records


# ---------------------------------------------------------------------------------------------
# llambo, through the public model, session and generation loop
# ---------------------------------------------------------------------------------------------


class PerfSamplerData(ctypes.Structure):
    """``struct llama_perf_sampler_data`` (llama.h)."""

    _fields_ = (("t_sample_ms", ctypes.c_double), ("n_sample", ctypes.c_int32))


def perf_sampler_function(lib: ctypes.CDLL) -> Callable[[int], PerfSamplerData]:
    """``llama_perf_sampler``, declared here because the binding's FUNCTIONS table lacks it.

    ``lib[name]`` gives a function object of its own, so the binding's declarations are untouched.
    """
    function = lib["llama_perf_sampler"]
    function.argtypes = (ctypes.c_void_p,)
    function.restype = PerfSamplerData
    return function


def _private(obj: object, name: str) -> Any:
    """An internal handle of llambo's native objects (raw pointers the public API does not expose)."""
    value = getattr(obj, name, None)
    if not value:
        raise SystemExit(f"{type(obj).__name__} has no {name!r}: update bench_native.py to the new layout")
    return value


class _RecordingSession:
    """A session whose close() first reads llama.cpp's counters; the hot methods are the real ones."""

    def __init__(self, owner: _RecordingModel, session: Any) -> None:
        self._owner = owner
        self._session = session
        self.prefill = session.prefill
        self.sample = session.sample
        self.feed = session.feed

    def close(self) -> None:
        owner = self._owner
        counters = dict(owner.model.perf())
        sampler = owner.perf_sampler(_private(self._session, "_sampler"))
        counters["t_sample_ms"] = sampler.t_sample_ms
        counters["n_sample"] = sampler.n_sample
        owner.counters = counters
        self._session.close()


class _RecordingModel:
    """Passes everything to the model, and keeps the counters of the last session it handed out."""

    def __init__(self, model: Any, perf_sampler: Callable[[int], PerfSamplerData]) -> None:
        self.model = model
        self.perf_sampler = perf_sampler
        self.counters: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def session(self, params: SamplingParams) -> _RecordingSession:
        return _RecordingSession(self, self.model.session(params))


class _TimedSession:
    """A session adding up the time spent inside its prefill/sample/feed calls, i.e. not in Python."""

    def __init__(self, session: Any) -> None:
        self.inside = 0.0
        self.prefill = self._timed(session.prefill)
        self.sample = self._timed(session.sample)
        self.feed = self._timed(session.feed)
        self.close = session.close

    def _timed(self, function: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.perf_counter

        def call(*args: Any) -> Any:
            started = clock()
            result = function(*args)
            self.inside += clock() - started
            return result

        return call


class _TimingModel:
    """Passes everything to the model; its sessions are timed (see _TimedSession)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.last: _TimedSession | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def session(self, params: SamplingParams) -> _TimedSession:
        self.last = _TimedSession(self.model.session(params))
        return self.last


class LlamboRunner:
    """One loaded model per thread count, and the measurements, each from an empty context."""

    def __init__(self, path: Path, threads: Sequence[int], n_prompt: int, n_gen: int, seed: int) -> None:
        backend = get_backend("native")
        self.models = {t: cast(NativeModel, backend.load(path, LoadParams(n_threads=t))) for t in threads}
        any_model = next(iter(self.models.values()))
        lib = load_library().lib
        self.n_prompt, self.n_gen = n_prompt, n_gen
        self.synchronize = lib.llama_synchronize
        self.perf_sampler = perf_sampler_function(lib)
        self.contexts = {t: ctypes.c_void_p(_private(m, "_ctx")) for t, m in self.models.items()}
        self.params = SamplingParams(temperature=0.0, max_tokens=n_gen)
        rng = random.Random(seed)
        n_vocab = any_model.n_vocab
        # Like llama-bench: BOS first when the model adds one, random token ids otherwise.
        bos = any_model.tokenize("", add_special=True)
        self.prompt = bos[:1] + [rng.randrange(n_vocab) for _ in range(n_prompt - len(bos[:1]))]
        self.first = self._first_token(any_model, bos, rng)

    def _first_token(self, model: Any, bos: list[int], rng: random.Random) -> int:
        """BOS or a seeded random token from which greedy decoding runs the full n_gen tokens."""
        candidates = bos[:1] + [rng.randrange(model.n_vocab) for _ in range(32)]
        for token in candidates:
            if len(generate(model, [token], self.params).tokens) == self.n_gen:
                return token
        raise SystemExit(f"no start token found that greedy decoding follows with {self.n_gen} tokens")

    def prompt_tps(self, threads: int) -> float:
        """pp: tokens/s of one prefill of the random prompt."""
        model, ctx = self.models[threads], self.contexts[threads]
        with model.session(GREEDY) as session:
            started = time.perf_counter()
            session.prefill(self.prompt)
            self.synchronize(ctx)
            elapsed = time.perf_counter() - started
        return self.n_prompt / elapsed

    def generate(self, threads: int) -> tuple[float, dict[str, float], InferenceResult]:
        """tg through ``generate``: tokens/s, llama.cpp's counters (+ wall_ms) and the result."""
        recorder = _RecordingModel(self.models[threads], self.perf_sampler)
        started = time.perf_counter()
        result = generate(recorder, [self.first], self.params)
        elapsed = time.perf_counter() - started
        if len(result.tokens) != self.n_gen:
            raise SystemExit(f"generation stopped after {len(result.tokens)} of {self.n_gen} tokens")
        counters = {**recorder.counters, "wall_ms": elapsed * 1e3}
        return self.n_gen / elapsed, counters, result

    def decode_only(self, threads: int, tokens: Sequence[int]) -> tuple[float, dict[str, float]]:
        """tg as llama-bench does it: the same single-token decodes, each synchronised, no sampling."""
        model, ctx, sync = self.models[threads], self.contexts[threads], self.synchronize
        fed = list(tokens[: self.n_gen - 1])
        with model.session(GREEDY) as session:
            feed = session.feed
            started = time.perf_counter()
            session.prefill([self.first])
            sync(ctx)
            for token in fed:
                feed(token)
                sync(ctx)
            elapsed = time.perf_counter() - started
            counters = {**model.perf(), "wall_ms": elapsed * 1e3}
        return self.n_gen / elapsed, counters

    def python_outside_ms(self, threads: int) -> float:
        """Per token, the generate run's wall time outside the session's calls into llama.cpp."""
        timing = _TimingModel(self.models[threads])
        started = time.perf_counter()
        generate(timing, [self.first], self.params)
        elapsed = time.perf_counter() - started
        assert timing.last is not None
        return (elapsed - timing.last.inside) / self.n_gen * 1e3

    def sample_outside_ms(self, threads: int) -> float:
        """Milliseconds per ``sample()`` call that llama_perf_sampler does not count."""
        model = self.models[threads]
        with model.session(GREEDY) as session:
            session.prefill([self.first])
            sample, handle = session.sample, _private(session, "_sampler")
            sample()
            before = self.perf_sampler(handle).t_sample_ms
            started = time.perf_counter()
            for _ in range(SAMPLER_PROBE_CALLS):
                sample()
            elapsed_ms = (time.perf_counter() - started) * 1e3
            counted_ms = self.perf_sampler(handle).t_sample_ms - before
        return float(elapsed_ms - counted_ms) / SAMPLER_PROBE_CALLS

    def close(self) -> None:
        for model in self.models.values():
            model.close()


def python_ms_per_token(counters: dict[str, float], n_gen: int) -> float:
    """Wall time minus llama.cpp's own decode and sample time, per generated token."""
    native = counters["t_p_eval_ms"] + counters["t_eval_ms"] + counters.get("t_sample_ms", 0.0)
    return (counters["wall_ms"] - native) / n_gen


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def wait_for_quiet(max_load: float, timeout_s: float, poll_s: float) -> float:
    """Wait until the 1-minute load average is below ``max_load`` (or the timeout); return it."""
    deadline = time.monotonic() + timeout_s
    while True:
        load = os.getloadavg()[0]
        if load < max_load:
            say(f"1-minute load average {load:.2f} < {max_load}: measuring")
            return load
        if time.monotonic() >= deadline:
            say(f"WARNING: load average still {load:.2f} after {timeout_s:.0f} s; measuring anyway")
            return load
        say(f"1-minute load average {load:.2f} >= {max_load}: waiting {poll_s:.0f} s")
        time.sleep(poll_s)


# ---------------------------------------------------------------------------------------------
# Running and reporting
# ---------------------------------------------------------------------------------------------

Samples = dict[tuple[str, int], list[float]]
Step = Callable[[], dict[str, float]]


def _add(samples: Samples, key: str, threads: int, value: float) -> None:
    samples.setdefault((key, threads), []).append(value)


def llama_bench_step(command: list[str], key: str, info: dict[str, Any]) -> dict[str, float]:
    """One llama-bench run: its tokens/s under ``key``."""
    (record,) = run_llama_bench(command)
    info.setdefault("build_commit", record.get("build_commit"))
    return {key: float(record["avg_ts"])}


def c_loop_step(loop: CLoop, n_gen: int) -> dict[str, float]:
    """One rep of the C loop: generate and decode-only tokens/s, and its per-token costs."""
    record = loop.sample()
    native_ms = record["eval_ms"] + record["sample_ms"]
    return {
        "c_gen": n_gen / record["gen_ms"] * 1e3,
        "c_py_ms": (record["gen_ms"] - native_ms) / n_gen,
        "c_eval_ms": record["eval_ms"] / n_gen,
        "c_sample_ms": record["sample_ms"] / n_gen,
        "c_sample_outside_ms": record["sample_outside_ms"],
        "c_dec": n_gen / record["dec_ms"] * 1e3,
        "c_dec_outside_ms": (record["dec_ms"] - record["dec_eval_ms"]) / n_gen,
    }


def llambo_pp_step(runner: LlamboRunner, threads: int) -> dict[str, float]:
    return {"pp": runner.prompt_tps(threads)}


def llambo_tg_step(runner: LlamboRunner, threads: int) -> dict[str, float]:
    """Generate, the same decodes alone, the sample() probe and the instrumented generate run."""
    n_gen = runner.n_gen
    tps, counters, result = runner.generate(threads)
    figures = {
        "gen": tps,
        "py_ms": python_ms_per_token(counters, n_gen),
        "eval_ms": counters["t_eval_ms"] / n_gen,
        "sample_ms": counters["t_sample_ms"] / n_gen,
    }
    tps, counters = runner.decode_only(threads, result.tokens)
    figures["dec"] = tps
    figures["dec_outside_ms"] = python_ms_per_token(counters, n_gen)
    figures["sample_outside_ms"] = runner.sample_outside_ms(threads)
    figures["py_direct_ms"] = runner.python_outside_ms(threads)
    return figures


def run_pairs(
    pairs: int, threads: Sequence[int], native: dict[tuple[int, str], list[Step]], ours: dict[int, list[Step]]
) -> Samples:
    """``pairs`` times, per thread count: pp then tg, llama.cpp and llambo back to back, in turn first."""
    samples: Samples = {}
    for index in range(pairs):
        say(f"pair {index + 1}/{pairs}")
        for t in threads:
            for test, llambo_step in zip(("pp", "tg"), ours[t], strict=True):
                steps = [*native[(t, test)], llambo_step]
                for step in steps if index % 2 == 0 else steps[::-1]:
                    for key, value in step().items():
                        _add(samples, key, t, value)
    return samples


def _median(samples: Samples, key: str, threads: int) -> float:
    return statistics.median(samples[(key, threads)])


def _spread(samples: Samples, key: str, threads: int) -> float:
    values = samples[(key, threads)]
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _paired_ratio(samples: Samples, key: str, base_key: str, threads: int) -> float:
    """The median of llambo/llama.cpp over the pairs measured back to back."""
    pairs = zip(samples[(key, threads)], samples[(base_key, threads)], strict=True)
    return statistics.median([ours / base for ours, base in pairs])


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _cell(median: float, lowest: float) -> str:
    return f"{median:>7.4f} ({lowest:.4f})"


def report(samples: Samples, threads: Sequence[int], args: argparse.Namespace, info: dict[str, Any]) -> str:
    """The results as tables, with the ratios and PASS/MISS per target."""
    n_prompt, n_gen = args.prompt_tokens, args.gen_tokens
    lines = [
        f"model: {info['model']}",
        f"llama.cpp {info['commit']} (llambo's library: {info['llambo_commit']}; "
        f"llama-bench: {info.get('build_commit')})",
        f"machine: {info['cpu']}, {os.cpu_count()} logical CPUs; {info['date']}",
        f"1-minute load average: {info['load_before']:.2f} before, {info['load_after']:.2f} after",
        f"{args.pairs} pairs per figure (llama.cpp and llambo back to back, in turn first); tokens/s,"
        " median ± stdev; ratio: median of the paired ratios; best: ratio of the best samples",
        "",
        f"{'threads':>7}  {'test':<26} {'llama.cpp':>15} {'llambo':>15} {'ratio':>6} {'best':>6}  target",
    ]
    tests = (
        (f"pp{n_prompt}", "lb_pp", "pp", True),
        (f"tg{n_gen} generate", "lb_tg", "gen", True),
        (f"tg{n_gen} decode only", "lb_tg", "dec", False),
        (f"tg{n_gen} generate, C loop", "c_gen", "gen", False),
    )
    for t in threads:
        for label, base_key, key, formal in tests:
            base, ours = _median(samples, base_key, t), _median(samples, key, t)
            ratio = _paired_ratio(samples, key, base_key, t)
            best = max(samples[(key, t)]) / max(samples[(base_key, t)])
            verdict = _verdict(ratio >= RATIO_TARGET)
            lines.append(
                f"{t:>7}  {label:<26} {base:>7.1f} ± {_spread(samples, base_key, t):<5.1f}"
                f" {ours:>7.1f} ± {_spread(samples, key, t):<5.1f} {ratio:>6.3f} {best:>6.3f}  "
                + (f">= {RATIO_TARGET} {verdict}" if formal else f"({verdict})")
            )
    lines += [
        "",
        "llama.cpp column: llama-bench, except the C loop (llambo's generate calls, no Python).",
        "",
        f"Python time per generated token, ms, medians (lowest): the formula (wall - t_p_eval - t_eval"
        f" - t_sample) / {n_gen}",
        "for llambo and for the C loop, their difference, and measured directly (generate's wall time"
        " outside the session's calls into llama.cpp)",
        f"{'threads':>7}  {'llambo':>15} {'C loop':>15} {'difference':>15} {'direct':>15}"
        f"  target <= {PYTHON_MS_TARGET}",
    ]
    for t in threads:
        values = {key: samples[(key, t)] for key in ("py_ms", "c_py_ms", "py_direct_ms")}
        ours, floor, direct = (statistics.median(v) for v in values.values())
        low, low_floor, low_direct = (min(v) for v in values.values())
        lines.append(
            f"{t:>7}  {_cell(ours, low)} {_cell(floor, low_floor)} {_cell(ours - floor, low - low_floor)}"
            f" {_cell(direct, low_direct)}  formula {_verdict(ours <= PYTHON_MS_TARGET)};"
            f" Python's share: difference ({_verdict(ours - floor <= PYTHON_MS_TARGET)}),"
            f" direct ({_verdict(direct <= PYTHON_MS_TARGET)})"
        )
    lines += [
        "",
        "per token, ms, llambo / C loop: llama.cpp's counters, and the time they leave out",
        f"{'threads':>7}  {'t_eval':>15} {'t_sample':>17}  {'decode-only loop':>17}  {'sample() call':>17}",
    ]
    for t in threads:
        m = functools.partial(_median, samples, threads=t)
        lines.append(
            f"{t:>7}  {m('eval_ms'):>6.3f} / {m('c_eval_ms'):<6.3f}"
            f" {m('sample_ms'):>7.4f} / {m('c_sample_ms'):<7.4f}"
            f"  {m('dec_outside_ms'):>7.4f} / {m('c_dec_outside_ms'):<7.4f}"
            f"  {m('sample_outside_ms'):>7.4f} / {m('c_sample_outside_ms'):<7.4f}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="GGUF file (default: llambo's default model)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: 1,2)")
    parser.add_argument("--pairs", type=int, default=10, help="llama.cpp/llambo pairs per figure")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1234, help="seed of the random token ids")
    parser.add_argument("--max-load", type=float, default=0.5, help="wait for a lower 1-min load average")
    parser.add_argument("--wait", type=float, default=900.0, help="give up waiting after this many seconds")
    parser.add_argument("--jobs", type=int, help="compile jobs for llama-bench (default: every core)")
    parser.add_argument("--build-only", action="store_true", help="build llama-bench and exit")
    parser.add_argument("--json", type=Path, help="also write every sample and the summary here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    pin = load_pin()
    binary = build_llama_bench(pin, args.jobs)
    c_program = build_c_loop(binary)
    say(f"llama-bench: {binary}; C loop: {c_program}")
    if args.build_only:
        return 0
    model = (args.model or ensure_default_model()).expanduser().resolve()
    n_batch, n_prompt, n_gen = LoadParams().n_batch, args.prompt_tokens, args.gen_tokens
    commands = {
        (t, test): llama_bench_command(binary, model, t, prompt, gen, n_batch)
        for t in threads
        for test, prompt, gen in (("pp", n_prompt, 0), ("tg", 0, n_gen))
    }
    build_info = llambo_build_info()
    if build_info.get("source_identity") != pin.identity:
        origin = build_info.get("source_identity")
        say(f"WARNING: llambo's library is from {origin}, the pin is {pin.identity}")
    info: dict[str, Any] = {
        "model": str(model),
        "commit": pin.llama_cpp_commit,
        "llambo_commit": build_info.get("llama_cpp_commit"),
        "cpu": cpu_model(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "llama_bench_commands": [" ".join(command) for command in commands.values()],
    }
    info["load_before"] = wait_for_quiet(args.max_load, args.wait, 30.0)
    runner = LlamboRunner(model, threads, n_prompt, n_gen, args.seed)
    n_ctx = runner.models[threads[0]].n_ctx
    loops = {t: CLoop(c_program, model, t, runner.first, n_gen, n_ctx, n_batch) for t in threads}
    try:
        say("warming up llambo")
        for t in threads:
            llambo_pp_step(runner, t)
            llambo_tg_step(runner, t)
        native: dict[tuple[int, str], list[Step]] = {}
        for t in threads:
            native[(t, "pp")] = [functools.partial(llama_bench_step, commands[(t, "pp")], "lb_pp", info)]
            native[(t, "tg")] = [
                functools.partial(llama_bench_step, commands[(t, "tg")], "lb_tg", info),
                functools.partial(c_loop_step, loops[t], n_gen),
            ]
        ours: dict[int, list[Step]] = {
            t: [functools.partial(llambo_pp_step, runner, t), functools.partial(llambo_tg_step, runner, t)]
            for t in threads
        }
        samples = run_pairs(args.pairs, threads, native, ours)
    finally:
        for loop in loops.values():
            loop.close()
        runner.close()
    info["load_after"] = os.getloadavg()[0]
    text = report(samples, threads, args, info)
    print(text)
    print("\nllama-bench commands:\n" + "\n".join(info["llama_bench_commands"]))
    if args.json:
        data = {"info": info, "samples": {f"{k}@{t}": v for (k, t), v in samples.items()}, "report": text}
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
