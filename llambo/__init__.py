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
from .api import (
    ChatMessage,
    FinishReason,
    InferenceRequest,
    InferenceResult,
    ModelInfo,
    SamplingParams,
    Timings,
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
from .generation import TextStream
from .model import Model
from .selection import backend_info

__version__ = "0.1.0"

__all__ = [
    "ChatMessage",
    "ChecksumError",
    "ContextOverflowError",
    "FetchError",
    "FinishReason",
    "GenerationError",
    "InferenceRequest",
    "InferenceResult",
    "InvalidModelId",
    "InvalidRequest",
    "LlamboError",
    "Model",
    "ModelFileNotFound",
    "ModelInfo",
    "ModelLoadError",
    "NativeUnavailable",
    "SamplingParams",
    "TextStream",
    "Timings",
    "TooManyModels",
    "__version__",
    "backend_info",
    "detokenize",
    "free_model",
    "get_model_info",
    "infer",
    "list_models",
    "load_model",
    "tokenize",
]
