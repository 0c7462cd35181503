"""``llambo serve``: the Styx server as a command (also ``python -m llambo.styx``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from ..api import LoadParams
from ..errors import LlamboError
from ..registry import default_registry
from .address import DEFAULT_ADDRESS, parse_address
from .commands import LoadCommand
from .errors import StyxError
from .server import Limits, StyxServer

__all__ = ["build_parser", "main"]

_log = logging.getLogger("llambo.styx")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``serve``."""
    defaults = Limits()
    parser = argparse.ArgumentParser(
        prog="llambo serve",
        description="Serve loaded models over Styx (9P2000): load and ask them with plain file operations.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--listen",
        default=DEFAULT_ADDRESS,
        metavar="ADDRESS",
        help=f"tcp!HOST!PORT or unix!/path (default {DEFAULT_ADDRESS}; tcp!*!PORT: every interface)",
    )
    add("--models-root", metavar="DIR", help="refuse loads that resolve outside DIR (symlinks included)")
    add("--load", action="append", default=[], metavar="PATH", help="load a model at start (repeatable)")
    add(
        "--backend",
        choices=("auto", "native", "reference"),
        default=None,
        help="backend for loads that name none (default: $LLAMBO_BACKEND, else auto)",
    )
    add(
        "--ctx",
        "--n-ctx",
        dest="n_ctx",
        type=int,
        default=0,
        help="context size for loads (0: the model's, capped)",
    )
    add("--threads", type=int, default=0, help="threads per model (0: every core)")
    add(
        "--gpu-layers",
        "--n-gpu-layers",
        dest="n_gpu_layers",
        type=int,
        default=0,
        help="layers to offload for loads (-1: all)",
    )
    bound = parser.add_argument_group("bounds").add_argument
    bound("--max-msize", type=int, default=defaults.msize, help="largest 9P message size offered")
    bound("--max-fids", type=int, default=defaults.fids, help="fids per connection")
    bound("--max-connections", type=int, default=defaults.connections, help="connections at once")
    bound("--max-queued", type=int, default=defaults.queued, help="generations running or waiting, in all")
    bound("--max-tokens", type=int, default=defaults.max_tokens, help="largest max_tokens of a request")
    bound("--max-pending", type=int, default=defaults.pending, help="requests in flight per connection")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only, not every request")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details too")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; 0 after a clean shutdown, 1 if it could not start."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        parse_address(args.listen)
        limits = Limits(
            msize=args.max_msize,
            fids=args.max_fids,
            connections=args.max_connections,
            queued=args.max_queued,
            max_tokens=args.max_tokens,
            pending=args.max_pending,
        )
        load_params = LoadParams(n_ctx=args.n_ctx, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(_serve(args, limits, load_params))


async def _serve(args: argparse.Namespace, limits: Limits, load_params: LoadParams) -> int:
    server = StyxServer(
        default_registry(),
        models_root=args.models_root,
        backend=args.backend,
        load_params=load_params,
        limits=limits,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    status = 0
    try:
        for path in args.load:
            model_id = await server.tree.load(LoadCommand(path, load_params, args.backend))
            print(f"model {model_id}: {path}", file=sys.stderr, flush=True)
        address = await server.start(args.listen)  # logs "serving 9P2000 on ..."
        if args.quiet:
            print(f"serving 9P2000 on {address}", file=sys.stderr, flush=True)
        await stop.wait()
        _log.info("shutting down")
    except (StyxError, LlamboError, OSError, ValueError) as exc:
        print(f"llambo serve: {exc}", file=sys.stderr)
        status = 1
    finally:
        await server.close()
    return status
