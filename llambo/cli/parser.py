"""The argument parser of the ``llambo`` command: global options and one subparser per command."""

from __future__ import annotations

import argparse

__all__ = ["COMMANDS", "build_parser"]

# command name -> module under llambo.cli.commands (imported only when that command runs)
COMMANDS = {
    "run": "run",
    "chat": "chat",
    "info": "info",
    "tokenize": "tokenize",
    "doctor": "doctor",
    "pull": "pull",
    "bench": "bench",
    "serve": "serve",
}

BACKEND_CHOICES = ("auto", "native", "reference")


def _version() -> str:
    from .. import __version__

    return f"llambo {__version__}"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _global_options(parser: argparse.ArgumentParser, *, in_command: bool) -> None:
    """``-v``; inside a command its default is suppressed so it never overrides the top-level one."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS if in_command else 0,
        help="log more (-v: info, -vv: debug, with llama.cpp's own log) and show tracebacks",
    )


def _model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    add = group.add_argument
    add("-m", "--model", metavar="PATH", help="GGUF model file (default: the embedded default model)")
    add(
        "--backend",
        choices=BACKEND_CHOICES,
        help="auto (native, else reference), native or reference (default: $LLAMBO_BACKEND or auto)",
    )
    add("--gpu-layers", type=int, default=0, metavar="N", help="layers to offload to the GPU (-1: all)")
    add("--threads", type=int, default=0, metavar="N", help="CPU threads (default 0: every core)")
    add(
        "--ctx",
        type=int,
        default=0,
        metavar="N",
        help="context size in tokens (default: the model's, capped)",
    )


def _sampling_options(parser: argparse.ArgumentParser) -> None:
    from ..api import SamplingParams

    d = SamplingParams()
    group = parser.add_argument_group("sampling")
    add = group.add_argument
    add("-n", "--max-tokens", type=int, metavar="N", help=f"most tokens to generate (default {d.max_tokens})")
    add("--temp", type=float, metavar="T", help=f"temperature, 0 = greedy (default {d.temperature})")
    add("--top-k", type=int, metavar="K", help=f"keep the K likeliest tokens, 0 = off (default {d.top_k})")
    add("--top-p", type=float, metavar="P", help=f"nucleus sampling, 1 = off (default {d.top_p})")
    add("--min-p", type=float, metavar="P", help=f"drop tokens under P x the likeliest (default {d.min_p})")
    add(
        "--repeat-penalty",
        type=float,
        metavar="X",
        help=f"repeated-token penalty, 1 = off (default {d.repeat_penalty})",
    )
    add("--repeat-last-n", type=int, metavar="N", help=f"tokens penalised (default {d.repeat_last_n})")
    add("--seed", type=int, metavar="N", help="random seed (default: random)")
    add("--stop", action="append", metavar="TEXT", help="stop when TEXT is generated (repeatable)")


def _chat_options(parser: argparse.ArgumentParser, *, toggle: bool) -> None:
    group = parser.add_argument_group("chat")
    add = group.add_argument
    if toggle:
        add(
            "--chat",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="apply the chat template to the prompt (default: on when the model has one)",
        )
    add("--system", metavar="TEXT", help="a system message before the conversation")
    add(
        "--template",
        metavar="NAME|FILE",
        help="chat template to use instead of the model's: a built-in name (chatml) or a jinja file",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``serve`` takes no options here (they go to the Styx server)."""
    parser = argparse.ArgumentParser(
        prog="llambo",
        description="Run llama.cpp GGUF models: natively through libllama, or with the numpy reference.",
        epilog="`llambo COMMAND --help` describes a command.",
    )
    parser.add_argument("--version", action="version", version=_version())
    _global_options(parser, in_command=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, *, passthrough: bool = False) -> argparse.ArgumentParser:
        if passthrough:  # no options of its own: every argument, --help included, goes on unparsed
            sub = commands.add_parser(name, help=help_text, add_help=False, prefix_chars="\0")
        else:
            sub = commands.add_parser(name, help=help_text, description=help_text)
            _global_options(sub, in_command=True)
        return sub

    run = command("run", "generate text from a prompt, streamed to stdout")
    run.add_argument("prompt", nargs="?", metavar="PROMPT", help="the prompt (default or '-': read stdin)")
    run.add_argument("-q", "--quiet", action="store_true", help="no summary line on stderr")
    _model_options(run)
    _sampling_options(run)
    _chat_options(run, toggle=True)

    chat = command("chat", "chat with a model, one line per turn (/reset clears the history, /exit ends)")
    _model_options(chat)
    _sampling_options(chat)
    _chat_options(chat, toggle=False)

    info = command("info", "describe a model")
    info.add_argument(
        "model_arg", nargs="?", metavar="MODEL", help="GGUF model file (default: the default model)"
    )
    info.add_argument("--json", action="store_true", help="print the model description as JSON")
    info.add_argument("--metadata", action="store_true", help="also list the GGUF metadata")
    _model_options(info)

    tokenize = command("tokenize", "show the token ids of a text")
    tokenize.add_argument("text", nargs="?", metavar="TEXT", help="the text (default or '-': read stdin)")
    tokenize.add_argument("--pieces", action="store_true", help="show each token's text next to its id")
    tokenize.add_argument("--json", action="store_true", help="print JSON")
    tokenize.add_argument("--no-bos", action="store_true", help="do not add the model's BOS/EOS tokens")
    tokenize.add_argument(
        "--parse-special",
        action="store_true",
        help="read special-token text such as <|im_start|> as one token",
    )
    _model_options(tokenize)

    doctor = command("doctor", "check the installation: backends, native library, GPU, default model")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        help="check this backend choice (default: $LLAMBO_BACKEND or auto)",
    )

    command("pull", "fetch the default model into the cache (if needed) and print its path")

    bench = command("bench", "measure prompt and decode speed (tokens/s) on each backend")
    bench.add_argument(
        "--backend",
        choices=("all", "native", "reference"),
        default="all",
        help="backends to measure (default all: those available)",
    )
    bench.add_argument("-m", "--model", metavar="PATH", help="GGUF model file (default: the default model)")
    bench.add_argument("-p", "--prompt-tokens", type=_positive, default=128, metavar="N", help="default 128")
    bench.add_argument("-n", "--gen-tokens", type=_positive, default=64, metavar="N", help="default 64")
    bench.add_argument(
        "--repeat", type=_positive, default=3, metavar="N", help="runs per backend (default 3)"
    )
    bench.add_argument("--gpu-layers", type=int, default=0, metavar="N", help="layers to offload (-1: all)")
    bench.add_argument(
        "--threads", type=int, default=0, metavar="N", help="CPU threads (default: every core)"
    )
    bench.add_argument("--json", action="store_true", help="print the measurements as JSON")

    command(
        "serve",
        "serve models over Styx (9P2000); `llambo serve --help` lists its options",
        passthrough=True,
    )
    return parser
