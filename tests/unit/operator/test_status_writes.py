"""Status writes: only on change; progress-only changes rate-limited."""

from __future__ import annotations

import pytest
from finetune_operator.status_writes import status_patch

pytestmark = pytest.mark.unit

TRAINING = {"phase": "Training", "progress": {"step": 10}}


def test_nothing_changed_nothing_written() -> None:
    assert status_patch(TRAINING, dict(TRAINING), None, 100.0, 10.0) is None


def test_progress_only_change_waits_for_the_interval() -> None:
    moved = {"phase": "Training", "progress": {"step": 11}}
    assert status_patch(TRAINING, moved, last_write=95.0, now=100.0, min_interval=10.0) is None
    assert status_patch(TRAINING, moved, last_write=89.0, now=100.0, min_interval=10.0) == {
        "status": moved
    }
    assert status_patch(TRAINING, moved, last_write=None, now=100.0, min_interval=10.0) == {
        "status": moved
    }


def test_phase_change_is_written_at_once() -> None:
    done = {"phase": "Merging", "progress": {"step": 11}}
    assert status_patch(TRAINING, done, last_write=99.9, now=100.0, min_interval=10.0) == {
        "status": done
    }
