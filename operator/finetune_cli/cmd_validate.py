"""``ftj validate FILE``: check a manifest on the client with the CRD's own rules and messages.

By default a manifest is checked as ``kubectl apply`` would check it, for a job run in the
cluster; ``--local`` checks it as ``ftj run`` reads it, where local paths need no volume.
``--data`` also checks the job's data the way the trainer pod does before it downloads the
weights (:mod:`finetune_cli.data_check`): files, column mapping, template, token lengths.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finetune_api import ManifestError, load_manifest

EXIT_INVALID = 2
MANIFEST_SUFFIXES = (".yaml", ".yml")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``validate`` subcommand."""
    parser = sub.add_parser(
        "validate",
        help="check FineTuneJob manifests (and with --data, their data) without a cluster",
        description=(
            "Check FineTuneJob manifests with the CRD's rules. With --data, also check the "
            "data as the trainer will, on this machine: the spec's datasets, or the data FILEs "
            "given (one per spec.datasets entry, in order)."
        ),
    )
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE", help="FineTuneJob YAML")
    parser.add_argument(
        "--local",
        action="store_true",
        help="check for `ftj run` on this machine (local paths need no mounted volume)",
    )
    parser.add_argument(
        "--data",
        nargs="*",
        type=Path,
        metavar="DATA",
        help=(
            "also check the data: files, column mapping, template, token lengths and what "
            "cutoffLength truncates or drops. Without DATA files, the spec's own datasets "
            "(paths, or s3:// with the AWS_* credentials of this shell)"
        ),
    )
    parser.add_argument(
        "--tokenizer",
        metavar="PATH|URI",
        help="tokenizer to count tokens with (default: the one in spec.model.uri)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="where fetched data and tokenizer files are kept (default: ~/.cache/ftj)",
    )
    parser.set_defaults(handler=run)


def _split_arguments(args: argparse.Namespace) -> tuple[list[Path], list[Path] | None]:
    """Manifests and data files. ``--data`` takes the words after it, so in
    ``ftj validate --data train.jsonl job.yaml`` the manifest is picked out by its suffix."""
    data = None if args.data is None else list(args.data)
    manifests = list(args.files)
    if data is not None:
        manifests += [p for p in data if p.suffix.lower() in MANIFEST_SUFFIXES]
        data = [p for p in data if p.suffix.lower() not in MANIFEST_SUFFIXES]
    return manifests, data


def run(args: argparse.Namespace) -> int:
    """Validate each file; print one line per file, the problems under a bad one."""
    manifests, data = _split_arguments(args)
    if not manifests:
        print("ftj validate: name a FineTuneJob manifest (FILE.yaml)", file=sys.stderr)
        return EXIT_INVALID
    if data and len(manifests) > 1:
        print("ftj validate: DATA files go with one manifest at a time", file=sys.stderr)
        return EXIT_INVALID
    failed = 0
    for path in manifests:
        try:
            job = load_manifest(path, cluster=not args.local)
        except ManifestError as err:
            print(f"{err}", file=sys.stderr)
            failed += 1
            continue
        where = "for ftj run" if args.local else "for the cluster"
        print(f"{path}: valid {job.kind} {job.metadata.name or '(unnamed)'} ({where})")
        if data is not None:
            from finetune_cli.data_check import check_data

            cache = args.cache_dir or Path.home() / ".cache" / "ftj"
            failed += not check_data(job, path, data, tokenizer=args.tokenizer, cache_dir=cache)
    return EXIT_INVALID if failed else 0
