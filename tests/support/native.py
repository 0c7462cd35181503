"""Marks for tests that need llama.cpp's library: skipped, with the loader's own reason, without it."""

from __future__ import annotations

import pytest

from llambo.native.library import library_status

NATIVE_STATUS = library_status()
NATIVE_AVAILABLE = bool(NATIVE_STATUS["available"])
NATIVE_REASON = f"the native llama.cpp library is not available: {NATIVE_STATUS.get('reason')}"

requires_native = pytest.mark.skipif(not NATIVE_AVAILABLE, reason=NATIVE_REASON)
"""Skip the test when libllama cannot be loaded."""

NATIVE_ONLY = [pytest.mark.native, requires_native]
"""``pytestmark`` for a module whose every test compares with or runs on the native backend."""
