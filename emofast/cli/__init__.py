"""The `emofast` command: demo, directions, steer, sweep, discover, judge; one module each.

Each subcommand module parses its flags into a config (or a library call's arguments) and calls
a pipeline or library function; `emofast <command> --help` explains each.
"""
from __future__ import annotations

import argparse
import sys

from . import demo, directions, discover, judge, steer, sweep

COMMANDS = (demo, directions, steer, sweep, discover, judge)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emofast", description="Find and control emotion inside Hugging Face causal "
        "language models, fast. `emofast <command> --help` explains each command.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # what was typed, for records such as the judge head's "command"
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, OSError, ImportError) as e:
        print(f"emofast {args.command}: error: {e}", file=sys.stderr)
        return 2
