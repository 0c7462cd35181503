"""``llambo chat``: a multi-turn conversation, one line per user turn, replies streamed to stdout.

On a terminal it prompts with ``>>>`` and offers line editing; with piped stdin it reads lines
silently, so ``printf 'hi\\nmore\\n' | llambo chat`` prints just the replies. ``/reset`` clears
the history, ``/exit`` (or end of input) ends.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import TYPE_CHECKING

from ...errors import LlamboError
from ..common import (
    PROG,
    chat_template_or_error,
    open_model,
    resolve_template,
    sampling_kwargs,
    summary,
    write,
)

if TYPE_CHECKING:
    from ...model import Model

_log = logging.getLogger("llambo.cli")

HELP = "commands: /reset clears the history, /exit (or Ctrl-D) ends, /help shows this"
PROMPT = ">>> "


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _read_line(interactive: bool) -> str | None:
    """The next line of input without its newline; None at end of input."""
    if interactive:
        try:
            return input(PROMPT)
        except EOFError:
            write("\n")
            return None
    line = sys.stdin.readline()
    return line.rstrip("\r\n") if line else None


class Conversation:
    """The history of one chat and the settings every reply uses."""

    def __init__(
        self, model: Model, template: str | None, system: str | None, sampling: dict[str, object]
    ) -> None:
        self.model = model
        self.template = template
        self.system = system
        self.sampling = sampling
        self.history: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system is not None else []

    def reply(self, text: str, *, interactive: bool) -> None:
        """Stream the assistant's answer to ``text``; the turn joins the history once it is complete."""
        messages = [*self.history, {"role": "user", "content": text}]
        stream = self.model.chat_stream(messages, template=self.template, **self.sampling)
        wrote = False
        try:
            for piece in stream:
                write(piece)
                wrote = True
        except KeyboardInterrupt:
            if not interactive:
                raise
            write("\n")
            _note("[reply interrupted; the turn is dropped]")
            return
        except LlamboError:
            if wrote:  # end the partial reply's line before the error is reported
                write("\n")
            raise
        finally:
            stream.close()
        write("\n")
        assert stream.result is not None
        _log.info("%s", summary(stream.result))
        self.history = [*messages, {"role": "assistant", "content": stream.result.text}]


def run(args: argparse.Namespace) -> int:
    """The chat loop; 1 when some turn failed (the chat goes on after it), else 0."""
    sampling = sampling_kwargs(args)
    template = resolve_template(args.template)
    interactive = sys.stdin is not None and sys.stdin.isatty()
    if sys.stdin is None:
        raise LlamboError("llambo chat reads the conversation from stdin, and there is none")
    status = 0
    with open_model(args) as model:
        conversation = Conversation(model, chat_template_or_error(model, template), args.system, sampling)
        if interactive:
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (line editing and history for input())
            _note(f"{PROG} chat: {model.path.name} on the {model.backend} backend. {HELP}")
        while True:
            line = _read_line(interactive)
            if line is None:
                break
            text = line.strip()
            if not text:
                continue
            command = text.lower()
            if command in ("/exit", "/quit", "/bye"):
                break
            if command == "/reset":
                conversation.reset()
                if interactive:
                    _note("[history cleared]")
                continue
            if command in ("/help", "/?"):
                _note(HELP)
                continue
            try:
                conversation.reply(text, interactive=interactive)
            except LlamboError as exc:  # e.g. the history outgrew the context: say so and go on
                _note(f"{PROG}: error: {exc} (the turn is dropped; /reset clears the history)")
                status = 1
    return status
