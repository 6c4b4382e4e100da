"""``ftj validate FILE``: check a manifest on the client with the CRD's own rules and messages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finetune_api import ManifestError, load_manifest

EXIT_INVALID = 2


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``validate`` subcommand."""
    parser = sub.add_parser("validate", help="check FineTuneJob manifests without a cluster")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Validate each file; print one line per file, the problems under a bad one."""
    failed = 0
    for path in args.files:
        try:
            job = load_manifest(path)
        except ManifestError as err:
            print(f"{err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: valid {job.kind} {job.metadata.name or '(unnamed)'}")
    return EXIT_INVALID if failed else 0
