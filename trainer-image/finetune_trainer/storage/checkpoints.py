"""Checkpoints in the output: ``<output>/checkpoints/checkpoint-<step>/`` + ``COMPLETE`` last.

A pod can be killed (preempted, OOM) in the middle of an upload. The ``COMPLETE`` marker is
written only after every file of the checkpoint is stored, so a resume only ever picks a
checkpoint that is whole; half-uploaded ones are ignored and later pruned.
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


class CheckpointStore:
    """Save, find, restore and prune the checkpoints of one output."""

    def __init__(self, storage: Storage, output_uri: str) -> None:
        self.storage = storage
        self.root = Location.parse(output_uri).join(CHECKPOINTS_DIR)

    def uri(self, step: int) -> str:
        """Where the checkpoint of ``step`` lives."""
        return str(self.root.join(f"checkpoint-{step}"))

    def save(self, step: int, local_checkpoint_dir: Path) -> str:
        """Upload a checkpoint folder, then its COMPLETE marker; returns its URI."""
        target = self.uri(step)
        entries = self.storage.upload_dir(local_checkpoint_dir, target)
        self.storage.write_json(
            str(self.root.join(f"checkpoint-{step}", COMPLETE_MARKER)),
            {
                "step": step,
                "files": [e.to_dict() for e in entries],
                "completedAt": datetime.now(timezone.utc).isoformat(),
            },
        )
        log.info("saved checkpoint %d to %s (%d files)", step, target, len(entries))
        return target

    def _steps(self) -> list[int]:
        steps = []
        for name in self.storage.list_prefixes(str(self.root)):
            match = _NAME.match(name)
            if match:
                steps.append(int(match.group(1)))
        return sorted(steps)

    def _is_complete(self, step: int) -> bool:
        return self.storage.exists(str(self.root.join(f"checkpoint-{step}", COMPLETE_MARKER)))

    def complete_steps(self) -> list[int]:
        """Steps of whole checkpoints, oldest first."""
        return [s for s in self._steps() if self._is_complete(s)]

    def latest_complete(self) -> int | None:
        """The newest step with a COMPLETE marker; None when there is nothing to resume from."""
        for step in reversed(self._steps()):
            if self._is_complete(step):
                return step
        return None

    def restore(self, step: int, local_dir: Path) -> Path:
        """A local folder holding checkpoint ``step``.

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
        (path / COMPLETE_MARKER).unlink(missing_ok=True)
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
            # The marker goes first, so a half-deleted checkpoint is never taken as whole.
            self.storage.delete(str(self.root.join(f"checkpoint-{step}", COMPLETE_MARKER)))
            self.storage.delete(self.uri(step), recursive=True)
        return doomed
