"""``python -m build_tools gpu-check``: one prepared run for a machine with an NVIDIA GPU.

It needs Python with numpy, pytest and the ``gguf`` package (carry its wheel if absent), CMake,
a compiler and the CUDA toolkit; no network and no nox. Steps: toolchain table, CUDA build for the
visible GPU with every core, the native tests that need no model file, then a synthetic model
(the 98 MB default model does not travel) loaded with every layer offloaded and on the CPU:
logits compared, prefill and decode tokens/s printed.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import toolchain
from .build import BuildError, build
from .cmake_flags import BuildOptions, parse_cuda_arch
from .source import REPO_ROOT

# Logits of the same model on GPU and CPU differ by kernel rounding only (F16 weights, F32
# activations on both); anything above this means the offloaded path computes something else.
MAX_LOGIT_DIFF = 0.05
PREFILL_TOKENS = 512
DECODE_TOKENS = 128


# Test files that need no model file beyond tiny synthetic ones (the default model does not travel).
GPU_CHECK_TESTS = (
    "tests/native/test_abi.py",
    "tests/native/test_library.py",
    "tests/contract/test_contract.py",
    "tests/contract/test_model_contract.py",
)


def gpu_check_tests(root: Path = REPO_ROOT) -> list[Path]:
    """The test files the GPU check runs against the CUDA build."""
    return [root / name for name in GPU_CHECK_TESTS]


def _section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def compare_and_bench(model_path: Path) -> dict[str, float]:
    """Load the model on GPU (all layers) and CPU; compare logits; time prefill and decode."""
    import numpy as np

    from llambo.api import LoadParams, SamplingParams
    from llambo.backends import get_backend
    from llambo.generation import generate

    backend = get_backend("native")
    figures: dict[str, float] = {}
    rng = np.random.default_rng(0)
    prompt: list[int] = []
    gpu = backend.load(model_path, LoadParams(n_gpu_layers=-1, n_ctx=1024))
    try:
        prompt = [int(t) for t in rng.integers(0, gpu.n_vocab - 3, PREFILL_TOKENS)]
        info = gpu.info()
        print(f"offloaded layers: {info.n_gpu_layers} of {info.n_layer}")
        gpu_logits = gpu.logits(prompt[:64])
        greedy = SamplingParams(temperature=0, max_tokens=DECODE_TOKENS)
        generate(gpu, prompt[:8], greedy)  # warm-up: CUDA kernels, graphs
        result = generate(gpu, prompt, greedy)
        figures["gpu_prefill_tps"] = result.timings.prompt_tokens_per_second
        figures["gpu_decode_tps"] = result.timings.tokens_per_second
        gpu_tokens = result.tokens
    finally:
        gpu.close()
    cpu = backend.load(model_path, LoadParams(n_gpu_layers=0, n_ctx=1024))
    try:
        cpu_logits = cpu.logits(prompt[:64])
        result = generate(cpu, prompt, greedy)
        figures["cpu_prefill_tps"] = result.timings.prompt_tokens_per_second
        figures["cpu_decode_tps"] = result.timings.tokens_per_second
        cpu_tokens = result.tokens
    finally:
        cpu.close()
    figures["max_logit_diff"] = float(np.max(np.abs(gpu_logits - cpu_logits)))
    same = sum(1 for _ in zip(gpu_tokens, cpu_tokens, strict=False) if _[0] == _[1])
    figures["greedy_tokens_agreeing"] = float(same)
    return figures


def run_gpu_check(jobs: int | None = None, cuda_arch: str | None = None) -> int:
    """Run every step; return 0 when the CUDA build works and agrees with the CPU."""
    started = time.monotonic()
    _section("machine")
    print(f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores")
    report = toolchain.check_toolchain(cuda=True)
    print(toolchain.render_table(report))
    if not report.ok:
        return 1
    gpus = toolchain.gpu_compute_capabilities()
    if not gpus and not cuda_arch:
        print("no GPU visible (nvidia-smi): give --cuda-arch to build anyway", file=sys.stderr)
        return 1

    _section("CUDA build")
    opts = BuildOptions(cuda=True, cuda_arch=parse_cuda_arch(cuda_arch) if cuda_arch else (), jobs=jobs)
    try:
        result = build(opts)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"build took {result.seconds:.0f} s; BUILD_INFO: cuda={result.build_info.get('cuda')} "
        f"architectures={result.build_info.get('cuda_architectures')}"
    )

    _section("native tests (no model file needed)")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, gpu_check_tests())],
        cwd=REPO_ROOT,
        check=False,
    )
    failed = proc.returncode != 0

    _section("GPU vs CPU on a synthetic model")
    sys.path.insert(0, str(REPO_ROOT))
    from tests.support.synthetic_gguf import SyntheticSpec, write_model

    with tempfile.TemporaryDirectory() as tmp:
        # Big enough for GPU timing to mean something (about 60 MB in F16).
        spec = SyntheticSpec(
            n_embd=1024, n_layer=8, n_head=16, n_head_kv=4, n_ff=2816, n_ctx=1024, dtype="f16"
        )
        path = write_model(Path(tmp) / "synthetic-f16.gguf", spec)
        print(f"model: {path.name}, {path.stat().st_size / 2**20:.1f} MiB")
        figures = compare_and_bench(path)
    for key, value in figures.items():
        print(f"{key:>24}: {value:,.2f}")
    if figures["max_logit_diff"] > MAX_LOGIT_DIFF:
        print(f"FAIL: GPU and CPU logits differ by {figures['max_logit_diff']:.4f} > {MAX_LOGIT_DIFF}")
        failed = True
    print(f"\ngpu-check {'FAILED' if failed else 'passed'} in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0
