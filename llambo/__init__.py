"""llambo: llama.cpp models from Python, natively through ctypes or with a pure-numpy reference.

``import llambo`` is cheap: nothing heavy (numpy, the shared library) is loaded until it is used.
"""

from __future__ import annotations

from .errors import (
    ChecksumError,
    ContextOverflowError,
    FetchError,
    GenerationError,
    InvalidModelId,
    InvalidRequest,
    LlamboError,
    ModelFileNotFound,
    ModelLoadError,
    NativeUnavailable,
    TooManyModels,
)

__version__ = "0.1.0"

__all__ = [
    "ChecksumError",
    "ContextOverflowError",
    "FetchError",
    "GenerationError",
    "InvalidModelId",
    "InvalidRequest",
    "LlamboError",
    "ModelFileNotFound",
    "ModelLoadError",
    "NativeUnavailable",
    "TooManyModels",
    "__version__",
]
