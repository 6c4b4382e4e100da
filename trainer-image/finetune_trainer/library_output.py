"""What the libraries print while the trainer runs, and how ``ftj run`` keeps it out of sight.

A person running ``ftj run`` wants the trainer's own lines (the job, the data, the plan, one
progress line per ``loggingSteps``, the artifacts) and what went wrong. Around them the
training stack prints a lot that they can do nothing about: FutureWarnings and UserWarnings
from transformers/peft/torch, tqdm bars, matplotlib building its font cache, bitsandbytes
failing to fetch an optional CPU kernel from the hub. With ``FTJ_QUIET=1`` (what ``ftj run``
sets unless ``--verbose``) all of that is dropped and errors are kept; a trainer pod, whose log
is where someone debugging looks, keeps the libraries' warnings (the variable is unset there).

Why several levers: transformers logs through its own handler (``propagate = False``) and sets
its level when it is first imported, so only ``TRANSFORMERS_VERBOSITY`` (read then) reaches it;
tqdm reads ``TQDM_DISABLE`` when it is imported; Python warnings go through ``warnings``;
everything else (bitsandbytes, matplotlib, kernels) propagates to the root logger, whose
handlers get a filter that lets only the trainer's own records through below ERROR. The
environment variables are inherited by torchrun's workers, which quiet themselves the same way.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Mapping

QUIET_ENV = "FTJ_QUIET"
# For the reference (``ftj docs``: the trainer process's variables).
ENV_DOCS: Mapping[str, str] = {
    QUIET_ENV: (
        "1: only the trainer's own log lines and errors; the libraries' warnings, log lines and "
        "progress bars are dropped. ftj run sets it unless --verbose; unset (a pod): the "
        "libraries' warnings show."
    ),
}
# Loggers whose records are the trainer's own messages (finetune_trainer, finetune_api, ...).
OWN_LOGGERS = ("finetune_",)
# Read by the libraries when they are imported (set only where the user has not set them).
QUIET_LIBRARY_ENV: Mapping[str, str] = {
    "TQDM_DISABLE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "error",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_VERBOSITY": "error",
}


def quiet_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``FTJ_QUIET`` asks to hide the libraries' output (``1``, ``true``, ``yes``)."""
    env = os.environ if environ is None else environ
    return env.get(QUIET_ENV, "").strip().lower() in ("1", "true", "yes")


class OwnRecordsOnly(logging.Filter):
    """Pass the trainer's own records, and anyone's ERROR and above."""

    def filter(self, record: logging.LogRecord) -> bool:
        """True for records worth a line on a quiet console."""
        return record.levelno >= logging.ERROR or record.name.startswith(OWN_LOGGERS)


def silence_libraries() -> None:
    """Hide library warnings, progress bars and chatter from here on; keep errors.

    Call it after the root logger has its handlers and before the training stack is imported
    (the environment variables are read on import; libraries already imported are quieted
    through their own switches).
    """
    for key, value in QUIET_LIBRARY_ENV.items():
        os.environ.setdefault(key, value)
    warnings.simplefilter("ignore")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, OwnRecordsOnly) for f in handler.filters):
            handler.addFilter(OwnRecordsOnly())
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if "datasets" in sys.modules:
        import datasets

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
