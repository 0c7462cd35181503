"""The backend each contract test runs against: native (when its library loads) and reference."""

from __future__ import annotations

import pytest
from support.native import NATIVE_AVAILABLE, NATIVE_REASON

BACKENDS = [pytest.param("native", marks=pytest.mark.native), "reference"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """A backend name; the native runs are skipped with the loader's reason when it is unavailable."""
    name: str = request.param
    if name == "native" and not NATIVE_AVAILABLE:
        pytest.skip(NATIVE_REASON)
    return name
