"""``ftj crd``: print (or write) the CustomResourceDefinition generated from the API models."""

from __future__ import annotations

import argparse
from pathlib import Path

from finetune_api.crd import render_crd_yaml

CRD_FILE_NAME = "finetune.dev_finetunejobs.yaml"
# Every committed copy of the generated CRD, relative to the repository root.
CRD_COPIES = (Path("crds") / CRD_FILE_NAME, Path("charts/finetune-operator/crds") / CRD_FILE_NAME)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``crd`` subcommand."""
    parser = sub.add_parser("crd", help="print the FineTuneJob CRD generated from the API models")
    parser.add_argument(
        "--write",
        metavar="REPO_ROOT",
        type=Path,
        help="write the committed copies (crds/ and the chart's crds/) under REPO_ROOT",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the CRD, or refresh its committed copies."""
    text = render_crd_yaml()
    if args.write is None:
        print(text, end="")
        return 0
    for relative in CRD_COPIES:
        target = args.write / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"wrote {target}")
    return 0
