"""llambo: llama.cpp models from Python, natively through ctypes or with a pure-numpy reference.

``import llambo`` is cheap: nothing heavy (numpy, the shared library) is loaded until it is used.
"""

from __future__ import annotations

from ._functions import (
    detokenize,
    free_model,
    get_model_info,
    infer,
    list_models,
    load_model,
    tokenize,
)
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
    "detokenize",
    "free_model",
    "get_model_info",
    "infer",
    "list_models",
    "load_model",
    "tokenize",
]
