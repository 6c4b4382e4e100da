"""Checkpoint uploads that training never waits for.

A 7B adapter's checkpoint (weights and optimizer state) is hundreds of MB; uploading it in
``on_save`` held the GPU idle for as long as the upload took, every ``saveSteps``. Here
``submit`` only hard-links the finished checkpoint folder into a staging folder (no bytes
copied; the Trainer may rotate the original away meanwhile) and hands it to one upload thread.

* **Newest wins.** A checkpoint that still waits when a newer one arrives is dropped: resuming
  only ever needs the newest.
* **Whole or ignored.** The store writes the ``COMPLETE`` marker after every file, and prunes
  older checkpoints only after that (checkpoints.py), so a pod killed mid-upload leaves the
  previous complete checkpoint to resume from.
* **Waited for twice:** at the end of the run (the final checkpoint must be whole before the
  pod exits) and on SIGTERM (the checkpoint is what the next pod resumes from).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("finetune_trainer")

STAGING_DIR = ".uploading"


def stage_checkpoint(checkpoint_dir: Path, staging_root: Path) -> Path:
    """A private copy of ``checkpoint_dir`` under ``staging_root``, made of hard links where
    the filesystem allows (the Trainer writes new files rather than rewriting old ones, so a
    link is as good as a copy), else copies."""
    target = staging_root / checkpoint_dir.name
    shutil.rmtree(target, ignore_errors=True)
    for source in sorted(checkpoint_dir.rglob("*")):
        destination = target / source.relative_to(checkpoint_dir)
        if source.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, destination)
        except OSError:  # another filesystem, or links refused
            shutil.copy2(source, destination)
    return target


class BackgroundUploads:
    """One upload thread running ``upload(step, folder)`` for the newest submitted checkpoint.

    ``upload`` saves one staged checkpoint folder (``CheckpointStore.save`` then ``prune``);
    the staged folder is deleted afterwards, whatever the outcome.
    """

    def __init__(self, upload: Callable[[int, Path], None]) -> None:
        self._upload = upload
        self._cond = threading.Condition()
        self._pending: tuple[int, Path] | None = None
        self._busy = False
        self._thread: threading.Thread | None = None
        self.uploaded: list[int] = []  # steps whose upload completed, in order
        self.failed: list[tuple[int, str]] = []  # (step, error) of uploads that did not

    def submit(self, step: int, staged: Path) -> None:
        """Upload ``staged`` (checkpoint ``step``) soon; returns at once."""
        with self._cond:
            if self._pending is not None:
                dropped_step, dropped = self._pending
                shutil.rmtree(dropped, ignore_errors=True)
                log.info(
                    "checkpoint %d not uploaded: checkpoint %d replaces it", dropped_step, step
                )
            self._pending = (step, staged)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="checkpoint-upload", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted checkpoint is uploaded (or dropped for a newer one);
        False when ``timeout`` seconds passed first."""
        started = time.monotonic()
        with self._cond:
            done = self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)
        if self.uploaded:
            log.info(
                "checkpoint uploads: %d done, newest %d (waited %.1f s)",
                len(self.uploaded),
                self.uploaded[-1],
                time.monotonic() - started,
            )
        return done

    @property
    def newest_uploaded(self) -> int | None:
        """The newest step whose checkpoint is whole in the output (None: none yet)."""
        return self.uploaded[-1] if self.uploaded else None

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None)
                assert self._pending is not None
                step, staged = self._pending
                self._pending, self._busy = None, True
            try:
                started = time.monotonic()
                self._upload(step, staged)
                self.uploaded.append(step)
                log.info("checkpoint %d uploaded in %.1f s", step, time.monotonic() - started)
            except Exception as err:  # the next checkpoint tries again; training goes on
                self.failed.append((step, f"{type(err).__name__}: {err}"))
                log.warning("checkpoint %d upload failed (%s); training goes on", step, err)
            finally:
                shutil.rmtree(staged, ignore_errors=True)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
