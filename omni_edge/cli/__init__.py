"""The `omni-edge` command: convert (MLX, Core ML), generate, chat and demo, a thin layer over the
Python API. Each subcommand is a module with `add_parser(subparsers)`."""

import argparse
import sys

from ..convert.coreml import cli as convert_coreml
from ..playback import PlaybackError
from ..server import cli as serve
from . import bench, chat, convert, generate

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotImplementedError, PlaybackError)


def _add_demo(sub):
    p = sub.add_parser("demo", help="run the whole pipeline on a tiny random-weight model (offline)")
    p.add_argument("--dir", help="keep the demo checkpoint here (default: a temporary folder)")
    p.add_argument("--max-tokens", type=int, default=24)
    p.set_defaults(func=_run_demo)


def _run_demo(args):
    from ..demo.run import run_demo

    run_demo(args.dir, max_tokens=args.max_tokens)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omni-edge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (convert, convert_coreml, generate, chat, bench, serve):
        module.add_parser(sub)
    _add_demo(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as err:
        print(f"omni-edge {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)
