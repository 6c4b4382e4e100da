"""Checkpoints in the output: ``<output>/checkpoints/checkpoint-<step>/`` + ``COMPLETE`` last.

A pod can be killed (preempted, OOM) in the middle of an upload. The ``COMPLETE`` marker is
written only after every file of the checkpoint is stored, so a resume only ever picks a
checkpoint that is whole; half-uploaded ones are ignored and later pruned.

A multi-node job's checkpoint is written to every node's own disk: each rank's RNG state,
and with sharded weights (FSDP) each rank's shard of the adapter and the optimizer state.
So each node uploads its own part into the same folder and marks it with
``COMPLETE.node-<k>-of-<n>`` (the files it uploaded, and ``nodes: n``); the checkpoint is
whole only once all ``n`` nodes' markers are there. A node killed mid-upload leaves the
others' markers without its own: that checkpoint is ignored, as a half-uploaded one is on one
node. A restore downloads every node's files, so a job resumes on any set of nodes.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from pathlib import Path

from finetune_trainer.errors import StorageError
from finetune_trainer.storage.client import Storage
from finetune_trainer.storage.location import Location
from finetune_trainer.storage.ownership import CHECKPOINTS_DIR

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_NODE_MARKER = re.compile(r"^COMPLETE\.node-(\d+)-of-(\d+)$")


def marker_name(node: int, nodes: int) -> str:
    """The name of node ``node``'s marker; ``COMPLETE`` for a single-node job."""
    return COMPLETE_MARKER if nodes == 1 else f"{COMPLETE_MARKER}.node-{node}-of-{nodes}"


def is_marker(name: str) -> bool:
    """Whether a file of a checkpoint folder is a marker (not part of the checkpoint)."""
    return name == COMPLETE_MARKER or _NODE_MARKER.match(name) is not None


def whole(names: list[str]) -> bool:
    """Whether the files of a checkpoint folder (their names) make a whole checkpoint: the
    ``COMPLETE`` marker, or the markers of every node that a node's marker counts."""
    if COMPLETE_MARKER in names:
        return True
    parts: dict[int, set[int]] = {}
    for name in names:
        if match := _NODE_MARKER.match(name):
            parts.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    return any(found == set(range(nodes)) for nodes, found in parts.items())


class CheckpointStore:
    """Save, find, restore and prune the checkpoints of one output."""

    def __init__(self, storage: Storage, output_uri: str) -> None:
        self.storage = storage
        self.root = Location.parse(output_uri).join(CHECKPOINTS_DIR)

    def uri(self, step: int) -> str:
        """Where the checkpoint of ``step`` lives."""
        return str(self.root.join(f"checkpoint-{step}"))

    def save(self, step: int, local_checkpoint_dir: Path, *, node: int = 0, nodes: int = 1) -> str:
        """Upload a checkpoint folder, then its marker; returns the checkpoint's URI.

        ``node`` of ``nodes``: which part of a multi-node checkpoint this is (the files of
        this node's folder); the checkpoint is whole once every node has saved its part.
        """
        if not 0 <= node < nodes:
            raise ValueError(f"node {node} is not one of {nodes} node(s)")
        target = self.uri(step)
        entries = self.storage.upload_dir(local_checkpoint_dir, target)
        self.storage.write_json(
            str(self.root.join(f"checkpoint-{step}", marker_name(node, nodes))),
            {
                "step": step,
                "node": node,
                "nodes": nodes,
                "files": [e.to_dict() for e in entries],
                "completedAt": datetime.now(timezone.utc).isoformat(),
            },
        )
        part = f" (node {node} of {nodes})" if nodes > 1 else ""
        log.info("saved checkpoint %d%s to %s (%d files)", step, part, target, len(entries))
        return target

    def _steps(self) -> list[int]:
        steps = []
        for name in self.storage.list_prefixes(str(self.root)):
            match = _NAME.match(name)
            if match:
                steps.append(int(match.group(1)))
        return sorted(steps)

    def _is_complete(self, step: int) -> bool:
        if self.storage.exists(str(self.root.join(f"checkpoint-{step}", COMPLETE_MARKER))):
            return True  # one node: one marker, one request
        return whole(self.storage.list_files(self.uri(step)))

    def complete_steps(self) -> list[int]:
        """Steps of whole checkpoints, oldest first."""
        return [s for s in self._steps() if self._is_complete(s)]

    def latest_complete(self) -> int | None:
        """The newest whole checkpoint's step (its COMPLETE marker, or every node's); None
        when there is nothing to resume from."""
        for step in reversed(self._steps()):
            if self._is_complete(step):
                return step
        return None

    def restore(self, step: int, local_dir: Path) -> Path:
        """A local folder holding checkpoint ``step``, every node's files of it.

        Local outputs are returned in place (no copy of a multi-GB optimizer state); S3
        checkpoints are downloaded into ``local_dir``.
        """
        if not self._is_complete(step):
            raise StorageError(
                f"checkpoint {self.uri(step)} has no {COMPLETE_MARKER} marker: it was not "
                "fully saved. Resume from latest_complete() instead.",
                reason="CheckpointIncomplete",
            )
        source = Location.parse(self.uri(step))
        if source.scheme == "file":
            return source.local_path
        path = self.storage.download_dir(self.uri(step), local_dir)
        for marker in [p for p in path.iterdir() if is_marker(p.name)]:
            marker.unlink()
        return path

    def prune(self, keep: int = 2) -> list[int]:
        """Delete all but the newest ``keep`` complete checkpoints, and incomplete ones older
        than the newest complete one (left by killed pods); returns the deleted steps.

        Incomplete checkpoints newer than the newest complete one are kept: one may be
        uploading right now.
        """
        steps = self._steps()
        complete = [s for s in steps if self._is_complete(s)]
        keep_set = set(complete[-keep:]) if keep > 0 else set()
        newest = complete[-1] if complete else None
        doomed = [
            s
            for s in steps
            if s not in keep_set and (s in complete or (newest is not None and s < newest))
        ]
        for step in doomed:
            # The markers go first, so a half-deleted checkpoint is never taken as whole.
            folder = self.root.join(f"checkpoint-{step}")
            for name in [n for n in self.storage.list_files(str(folder)) if is_marker(n)]:
                self.storage.delete(str(folder.join(name)))
            self.storage.delete(self.uri(step), recursive=True)
        return doomed
