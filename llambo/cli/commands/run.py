"""``llambo run``: generate from one prompt, streaming to stdout, with a summary line on stderr."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..common import (
    UsageError,
    chat_template_or_error,
    open_model,
    read_stdin,
    resolve_template,
    sampling_kwargs,
    summary,
    write,
)

if TYPE_CHECKING:
    from ...model import Model


def build_prompt(model: Model, args: argparse.Namespace, text: str) -> str:
    """The text to generate from: ``text`` as one user turn under a chat template, or as it is."""
    template = resolve_template(args.template)
    use_chat: bool | None = args.chat
    if use_chat is None:
        use_chat = template is not None or model.chat_template() is not None
    if not use_chat:
        if args.system is not None:
            raise UsageError("--system needs a chat prompt; drop --no-chat")
        return text
    template = chat_template_or_error(model, template)
    messages = [{"role": "system", "content": args.system}] if args.system is not None else []
    messages.append({"role": "user", "content": text})
    return model.chat_prompt(messages, template=template)


def run(args: argparse.Namespace) -> int:
    """Stream the reply to the prompt (argument, or stdin for none or ``-``)."""
    sampling = sampling_kwargs(args)
    if args.chat is False and args.system is not None:
        raise UsageError("--system needs a chat prompt; drop --no-chat")
    text = read_stdin("prompt") if args.prompt in (None, "-") else args.prompt
    if not text:
        raise UsageError("the prompt is empty")
    with open_model(args) as model:
        stream = model.stream(build_prompt(model, args, text), **sampling)
        last = ""
        try:
            for piece in stream:
                write(piece)
                last = piece
        finally:
            stream.close()
        if last and not last.endswith("\n"):
            write("\n")
        if not args.quiet and stream.result is not None:
            print(summary(stream.result), file=sys.stderr, flush=True)
    return 0
