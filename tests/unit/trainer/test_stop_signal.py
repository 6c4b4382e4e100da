"""SIGTERM: in training, finish the step and save; outside it, stop at once; the previous
handler comes back afterwards."""

from __future__ import annotations

import os
import signal

import pytest
from finetune_trainer.errors import Stopped
from finetune_trainer.stop_signal import StopOnSignal, stop_after_upload
from transformers import TrainerControl, TrainerState, TrainingArguments

pytestmark = pytest.mark.unit


def test_sigterm_in_training_saves_and_stops_at_the_end_of_the_step(tmp_path) -> None:  # type: ignore[no-untyped-def]
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state, control = TrainerState(global_step=6, max_steps=20), TrainerControl()
    with StopOnSignal().installed() as stop:
        stop.on_train_begin(args, state, control)
        stop.on_step_end(args, state, control)
        assert not control.should_save  # no signal yet: training as usual
        os.kill(os.getpid(), signal.SIGTERM)  # handled: the step in progress is not cut
        state.global_step = 7
        stop.on_step_end(args, state, control)
    assert control.should_save and control.should_training_stop
    assert stop.stopped_at_step == 7
    with pytest.raises(Stopped, match="after step 7") as raised:
        stop_after_upload(stop, lambda: True, "s3://out/job")
    assert raised.value.exit_code == 143 and "s3://out/job/checkpoints" in str(raised.value)


def test_sigterm_outside_training_waits_for_the_upload_then_stops() -> None:
    waited: list[bool] = []
    with StopOnSignal().installed() as stop:
        stop.before_exit(lambda: waited.append(True))
        with pytest.raises(Stopped, match="outside training"):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0)  # let the handler run here, inside the raises block
    assert waited == [True]


def test_the_previous_handler_is_given_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal().installed():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
