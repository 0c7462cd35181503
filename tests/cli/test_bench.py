"""``llambo bench`` on a tiny synthetic model."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import NATIVE_REASON, assert_clean_error, llambo, needs_native

SMALL = ("-p", "16", "-n", "4", "--repeat", "2")


def test_bench_measures_every_available_backend(tiny_model: Path) -> None:
    out = llambo("bench", "-m", str(tiny_model), *SMALL, "--json")
    assert out.returncode == 0, out
    report = json.loads(out.stdout)
    ran = [r["backend"] for r in report["results"]]
    assert ran == (["native", "reference"] if NATIVE_REASON is None else ["reference"])
    for result in report["results"]:
        assert len(result["prompt_tps"]) == len(result["decode_tps"]) == 2
        assert result["prompt_tps_mean"] > 0 and result["decode_tps_mean"] > 0
    assert (report["ratio"] is not None) == (NATIVE_REASON is None)


@needs_native
def test_bench_table_has_the_ratio(tiny_model: Path) -> None:
    out = llambo("bench", "-m", str(tiny_model), "-p", "8", "-n", "2", "--repeat", "1")
    assert out.returncode == 0, out
    rows = {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
    assert {"native", "reference", "native/reference"} <= rows


def test_bench_without_native(tiny_model: Path) -> None:
    broken = {"LLAMBO_LIBRARY": "/nonexistent"}
    out = llambo("bench", "-m", str(tiny_model), "-p", "8", "-n", "2", "--repeat", "1", env=broken)
    assert out.returncode == 0, out
    assert "skipping native" in out.stderr and "/nonexistent" in out.stderr
    assert "native/reference" not in out.stdout
    only_native = llambo("bench", "-m", str(tiny_model), "--backend", "native", *SMALL, env=broken)
    assert_clean_error(only_native, 1, "native")
