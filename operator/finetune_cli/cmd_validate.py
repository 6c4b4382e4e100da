"""``ftj validate FILE``: check a manifest on the client with the CRD's own rules and messages.

By default a manifest is checked as ``kubectl apply`` would check it, for a job run in the
cluster; ``--local`` checks it as ``ftj run`` reads it, where local paths need no volume.
"""

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
    parser.add_argument(
        "--local",
        action="store_true",
        help="check for `ftj run` on this machine (local paths need no mounted volume)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Validate each file; print one line per file, the problems under a bad one."""
    failed = 0
    for path in args.files:
        try:
            job = load_manifest(path, cluster=not args.local)
        except ManifestError as err:
            print(f"{err}", file=sys.stderr)
            failed += 1
            continue
        where = "for ftj run" if args.local else "for the cluster"
        print(f"{path}: valid {job.kind} {job.metadata.name or '(unnamed)'} ({where})")
    return EXIT_INVALID if failed else 0
