"""The one exception of the Styx server and client: an error string, as carried by Rerror.

Messages start with one of the usual words (``not found``, ``permission denied``, ``invalid
argument``, ``busy``) so that clients which map error strings to errno values (9pfuse) pick the
right one, followed by a colon and the details.
"""

from __future__ import annotations

from ..errors import LlamboError

__all__ = ["BUSY", "INVALID", "NOT_FOUND", "PERMISSION", "StyxError"]

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
