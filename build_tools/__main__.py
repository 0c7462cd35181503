"""``python -m build_tools``: the build orchestrator without nox (Python, CMake and a compiler suffice)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .cmake_flags import BuildOptions, OptionError, cmake_args_from_env, parse_cuda_arch, shell_join


def _add_build_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cuda", action="store_true", help="build ggml's CUDA backend")
    parser.add_argument(
        "--cuda-arch",
        metavar="LIST",
        help="CUDA architectures, e.g. 90 or 80,86,90 (default: the visible GPU's, else 75,80,86,89,90,120)",
    )
    parser.add_argument(
        "--jobs", "-j", type=int, metavar="N", help="parallel compile jobs (default: all cores)"
    )
    parser.add_argument("--debug", action="store_true", help="Debug build type instead of Release")
    parser.add_argument("--rpc", action="store_true", help="build ggml's RPC backend too")
    parser.add_argument(
        "--source", type=Path, metavar="DIR", help="a local llama.cpp checkout instead of the pinned source"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the CMake command and exit")


def _options(args: argparse.Namespace) -> BuildOptions:
    if args.cuda_arch and not args.cuda:
        raise OptionError("--cuda-arch needs --cuda")
    return BuildOptions(
        cuda=args.cuda,
        cuda_arch=parse_cuda_arch(args.cuda_arch) if args.cuda_arch else (),
        jobs=args.jobs,
        debug=args.debug,
        rpc=args.rpc,
        source=args.source,
        dry_run=args.dry_run,
        extra_cmake_args=cmake_args_from_env(),
    )


def _cmd_check(args: argparse.Namespace) -> int:
    from .toolchain import check_toolchain, render_table

    report = check_toolchain(cuda=args.cuda)
    print(render_table(report))
    return 0 if report.ok else 1


def _cmd_source(args: argparse.Namespace) -> int:
    from .source import resolve_source

    info = resolve_source(args.source, quiet=args.quiet)
    data = info.to_json()
    if args.write_stamp:
        Path(args.write_stamp).write_text(json.dumps(data, indent=2) + "\n")
    if not args.quiet:
        print(json.dumps(data, indent=2))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from .build import build, dry_run_command

    opts = _options(args)
    if opts.dry_run:
        print(shell_join(dry_run_command(opts)))
        return 0
    build(opts)
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    from llambo.default_model import ensure_default_model

    print(ensure_default_model(progress=not args.quiet))
    return 0


def _cmd_clean(args: argparse.Namespace) -> int:
    from .build import clean

    for path in clean(everything=args.all):
        print(f"removed {path}")
    return 0


def _cmd_gpu_check(args: argparse.Namespace) -> int:
    from .gpu_check import run_gpu_check

    return run_gpu_check(jobs=args.jobs, cuda_arch=args.cuda_arch)


def make_parser() -> argparse.ArgumentParser:
    """The command-line interface, one subcommand per nox session's work."""
    parser = argparse.ArgumentParser(prog="python -m build_tools", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="table of the toolchain: what is present, what is missing")
    check.add_argument("--cuda", action="store_true", help="also require what a CUDA build needs")
    check.set_defaults(func=_cmd_check)

    for name in ("source", "fetch"):
        src = sub.add_parser(name, help="fetch/verify the pinned llama.cpp source (or describe --source DIR)")
        src.add_argument("--source", type=Path, metavar="DIR", help="a local llama.cpp checkout")
        src.add_argument("--write-stamp", metavar="FILE", help="write the source description as JSON here")
        src.add_argument("--quiet", action="store_true", help="print nothing but errors")
        src.set_defaults(func=_cmd_source)

    bld = sub.add_parser("build", help="compile the shared libraries into llambo/_lib")
    _add_build_options(bld)
    bld.set_defaults(func=_cmd_build)

    model = sub.add_parser("model", help="fetch and verify the default model (SmolLM2-135M-Instruct)")
    model.add_argument("--quiet", action="store_true", help="no progress output")
    model.set_defaults(func=_cmd_model)

    cln = sub.add_parser("clean", help="remove build directories and llambo/_lib")
    cln.add_argument("--all", action="store_true", help="also the fetched source and the download cache")
    cln.set_defaults(func=_cmd_clean)

    gpu = sub.add_parser("gpu-check", help="build with CUDA for the visible GPU and check it end to end")
    gpu.add_argument("--jobs", "-j", type=int, metavar="N", help="parallel compile jobs (default: all cores)")
    gpu.add_argument("--cuda-arch", metavar="LIST", help="override the detected GPU architecture")
    gpu.set_defaults(func=_cmd_gpu_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; errors print one line and exit 2 (usage) or 1 (failure)."""
    from llambo.errors import LlamboError

    from .build import BuildError
    from .source import SourceError

    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except OptionError as exc:
        parser.error(str(exc))
    except (BuildError, SourceError, LlamboError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
