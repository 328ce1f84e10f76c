"""`diffblocks info IMAGE`: the generation parameters stored in a PNG by `diffblocks generate` (or another tool
that writes A1111-style `parameters`)."""

from __future__ import annotations

import argparse
import json
import sys

from .png_metadata import JSON_KEY, PARAMETERS_KEY, read_png_metadata


def _info(args: argparse.Namespace) -> int:
    try:
        metadata = read_png_metadata(args.image)
    except FileNotFoundError:
        print(f"diffblocks info: {args.image}: no such file", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"diffblocks info: {args.image}: {exc}", file=sys.stderr)
        return 1
    parameters, record = metadata[PARAMETERS_KEY], metadata[JSON_KEY]
    if parameters is None and record is None:
        print(f"diffblocks info: {args.image} has no generation parameters (no {PARAMETERS_KEY!r} or {JSON_KEY!r} "
              "PNG text chunk)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True) if record is not None else "null")
        return 0
    if parameters is not None:
        print(f"Parameters ({PARAMETERS_KEY!r} chunk):")
        print(parameters)
    if record is not None:
        if parameters is not None:
            print()
        print(f"Call ({JSON_KEY!r} chunk):")
        print(json.dumps(record, indent=2, sort_keys=True))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    info_p = sub.add_parser("info", help="print the generation parameters stored in a PNG")
    info_p.add_argument("image", help="a PNG written by `diffblocks generate` (or with A1111-style parameters)")
    info_p.add_argument("--json", action="store_true",
                        help="print only the exact call as JSON (the 'diffblocks' chunk) (default: off)")
    info_p.set_defaults(func=_info)
