"""The trainer's one entry: run the FineTuneJob of a manifest and return the exit code.

A trainer pod (``python -m finetune_trainer``, which reads the arguments from the ``FTJ_*``
variables of :mod:`finetune_api.contract`) and ``ftj run`` on a laptop both call
:func:`run_from_manifest`. It turns the outcome of :func:`finetune_trainer.run.run_job` into
what Kubernetes and the operator read (docs/internals.md): an exit code the Job's
podFailurePolicy understands (0; 1 = retry may help; 42 = the input is wrong, or no plan
fits the GPU; 143 = stopped by SIGTERM after saving a checkpoint) and a
termination message with a reason and a one-paragraph message, never a traceback. The
traceback still goes to the log, where a person debugging wants it.

Importing this module is cheap (no torch): the training stack is imported when a run starts.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

from finetune_api.contract import (
    EXIT_FAILED,
    EXIT_INVALID_INPUT,
    EXIT_OK,
    PROGRESS_HOST,
    PROGRESS_PORT,
    TERMINATION_LOG,
)

from finetune_trainer.errors import TrainerError
from finetune_trainer.library_output import quiet_requested, silence_libraries

log = logging.getLogger("finetune_trainer")


def configure_logging() -> None:
    """One readable line per event on stderr; the libraries' chatter only when it matters."""
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {prefix}%(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("transformers", "trl", "peft", "datasets", "accelerate", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if quiet_requested():  # ftj run without --verbose: the trainer's own lines and errors only
        silence_libraries()


def classify(err: BaseException) -> tuple[int, str, str]:
    """``(exit code, reason, message)`` for any failure, with no traceback in the message."""
    from finetune_api.manifest import ManifestError

    if isinstance(err, TrainerError):
        return err.exit_code, err.reason, err.message
    if isinstance(err, ManifestError):
        return EXIT_INVALID_INPUT, "InvalidSpec", str(err)
    if type(err).__name__ == "OutOfMemoryError":  # outside training, where no re-plan helps
        return (
            EXIT_INVALID_INPUT,
            "OutOfMemory",
            f"the GPU ran out of memory outside training ({err}). Lower "
            "spec.training.batchSize or cutoffLength, or use spec.method.type: qlora.",
        )
    return EXIT_FAILED, "TrainerFailed", f"{type(err).__name__}: {err}"


def run_from_manifest(
    manifest_path: str | Path,
    *,
    workdir: str | Path,
    cache_dir: str | Path | None = None,
    output_uri: str | None = None,
    progress_host: str = PROGRESS_HOST,
    progress_port: int = PROGRESS_PORT,
    termination_log: str | Path | None = TERMINATION_LOG,
) -> int:
    """Run the FineTuneJob at ``manifest_path`` to published artifacts; the exit code.

    ``workdir`` holds downloads and local checkpoints (``cache_dir`` defaults to
    ``<workdir>/cache``); ``output_uri`` overrides ``spec.output.uri``; ``progress_port`` 0
    serves no progress; ``termination_log`` None writes no termination message. Relative
    paths in the manifest are resolved against its folder. Failures are returned as exit
    codes, never raised (except ``KeyboardInterrupt``).
    """
    configure_logging()
    # Imported here, not at the top: they pull in torch and transformers, which need a
    # writable /tmp that ``--help`` on a bare read-only root does not have.
    from finetune_trainer.progress import (
        ProgressReporter,
        is_main_process,
        termination_message,
        write_termination_message,
    )
    from finetune_trainer.run import RunSettings

    work = Path(workdir)
    settings = RunSettings(
        manifest_path=Path(manifest_path),
        workdir=work,
        cache_dir=Path(cache_dir) if cache_dir is not None else work / "cache",
        output_uri=output_uri,
        progress_host=progress_host,
        progress_port=progress_port or None,
        termination_log=Path(termination_log) if termination_log is not None else None,
    )
    reporter = ProgressReporter(settings.progress_host, settings.progress_port)
    try:
        reporter.start()
    except OSError as err:  # a busy port must not cost the run
        log.warning("progress server not started on port %s: %s", settings.progress_port, err)
    try:
        from finetune_api.manifest import load_manifest

        from finetune_trainer.run import run_job
        from finetune_trainer.stop_signal import StopOnSignal

        job = load_manifest(settings.manifest_path)
        with StopOnSignal().installed() as stop:  # SIGTERM: save a checkpoint, exit 143
            result = run_job(job, settings, reporter, stop)
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):
            raise
        code, reason, message = classify(err)
        if code == EXIT_FAILED and not isinstance(err, TrainerError):
            log.error("%s", "".join(traceback.format_exception(err)).rstrip())
        log.error("failed (%s): %s", reason, message)
        reporter.set_phase("Failed")
        text = termination_message(
            "Failed", progress=reporter.snapshot(), reason=reason, message=message
        )
        write_termination_message(settings.termination_log, text)
        reporter.stop()
        return code

    reporter.set_phase("Succeeded")
    if is_main_process():
        for name, uri in result.artifacts.items():
            log.info("artifact %s: %s", name, uri)
    text = termination_message(
        "Succeeded",
        progress=reporter.snapshot(),
        message=f"trained {result.global_step} steps; artifacts in {result.output_uri}",
        artifacts=result.artifacts,
    )
    write_termination_message(settings.termination_log, text)
    reporter.stop()
    return EXIT_OK
