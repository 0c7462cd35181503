"""llama.cpp's own log lines, captured while it loads a model, to explain a failure in the error."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["captured_log", "reason"]

_LOG_LINES_IN_ERRORS = 3


class _LogCapture(logging.Handler):
    """Collects the warnings and errors llama.cpp logs from this thread while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread in (None, self.thread):
            text = record.getMessage().strip()
            if text:
                self.lines.append(text)


@contextmanager
def captured_log() -> Iterator[list[str]]:
    """The lines logged at WARNING or above to ``llambo.native`` by this thread within the block."""
    handler = _LogCapture()
    logger = logging.getLogger("llambo.native")
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def reason(lines: list[str]) -> str:
    return "; ".join(lines[-_LOG_LINES_IN_ERRORS:]) or "llama.cpp logged no reason"
