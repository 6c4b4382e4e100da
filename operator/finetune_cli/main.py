"""Entry point of ``ftj``: parses the command line and dispatches to one module per command.

Each command lives in its own module with a ``register(subparsers)`` function that adds its
parser and sets ``handler``. Heavy imports (torch, kubernetes) happen inside the handlers, so
``ftj validate`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from finetune_cli import (
    cmd_artifacts,
    cmd_crd,
    cmd_describe,
    cmd_docs,
    cmd_explain,
    cmd_get,
    cmd_logs,
    cmd_run,
    cmd_validate,
    cmd_watch,
)

COMMAND_MODULES = [cmd_crd, cmd_validate, cmd_explain, cmd_run]
COMMAND_MODULES += [cmd_get, cmd_describe, cmd_logs, cmd_watch, cmd_artifacts, cmd_docs]


def build_parser() -> argparse.ArgumentParser:
    """The full ``ftj`` parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="ftj",
        description="Fine-tune LLMs with LoRA/QLoRA from one FineTuneJob manifest.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ftj`` and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
