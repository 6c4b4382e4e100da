"""``ftj run`` shows the trainer's own lines; the libraries' chatter only with ``--verbose``.

Each case runs a fresh interpreter (the switches act on import-time state: tqdm and
transformers read their environment when first imported) that sets up logging as the trainer's
entry does, then makes the noises seen in real runs: a FutureWarning, a tqdm bar,
transformers' own logger, matplotlib's font-cache line, bitsandbytes' kernel warning.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from finetune_trainer.library_output import OwnRecordsOnly, quiet_requested

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
NOISES = """
import logging, sys, warnings
from finetune_trainer.library_output import quiet_requested, silence_libraries
logging.basicConfig(level=logging.INFO, stream=sys.stderr)  # as the trainer's entry does
if quiet_requested():
    silence_libraries()
logging.getLogger("finetune_trainer").info("OWN-PROGRESS-LINE")
logging.getLogger("finetune_trainer.storage.publish").info("OWN-CHILD-LINE")
warnings.warn("`x` is deprecated", FutureWarning)
warnings.warn("something odd", UserWarning)
import tqdm
for _ in tqdm.tqdm(range(3), desc="TQDM-BAR"):
    pass
from transformers.utils import logging as tlog
tlog.get_logger("transformers.modeling_utils").warning("TRANSFORMERS-WARNING")
logging.getLogger("matplotlib.font_manager").info("generated new fontManager")
logging.getLogger("bitsandbytes").warning("Failed to load CPU gemm_4bit_forward from hub")
logging.getLogger("some.library").error("LIBRARY-ERROR")
"""


def run_noises(quiet: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "TRANSFORMERS_"))}
    env.pop("FTJ_QUIET", None)
    if quiet is not None:
        env["FTJ_QUIET"] = quiet
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer-image")])
    done = subprocess.run(
        [sys.executable, "-c", NOISES], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_quiet_keeps_the_trainers_lines_and_errors_only() -> None:
    out = run_noises("1")
    assert "OWN-PROGRESS-LINE" in out and "OWN-CHILD-LINE" in out
    assert "LIBRARY-ERROR" in out
    for noise in (
        "FutureWarning",
        "UserWarning",
        "TQDM-BAR",
        "TRANSFORMERS-WARNING",
        "fontManager",
        "gemm_4bit_forward",
    ):
        assert noise not in out, noise


def test_verbose_shows_the_libraries_as_a_pod_log_does() -> None:
    for setting in ("0", None):  # ftj run --verbose; a pod, where nothing sets it
        out = run_noises(setting)
        for noise in ("OWN-PROGRESS-LINE", "FutureWarning", "TQDM-BAR", "gemm_4bit_forward"):
            assert noise in out, (setting, noise)


def test_quiet_switch_and_filter() -> None:
    import logging

    assert quiet_requested({"FTJ_QUIET": "1"}) and quiet_requested({"FTJ_QUIET": "true"})
    assert not quiet_requested({}) and not quiet_requested({"FTJ_QUIET": "0"})
    keep = OwnRecordsOnly().filter

    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "m", None, None)

    assert keep(record("finetune_trainer", logging.INFO))
    assert keep(record("peft.tuners", logging.ERROR))
    assert not keep(record("bitsandbytes", logging.WARNING))
