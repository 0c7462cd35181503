"""Exception classes raised by llambo; each message says what to do next."""

from __future__ import annotations


class LlamboError(Exception):
    """Base class of every error llambo raises on purpose."""


class FetchError(LlamboError):
    """A download through pip failed (no network, unknown version, pip missing)."""


class ChecksumError(LlamboError):
    """A downloaded or cached file does not have the sha256 it must have."""

    def __init__(self, what: str, path: str, expected: str, actual: str) -> None:
        self.what = what
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{what} at {path} has sha256 {actual}, expected {expected}; "
            "the file was removed, run the command again to download it afresh"
        )


class NativeUnavailable(LlamboError):
    """The llama.cpp shared library could not be found or loaded."""


class ModelLoadError(LlamboError):
    """A model file could not be opened or is not a model llambo can run."""


class ModelFileNotFound(ModelLoadError, FileNotFoundError):
    """The model path does not exist (also a FileNotFoundError)."""


class InvalidModelId(LlamboError, KeyError):
    """A model id does not name a loaded model (never loaded, or already freed)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "model not found"


class TooManyModels(LlamboError):
    """All model slots are in use; free one first."""


class InvalidRequest(LlamboError, ValueError):
    """A request or a sampling parameter is out of range or malformed."""


class ContextOverflowError(InvalidRequest):
    """The prompt (plus what must be generated) does not fit the model's context window."""


class GenerationError(LlamboError):
    """The backend failed while evaluating or sampling (e.g. llama_decode returned an error)."""
