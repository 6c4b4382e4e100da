"""Failures a user can act on, each with a CamelCase ``reason`` and an exit code.

The reason becomes the FineTuneJob condition reason; the exit code tells the Job's
``podFailurePolicy`` whether retrying can help. Anything in :class:`InvalidInput` is the
user's input (data, spec, output location) and fails the job at once: retrying cannot fix it.
"""

from __future__ import annotations

# The codes are the operator's too: its Job's podFailurePolicy fails the Job at once on 42.
from finetune_api.contract import EXIT_FAILED, EXIT_INVALID_INPUT, EXIT_STOPPED


class TrainerError(Exception):
    """A failure with a reason a person understands. Retrying may help (exit code 1)."""

    reason = "TrainerFailed"
    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        """The human-readable message (no traceback)."""
        return str(self.args[0]) if self.args else self.reason


class InvalidInput(TrainerError):
    """The input can't be used: bad data, an impossible spec, a refused output location."""

    reason = "InvalidInput"
    exit_code = EXIT_INVALID_INPUT


class OutputConflict(InvalidInput):
    """The output location holds another job's published artifacts."""

    reason = "OutputConflict"


class UnsupportedHardware(InvalidInput):
    """The spec asks for something this machine can't do (e.g. QLoRA without a GPU)."""

    reason = "UnsupportedHardware"


class StorageError(TrainerError):
    """A transfer failed after its retries (network, permissions, missing object)."""

    reason = "StorageError"


class OutOfMemory(InvalidInput):
    """The GPU ran out of memory and no smaller plan fits (or re-planning is used up): the
    same pod again would run out again, so the job fails at once with the planner's advice."""

    reason = "OutOfMemory"


class Stopped(TrainerError):
    """SIGTERM (preemption, eviction, a deleted pod) stopped the run after it saved and
    uploaded a checkpoint; the next pod resumes from it."""

    reason = "Stopped"
    exit_code = EXIT_STOPPED
