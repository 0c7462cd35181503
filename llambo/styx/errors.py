"""The one exception of the Styx server and client: an error string, as carried by Rerror.

Messages start with one of the usual words (``not found``, ``permission denied``, ``invalid
argument``, ``busy``) so that clients which map error strings to errno values (9pfuse) pick the
right one, followed by a colon and the details. :func:`error_text` gives that string for any
exception the server meets (llambo's own, OS errors, bugs).
"""

from __future__ import annotations

from ..errors import InvalidModelId, InvalidRequest, LlamboError, ModelLoadError, TooManyModels

__all__ = ["BUSY", "INVALID", "NOT_FOUND", "PERMISSION", "StyxError", "error_text", "invalid"]

NOT_FOUND = "not found"
PERMISSION = "permission denied"
INVALID = "invalid argument"
BUSY = "busy"


class StyxError(LlamboError):
    """A 9P error: raised by the file tree to answer Rerror, and by the client when it gets one."""

    @classmethod
    def make(cls, word: str, detail: str) -> StyxError:
        """``word: detail``, the shape every server error has."""
        return cls(f"{word}: {detail}")


def error_text(exc: BaseException) -> str:
    """The Rerror string for an exception: one of the usual words, a colon, the details."""
    if isinstance(exc, StyxError):
        return str(exc)
    if isinstance(exc, (InvalidModelId, FileNotFoundError)):
        return f"{NOT_FOUND}: {exc}"
    if isinstance(exc, TooManyModels):
        return f"{BUSY}: {exc}"
    if isinstance(exc, PermissionError):
        return f"{PERMISSION}: {exc}"
    if isinstance(exc, (InvalidRequest, ModelLoadError, ValueError, TypeError)):
        return f"{INVALID}: {exc}"
    if isinstance(exc, LlamboError):
        return str(exc) or type(exc).__name__
    return f"internal error: {type(exc).__name__}: {exc}"


def invalid(detail: str) -> StyxError:
    """``invalid argument: detail``, the error of a malformed command or request."""
    return StyxError.make(INVALID, detail)
