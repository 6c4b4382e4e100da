"""Publishing a finished run: artifacts first, ``MANIFEST.json`` last, and verifying it.

The manifest is the commit point. Readers (the operator, ``ftj``, a serving stack) trust an
output only when MANIFEST.json is there, and every file it lists was complete before it was
written. A republish first removes the old manifest, so no reader ever sees a manifest next
to half-replaced files. Files of an earlier publish that the new one no longer has are
removed before the new manifest appears.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune_trainer.errors import StorageError
from finetune_trainer.storage.client import Storage
from finetune_trainer.storage.entries import FileEntry
from finetune_trainer.storage.identity import JobIdentity
from finetune_trainer.storage.location import Location
from finetune_trainer.storage.ownership import MANIFEST_FILE, confirm_ownership

log = logging.getLogger(__name__)

# Artifact keys as status.artifacts spells them.
_ARTIFACT_KEYS = {"metrics.json": "metrics", "loss.png": "lossPlot"}


def _artifact_key(name: str) -> str:
    if name in _ARTIFACT_KEYS:
        return _ARTIFACT_KEYS[name]
    stem = name.split(".", 1)[0]
    head, *rest = re.split(r"[-_]", stem)
    return head + "".join(part.capitalize() for part in rest)


def publish_artifacts(
    storage: Storage,
    local_root: Path,
    output_uri: str,
    *,
    job: JobIdentity,
    spec: dict[str, Any],
    overwrite: bool,
    subdirs: Sequence[str] = ("adapter", "merged", "tensorboard"),
    files: Sequence[str] = ("metrics.json", "loss.png"),
    lineage: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Upload what exists of ``subdirs`` and ``files`` under ``local_root``, then the manifest.

    ``lineage`` (how the model was made: :mod:`.model_card`) goes into the manifest as is.

    Returns the artifact URIs (``adapter``, ``merged``, ``tensorboard``, ``metrics``,
    ``lossPlot``, ``manifest``) of what was published: a missing ``merged/`` (``output.merge:
    false``) or ``tensorboard/`` (``tracking.tensorboard: false``) is simply left out.
    Ownership is checked again first (the claim may be hours old).
    """
    root = Location.parse(output_uri)
    confirm_ownership(storage, output_uri, job, overwrite)
    manifest_uri = str(root.join(MANIFEST_FILE))
    storage.delete(manifest_uri)

    entries: list[FileEntry] = []
    artifacts: dict[str, str] = {}
    for name in subdirs:
        folder = local_root / name
        if not folder.is_dir():
            continue
        target = str(root.join(name))
        uploaded = storage.upload_dir(folder, target)
        keep = {e.path for e in uploaded}
        leftovers = [r for r in storage.list_files(target) if r not in keep]
        for relative in leftovers:
            storage.delete(str(root.join(name, relative)))
        entries += [e.under(name) for e in uploaded]
        artifacts[_artifact_key(name)] = target
    for name in files:
        path = local_root / name
        if not path.is_file():
            continue
        target = str(root.join(name))
        entries.append(_renamed(storage.upload_file(path, target), name))
        artifacts[_artifact_key(name)] = target
    if not entries:
        raise StorageError(
            f"nothing to publish from {local_root} to {root}: none of "
            f"{', '.join([*subdirs, *files])} exists",
            reason="ArtifactMissing",
        )

    storage.write_json(
        manifest_uri,
        {
            "job": job.to_dict(),
            "spec": spec,
            "files": [e.to_dict() for e in sorted(entries, key=lambda e: e.path)],
            "createdAt": datetime.now(timezone.utc).isoformat(),
            **({"lineage": dict(lineage)} if lineage is not None else {}),
        },
    )
    artifacts["manifest"] = manifest_uri
    log.info("published %d files to %s", len(entries), root)
    return artifacts


def _renamed(entry: FileEntry, path: str) -> FileEntry:
    return FileEntry(path, entry.size, entry.sha256)


def verify_manifest(storage: Storage, output_uri: str) -> list[str]:
    """Re-read every file MANIFEST.json lists and compare size and sha256; [] means verified.

    Each problem is one line naming the file's URI: missing, wrong size, or wrong hash.
    """
    root = Location.parse(output_uri)
    manifest = storage.read_json(str(root.join(MANIFEST_FILE)))
    if manifest is None:
        return [f"{root.join(MANIFEST_FILE)} is missing: the output was never (fully) published"]
    listed = manifest.get("files")
    if not isinstance(listed, list):
        return [f"{root.join(MANIFEST_FILE)} has no 'files' list"]

    def check(item: Any) -> str | None:
        try:
            expected = FileEntry(str(item["path"]), int(item["size"]), str(item["sha256"]))
        except (KeyError, TypeError, ValueError):
            return f"{root.join(MANIFEST_FILE)}: malformed entry {item!r}"
        uri = str(root.join(expected.path))
        actual = storage.digest(uri, expected.path)
        if actual is None:
            return f"{uri}: missing"
        if actual.size != expected.size:
            return f"{uri}: size {actual.size}, manifest says {expected.size}"
        if actual.sha256 != expected.sha256:
            return f"{uri}: sha256 {actual.sha256}, manifest says {expected.sha256}"
        return None

    with ThreadPoolExecutor(storage.transfer.parallel_files, "ftj-verify") as pool:
        return [p for p in pool.map(check, listed) if p is not None]
