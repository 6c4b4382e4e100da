"""``ftj artifacts NAME [--download DIR]``: where the results are, and fetching them.

The listing needs only the cluster. ``--download`` reads the object store directly with the
*user's* credentials (boto3's usual environment, profile or SSO chain) and the FineTuneJob's
own ``spec.storage.s3`` settings, through the trainer's storage layer (the ``trainer`` extra),
then checks every downloaded file against MANIFEST.json (size and sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from finetune_cli.cluster import (
    EXIT_FAILED,
    CliError,
    Cluster,
    add_cluster_arguments,
    reports_errors,
)

# status.artifacts keys that name a folder (the others name one file).
FOLDERS = ("adapter", "merged", "tensorboard")
ORDER = ("adapter", "merged", "tensorboard", "metrics", "lossPlot", "manifest")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``artifacts`` subcommand."""
    parser = sub.add_parser("artifacts", help="list (or --download) a FineTuneJob's artifacts")
    parser.add_argument("name", metavar="NAME")
    parser.add_argument(
        "--download",
        type=Path,
        metavar="DIR",
        help="fetch the artifacts into DIR (adapter/, merged/, metrics.json, ...)",
    )
    parser.add_argument(
        "--skip-merged",
        action="store_true",
        help="with --download: leave out the merged model (the largest part)",
    )
    parser.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="S3 endpoint to use instead of spec.storage.s3.endpoint "
        "(e.g. a port-forward to the in-cluster store)",
    )
    add_cluster_arguments(parser)
    parser.set_defaults(handler=run)


def _storage_for(job: dict[str, Any], endpoint: str | None) -> Any:
    """The trainer's Storage for this job's settings, or a CliError naming the extra."""
    try:
        from finetune_trainer.storage import Storage
    except ImportError as err:
        raise CliError(
            f"--download needs the trainer's storage layer ({err.name} is missing): "
            "pip install 'finetune-operator[trainer]' (or copy the URIs above with "
            "aws s3 cp --recursive)"
        ) from None
    from finetune_api.spec import S3Storage

    s3_spec = ((job.get("spec") or {}).get("storage") or {}).get("s3")
    s3 = S3Storage.model_validate(s3_spec) if s3_spec else None
    if endpoint:
        s3 = (s3 or S3Storage()).model_copy(update={"endpoint": endpoint})
    return Storage(s3)


def _download_file(storage: Any, uri: str, dest: Path) -> None:
    from finetune_trainer.storage import Location

    location = Location.parse(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if location.scheme == "file":
        dest.write_bytes(Path(location.local_path).read_bytes())
        return
    body = storage.s3.get_bytes(location.bucket, location.key)
    if body is None:
        raise CliError(f"{uri} does not exist (the output may have been moved or deleted)")
    dest.write_bytes(body)


def verify_local(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems of the downloaded files against MANIFEST.json's list; [] when all match."""
    problems = []
    for entry in manifest.get("files") or []:
        path = root / str(entry.get("path", ""))
        if not path.exists():
            continue  # not downloaded (checkpoints, --skip-merged)
        data = path.read_bytes()
        if len(data) != int(entry.get("size", -1)):
            problems.append(f"{path}: size {len(data)}, manifest says {entry.get('size')}")
        elif hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            problems.append(f"{path}: sha256 differs from the manifest")
    return problems


def _local_name(key: str, uri: str) -> str:
    return key if key in FOLDERS else uri.rstrip("/").rsplit("/", 1)[-1]


@reports_errors
def run(args: argparse.Namespace) -> int:
    """List status.artifacts; with --download fetch and verify them."""
    cluster = Cluster.connect(args)
    job = cluster.get_job(args.name)
    status = job.get("status") or {}
    artifacts: dict[str, str] = {k: v for k, v in (status.get("artifacts") or {}).items() if v}
    if not artifacts:
        phase = status.get("phase") or "Pending"
        if phase == "Failed":
            raise CliError(
                f"FineTuneJob {args.name} failed before publishing artifacts; "
                f"`ftj describe {args.name}` shows why"
            )
        if phase == "Succeeded":
            raise CliError(
                f"FineTuneJob {args.name} succeeded but its status lists no artifacts; "
                f"look under its spec.output.uri (`ftj describe {args.name}`)"
            )
        raise CliError(
            f"FineTuneJob {args.name} has published no artifacts yet (phase {phase}); "
            f"`ftj watch {args.name}` waits for it"
        )
    keys = [k for k in ORDER if k in artifacts] + sorted(set(artifacts) - set(ORDER))
    width = max(len(k) for k in keys)
    for key in keys:
        print(f"{key.ljust(width)}  {artifacts[key]}")
    if args.download is None:
        return 0

    storage = _storage_for(job, args.s3_endpoint)
    target: Path = args.download
    target.mkdir(parents=True, exist_ok=True)
    try:
        for key in keys:
            if key == "merged" and args.skip_merged:
                continue
            dest = target / _local_name(key, artifacts[key])
            if key in FOLDERS:
                storage.download_dir(artifacts[key], dest)
            else:
                _download_file(storage, artifacts[key], dest)
            print(f"downloaded {key} -> {dest}", file=sys.stderr)
    except CliError:
        raise
    except Exception as err:  # noqa: BLE001 - boto3/botocore raise many types; say which
        raise CliError(
            f"download failed: {type(err).__name__}: {err}; check your S3 credentials "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and --s3-endpoint"
        ) from None
    manifest_path = target / "MANIFEST.json"
    if manifest_path.exists():
        problems = verify_local(target, json.loads(manifest_path.read_text()))
        for problem in problems:
            print(f"ftj artifacts: {problem}", file=sys.stderr)
        if problems:
            return EXIT_FAILED
        print(f"verified against {manifest_path}", file=sys.stderr)
    return 0
