"""What several commands share: logging, the model to open, sampling options, stdin, templates."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LlamboError

if TYPE_CHECKING:
    from ..api import InferenceResult
    from ..model import Model

__all__ = [
    "PROG",
    "UsageError",
    "chat_template_or_error",
    "check_backend",
    "model_path",
    "open_model",
    "read_stdin",
    "resolve_template",
    "sampling_kwargs",
    "setup_logging",
    "summary",
    "write",
]

PROG = "llambo"

_log = logging.getLogger("llambo.cli")


class UsageError(Exception):
    """The command line asks for something contradictory (exit status 2, like argparse's errors)."""


class _Formatter(logging.Formatter):
    """``llambo: warning: ...``; with ``-v`` also the logger's name."""

    def __init__(self, verbose: int) -> None:
        super().__init__()
        self._verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and self._verbose:
            message += "\n" + self.formatException(record.exc_info)
        where = f"[{record.name}] " if self._verbose else ""
        return f"{PROG}: {record.levelname.lower()}: {where}{message}"


def setup_logging(verbose: int) -> None:
    """llambo's log on stderr: warnings; INFO with ``-v``; DEBUG and llama.cpp's own log with ``-vv``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(verbose))
    logger = logging.getLogger("llambo")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG)
    # llama.cpp's own log is very chatty below WARNING: only -vv shows it.
    logging.getLogger("llambo.native").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def check_backend(backend: str | None) -> str:
    """The backend asked for (``--backend``, else ``$LLAMBO_BACKEND``, else auto); UsageError if bad."""
    from ..selection import requested_backend

    try:
        return requested_backend(backend)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def model_path(path: str | None) -> Path:
    """The model file named on the command line, or the default model (fetched the first time)."""
    if path:
        return Path(path).expanduser()
    from ..default_model import DEFAULT_MODEL, cached_default_model, ensure_default_model

    cached = cached_default_model()
    if cached is not None:
        return cached
    print(
        f"{PROG}: fetching the default model {DEFAULT_MODEL.name} ({DEFAULT_MODEL.size / 2**20:.0f} MiB) "
        "into the cache, once",
        file=sys.stderr,
        flush=True,
    )
    return ensure_default_model(progress=True)


def open_model(args: argparse.Namespace, path: str | None = None) -> Model:
    """Load the model the options name (``-m``, ``--backend``, ``--gpu-layers``, ``--threads``, ``--ctx``)."""
    from ..model import Model

    requested = check_backend(args.backend)
    file = model_path(path if path is not None else args.model)
    started = time.perf_counter()
    model = Model(
        file, backend=args.backend, n_gpu_layers=args.gpu_layers, n_threads=args.threads, n_ctx=args.ctx
    )
    _log.info(
        "loaded %s on the %s backend (asked for: %s) in %.2f s; context %d tokens",
        file,
        model.backend,
        requested,
        time.perf_counter() - started,
        model.n_ctx,
    )
    return model


_SAMPLING_OPTIONS = {
    "max_tokens": "max_tokens",
    "temp": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "seed": "seed",
}


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling keywords given on the command line (the rest keep SamplingParams' defaults)."""
    kwargs: dict[str, Any] = {
        param: getattr(args, option)
        for option, param in _SAMPLING_OPTIONS.items()
        if getattr(args, option) is not None
    }
    if args.stop:
        kwargs["stop"] = tuple(args.stop)
    # Checked now, before a model is loaded, so a bad value fails fast.
    from ..api import SamplingParams

    SamplingParams.from_kwargs(**kwargs)
    return kwargs


def read_stdin(what: str) -> str:
    """All of stdin (for a prompt or text given as ``-`` or left out), final newlines removed."""
    if sys.stdin is None:
        raise UsageError(f"no {what} given and there is no stdin to read it from")
    if sys.stdin.isatty():
        print(f"{PROG}: reading the {what} from stdin; end it with Ctrl-D", file=sys.stderr, flush=True)
    return sys.stdin.read().rstrip("\r\n")


def resolve_template(value: str | None) -> str | None:
    """``--template``: a built-in template's name, or the text of a jinja file; None when not given."""
    if value is None:
        return None
    from ..chat import BUILTIN_TEMPLATES

    if value.strip().lower() in BUILTIN_TEMPLATES:
        return value.strip().lower()
    path = Path(value).expanduser()
    if not path.is_file():
        raise UsageError(
            f"--template {value!r} is neither a built-in template ({', '.join(BUILTIN_TEMPLATES)}) nor a file"
        )
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LlamboError(f"cannot read the chat template {path}: {exc}") from exc


def chat_template_or_error(model: Model, template: str | None) -> str | None:
    """``template`` if given; else None when the model has its own; else a clear error."""
    if template is None and model.chat_template() is None:
        raise LlamboError(
            f"{model.path.name} has no chat template; give one with --template chatml "
            "(or a jinja file), or use `llambo run --no-chat` for a plain completion"
        )
    return template


def summary(result: InferenceResult) -> str:
    """``[native] 12 tokens, 91.2 tokens/s; prompt 37 tokens, 812.0 tokens/s; finish: stop``."""
    t = result.timings
    return (
        f"[{result.backend}] {t.generated_tokens} tokens, {t.tokens_per_second:.1f} tokens/s; "
        f"prompt {t.prompt_tokens} tokens, {t.prompt_tokens_per_second:.1f} tokens/s; "
        f"finish: {result.finish_reason.value}"
    )


def write(text: str) -> None:
    """Text on stdout, now (streamed output)."""
    sys.stdout.write(text)
    sys.stdout.flush()
