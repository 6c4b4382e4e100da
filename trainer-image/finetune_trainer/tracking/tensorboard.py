"""TensorBoard event files of the run's metrics, written into the output's ``tensorboard/``.

torch's ``SummaryWriter`` (it needs the ``tensorboard`` package, which the trainer depends on):
torch is loaded already, so it costs a tenth of a second, and it writes classic scalar
summaries every TensorBoard version and reader understands. Files are flushed at each log, so a
pod killed mid-run loses at most the last interval; they are published with the other
artifacts (``storage.publish``), and ``tensorboard --logdir <output>/tensorboard`` reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class TensorBoardLog:
    """Scalars by step, in event files under ``folder`` (created at the first value)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._writer: Any = None

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        """One point per metric at ``step``."""
        if not values:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.folder.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.folder))
        for name, value in values.items():
            self._writer.add_scalar(name, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (before the output is published)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
