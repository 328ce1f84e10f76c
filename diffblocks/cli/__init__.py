"""The `diffblocks` command (entry point `diffblocks.cli:main`): one module per subcommand.

Adding a command: a module here with `register(subparsers)` that adds its parser and sets `func` (a callable
taking the parsed arguments and returning the exit status), and one line in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import convert, demo, generate, info, inspect, serve, train
from . import run as run_workflow
from .blocks_arg import NAMED_BLOCKS, resolve_blocks

__all__ = ["COMMANDS", "NAMED_BLOCKS", "build_parser", "main", "resolve_blocks"]

# subcommand modules, in the order `diffblocks --help` lists them
COMMANDS = [inspect, demo, generate, train, convert, info, run_workflow, serve]


def _version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffblocks", description="Typed, reusable blocks for diffusion pipelines.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"diffblocks {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback (any position)")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    """The error and its notes on one line (ComponentLoadError and friends list details on several)."""
    parts = [str(exc)] + [str(n) for n in getattr(exc, "__notes__", ())]
    text = " ".join(" ".join(part.split()) for part in parts if part)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run a command. A failure prints one line (`diffblocks CMD: Error: message`) and exits 1; `--debug`
    (anywhere on the command line) shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except Exception as exc:
        if debug:
            raise
        print(f"diffblocks {args.command}: {_one_line(exc)} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
