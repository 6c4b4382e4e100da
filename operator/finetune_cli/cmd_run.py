"""``ftj run FILE``: run a FineTuneJob on this machine, through the same trainer pods run.

Nothing here trains: it sets the environment a trainer pod gets (docs/internals.md) and calls
the pod's own entry point in this process, so a job that works under ``ftj run`` works in the
cluster, with the same exit codes (0, 1, 42), the same progress lines and the same outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from finetune_api import ManifestError, load_manifest

EXIT_INVALID_INPUT = 42  # finetune_trainer.errors.EXIT_INVALID_INPUT (not imported: no torch here)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``run`` subcommand."""
    parser = sub.add_parser(
        "run",
        help="run a FineTuneJob on this machine (CPU or local GPUs)",
        description=(
            "Train, merge, evaluate and publish a FineTuneJob locally. Relative paths in the "
            "manifest are resolved against its folder."
        ),
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="FineTuneJob YAML")
    parser.add_argument(
        "--output", metavar="URI", help="publish here instead of spec.output.uri (path or s3://)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="scratch folder for downloads and local checkpoints (default: a temporary folder)",
    )
    parser.add_argument(
        "--progress-port",
        type=int,
        default=0,
        metavar="PORT",
        help="also serve /progress, /metrics and /healthz on this port (default: off)",
    )
    parser.set_defaults(handler=run)


def _absolute_output(uri: str) -> str:
    """A relative ``--output`` means relative to where the user typed the command."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", uri):
        return uri
    return str(Path(uri).expanduser().resolve())


def run(args: argparse.Namespace) -> int:
    """Run the job in this process and print where its artifacts went."""
    try:
        job = load_manifest(args.file)
    except ManifestError as err:
        print(f"{err}", file=sys.stderr)
        return EXIT_INVALID_INPUT

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="ftj-run-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    termination_log = workdir / "termination-log.json"
    termination_log.unlink(missing_ok=True)
    os.environ["FTJ_MANIFEST"] = str(args.file.resolve())
    os.environ["FTJ_WORKDIR"] = str(workdir)
    os.environ["FTJ_PROGRESS_PORT"] = str(args.progress_port)
    os.environ["FTJ_PROGRESS_HOST"] = "127.0.0.1"
    os.environ["FTJ_TERMINATION_LOG"] = str(termination_log)
    if args.output:
        os.environ["FTJ_OUTPUT_URI"] = _absolute_output(args.output)

    print(f"running {job.metadata.name or args.file} (scratch: {workdir})", file=sys.stderr)
    from finetune_trainer.__main__ import main as trainer_main

    code = trainer_main()
    summary = json.loads(termination_log.read_text()) if termination_log.is_file() else {}
    if code == 0:
        print(f"succeeded: {summary.get('progress', {}).get('summary', '')}")
        for name, uri in summary.get("artifacts", {}).items():
            print(f"  {name:9} {uri}")
    else:
        reason = summary.get("reason", "Failed")
        print(f"failed ({reason}): {summary.get('message', '')}", file=sys.stderr)
    return code
