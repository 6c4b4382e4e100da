"""``ftj run FILE``: run a FineTuneJob on this machine, through the same trainer pods run.

Nothing here trains: it calls the trainer's one entry,
:func:`finetune_trainer.entry.run_from_manifest`, in this process, the function a trainer pod's
``python -m finetune_trainer`` calls, so a job that works under ``ftj run`` works in the
cluster, with the same exit codes (:mod:`finetune_api.contract`: 0, 1, 42), the same progress
lines and the same outputs. ``spec.resources.gpus: N > 1`` starts ``python -m finetune_trainer``
on N of this machine's GPUs under ``torchrun --standalone``, as the operator's pod command
does, with the variables a pod gets (:class:`~finetune_api.contract.TrainerEnvironment`); a spec
asking for more GPUs than the machine has, or for several nodes, is refused with the field to
change.

Its scratch folder (downloads, the model cache, local checkpoints, the files before they are
published) is a temporary folder that is deleted when the run ends, whatever the outcome
(success, failure, Ctrl-C): for a real model that is gigabytes every run. ``--keep-work``
keeps it and says where; a folder given with ``--workdir`` is the user's and is never deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from finetune_api import FineTuneJob, ManifestError, load_manifest
from finetune_api.contract import (
    EXIT_INVALID_INPUT,
    EXIT_OK,
    RUNTIME_ENV_DOCS,
    TrainerEnvironment,
    standalone_torchrun_args,
)

# Where ftj run serves progress (--progress-port): this machine only, unlike a pod.
LOCAL_PROGRESS_HOST = "127.0.0.1"
# How long torchrun gets to stop its workers after Ctrl-C (its own grace period is 30 s).
STOP_WORKERS_SECONDS = 40


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
        help=(
            "scratch folder for downloads and local checkpoints, kept afterwards (default: a "
            "temporary folder, deleted when the run ends)"
        ),
    )
    parser.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the temporary scratch folder when the run ends, and print where it is",
    )
    parser.add_argument(
        "--progress-port",
        type=int,
        default=0,
        metavar="PORT",
        help="also serve /progress, /metrics and /healthz on this port (default: off)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show the libraries' warnings, log lines and progress bars (hidden by default)",
    )
    parser.set_defaults(handler=run)


def _absolute_output(uri: str) -> str:
    """A relative ``--output`` means relative to where the user typed the command."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", uri):
        return uri
    return str(Path(uri).expanduser().resolve())


def visible_gpus() -> int:
    """CUDA GPUs this process may use (``CUDA_VISIBLE_DEVICES`` respected)."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def launcher(gpus: int, nodes: int) -> list[str] | None:
    """How to start the trainer for ``resources`` here: None (in this process) or torchrun's
    command line. Raises ``ValueError`` with the fix when this machine can't run the spec."""
    if nodes > 1:
        raise ValueError(
            f"spec.resources.nodes: {nodes} needs a cluster (one pod per node); ftj run trains "
            "on this machine only. Apply the job with kubectl, or set nodes: 1 to use this "
            "machine's GPUs."
        )
    if gpus <= 1:
        return None
    have = visible_gpus()
    if have < gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
        raise ValueError(
            f"spec.resources.gpus: {gpus}, but this machine has {have} CUDA GPU(s){where}. "
            f"Set gpus: {have} to train here, or apply the job to a "
            "cluster."
        )
    # torchrun as a module of this interpreter: the same program, whatever PATH holds.
    return [sys.executable, "-m", "torch.distributed.run", *standalone_torchrun_args(gpus)]


def run(args: argparse.Namespace) -> int:
    """Run the job in this process and print where its artifacts went."""
    try:
        job = load_manifest(args.file)
    except ManifestError as err:
        print(f"{err}", file=sys.stderr)
        return EXIT_INVALID_INPUT

    resources = job.spec.resources
    try:
        command = launcher(resources.gpus, resources.nodes)
    except ValueError as err:
        print(f"{err}", file=sys.stderr)
        return EXIT_INVALID_INPUT

    if args.workdir is not None:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        return _run_in(job, command, args, workdir)
    workdir = Path(tempfile.mkdtemp(prefix="ftj-run-")).resolve()
    try:
        return _run_in(job, command, args, workdir)
    finally:
        # Whatever the outcome, Ctrl-C included: the scratch of a real model is gigabytes.
        if getattr(args, "keep_work", False):
            print(f"work files kept in {workdir} (--keep-work)", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run_in(
    job: FineTuneJob, command: list[str] | None, args: argparse.Namespace, workdir: Path
) -> int:
    """Run the job with ``workdir`` as its scratch folder; print the outcome; the exit code."""
    termination_log = workdir / "termination-log.json"
    termination_log.unlink(missing_ok=True)
    trainer = TrainerEnvironment(
        manifest=str(args.file.resolve()),
        workdir=str(workdir),
        output_uri=_absolute_output(args.output) if args.output else None,
        progress_host=LOCAL_PROGRESS_HOST,
        progress_port=args.progress_port,
        termination_log=str(termination_log),
    )

    from finetune_trainer.library_output import QUIET_ENV

    # The trainer's own lines and errors only, unless --verbose; torchrun's workers inherit it.
    os.environ[QUIET_ENV] = "0" if getattr(args, "verbose", False) else "1"
    print(f"running {job.metadata.name or args.file} (scratch: {workdir})", file=sys.stderr)
    if command is None:
        from finetune_trainer.entry import run_from_manifest

        code = run_from_manifest(
            trainer.manifest,
            workdir=workdir,
            output_uri=trainer.output_uri,
            progress_host=trainer.progress_host,
            progress_port=trainer.progress_port,
            termination_log=termination_log,
        )
    else:  # each worker reads the variables a pod gets; rank 0 writes the termination log
        inherited = {k: v for k, v in os.environ.items() if k not in RUNTIME_ENV_DOCS}
        env = {**inherited, **trainer.to_env()}
        code = _run_workers(command, env)
    summary = json.loads(termination_log.read_text()) if termination_log.is_file() else {}
    if code == EXIT_OK:
        print(f"succeeded: {summary.get('progress', {}).get('summary', '')}")
        artifacts = summary.get("artifacts", {})
        width = max((len(name) for name in artifacts), default=0)
        for name, uri in artifacts.items():
            print(f"  {name:{width}} {uri}")
    else:
        reason = summary.get("reason", "Failed")
        print(f"failed ({reason}): {summary.get('message', '')}", file=sys.stderr)
    return code


def _run_workers(command: list[str], env: dict[str, str]) -> int:
    """torchrun and its workers to their end; on Ctrl-C they are stopped before returning, so
    that no worker still writes into the scratch folder when it is deleted."""
    with subprocess.Popen(command, env=env) as launcher_process:
        try:
            return launcher_process.wait()
        except KeyboardInterrupt:
            # A terminal's Ctrl-C reached torchrun too; a SIGINT sent to ftj alone did not.
            # torchrun stops its workers on SIGINT; wait for that, then make sure.
            launcher_process.send_signal(signal.SIGINT)
            try:
                launcher_process.wait(timeout=STOP_WORKERS_SECONDS)
            except subprocess.TimeoutExpired:
                launcher_process.kill()
            raise
