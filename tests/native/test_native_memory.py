"""Loading and freeing a model many times must not grow the process."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

import llambo
from llambo.api import LoadParams
from llambo.native.model import NativeModel

pytestmark = pytest.mark.native

MIB = 1 << 20


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
def test_load_free_cycles_leave_memory_flat(default_model_path: Path, record_property: object) -> None:
    params = LoadParams(use_mmap=True, n_ctx=256)
    for _ in range(5):  # let allocators and caches settle
        NativeModel(default_model_path, params).close()
    gc.collect()
    before = resident_bytes()
    for _ in range(100):
        model_id = llambo.load_model(default_model_path, use_mmap=True, n_ctx=256)
        assert llambo.tokenize(model_id, "hi", add_special=False)
        llambo.free_model(model_id)
    gc.collect()
    growth = resident_bytes() - before
    print(f"resident memory growth over 100 load/free cycles: {growth / MIB:.1f} MiB")
    record_property("rss_growth_mib", round(growth / MIB, 1))  # type: ignore[operator]
    assert growth < 64 * MIB
