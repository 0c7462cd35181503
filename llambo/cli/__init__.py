"""The ``llambo`` command line: run, chat, info, tokenize, doctor, pull, bench, serve.

``main`` parses the arguments, imports only the command asked for, and turns errors into one line
on stderr and an exit status: 2 for usage errors, 1 for llambo's errors and OS errors, 130 for
Ctrl-C. ``--verbose`` adds tracebacks.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

__all__ = ["main"]


def _error(message: str) -> None:
    print(f"llambo: error: {message}", file=sys.stderr, flush=True)


def _quiet_broken_pipe() -> None:
    """stdout's reader went away (``llambo run ... | head``): drop what is left unwritten."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _tolerant_streams() -> None:
    """Never fail on text the terminal's encoding cannot show: replace it instead."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="replace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``llambo`` command and return its exit status."""
    from .common import UsageError
    from .parser import COMMANDS, build_parser

    parser = build_parser()
    args, extra = parser.parse_known_args(list(argv) if argv is not None else None)
    if args.command == "serve":
        from .commands.serve import serve

        return serve(extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    from ..errors import LlamboError
    from .common import setup_logging

    verbose: int = args.verbose
    _tolerant_streams()
    setup_logging(verbose)
    try:
        module = importlib.import_module(f".commands.{COMMANDS[args.command]}", __name__)
        status: int = module.run(args)
        return status
    except KeyboardInterrupt:
        if verbose:
            traceback.print_exc()
        print(file=sys.stderr)
        _error("interrupted")
        return 130
    except BrokenPipeError:
        _quiet_broken_pipe()
        return 1
    except UsageError as exc:
        if verbose:
            traceback.print_exc()
        _error(str(exc))
        return 2
    except (LlamboError, OSError) as exc:
        if verbose:
            traceback.print_exc()
        _error(str(exc) or type(exc).__name__)
        return 1
