"""The `emofast` command: demo, directions, steer, sweep, discover, judge, sae, recognize,
features, quant, models, crossmodel; one module each.

Each subcommand module parses its flags into a config (or a library call's arguments) and calls
a pipeline or library function; `emofast <command> --help` explains each.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..processes import torchrun_group
from ..validation import Interrupted
from . import (crossmodel, demo, directions, discover, features, judge, models, quant,
               recognize, sae, steer, sweep)

COMMANDS = (demo, directions, steer, sweep, discover, judge, sae, recognize, features, quant,
            models, crossmodel)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emofast", description="Find and control emotion inside Hugging Face causal "
        "language models, fast. `emofast <command> --help` explains each command.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A bad input, a refused folder or a damaged store is one line on stderr
    and exit code 2 (EMOFAST_TRACEBACK=1 shows the traceback instead); Ctrl-C is one line
    saying what was saved, exit code 130."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # what was typed, for records such as the judge head's "command"
    try:
        with torchrun_group():          # launched by torchrun: the ranks' process group
            return args.fn(args)
    except KeyboardInterrupt as e:
        said = str(e) if isinstance(e, Interrupted) else "interrupted"
        print(f"emofast {args.command}: {said}", file=sys.stderr)
        return 130
    except (ValueError, TypeError, LookupError, OSError, ImportError) as e:
        if os.environ.get("EMOFAST_TRACEBACK"):
            raise
        print(f"emofast {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
