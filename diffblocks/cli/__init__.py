"""The `diffblocks` command (entry point `diffblocks.cli:main`): one module per subcommand.

Adding a command: a module here with `register(subparsers)` that adds its parser and sets `func` (a callable
taking the parsed arguments and returning the exit status), and one line in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import convert, demo, generate, info, inspect, train
from .blocks_arg import NAMED_BLOCKS, resolve_blocks

__all__ = ["COMMANDS", "NAMED_BLOCKS", "build_parser", "main", "resolve_blocks"]

# subcommand modules, in the order `diffblocks --help` lists them
COMMANDS = [inspect, demo, generate, train, convert, info]


def _version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffblocks", description="Typed, reusable blocks for diffusion pipelines.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"diffblocks {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
