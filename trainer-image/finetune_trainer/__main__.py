"""``python -m finetune_trainer``: the trainer pod's entry point.

It turns the outcome of :func:`finetune_trainer.run.run_job` into what Kubernetes and the
operator read (docs/internals.md): an exit code the Job's podFailurePolicy understands
(0, 1 = retry may help, 42 = the input is wrong) and a termination message with a reason and
a one-paragraph message, never a traceback. The traceback still goes to the log, where a
person debugging wants it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from finetune_trainer.errors import EXIT_FAILED, EXIT_INVALID_INPUT, EXIT_OK, TrainerError

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


def classify(err: BaseException) -> tuple[int, str, str]:
    """``(exit code, reason, message)`` for any failure, with no traceback in the message."""
    from finetune_api.manifest import ManifestError

    if isinstance(err, TrainerError):
        return err.exit_code, err.reason, err.message
    if isinstance(err, ManifestError):
        return EXIT_INVALID_INPUT, "InvalidSpec", str(err)
    if type(err).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return (
            EXIT_FAILED,
            "OutOfMemory",
            f"the GPU ran out of memory ({err}). Lower spec.training.batchSize or "
            "cutoffLength, set gradientCheckpointing: always, or use type: qlora.",
        )
    return EXIT_FAILED, "TrainerFailed", f"{type(err).__name__}: {err}"


def leave_process_group() -> None:
    """Leave the torch.distributed group before the process exits.

    A rank that exits with the group still open can abort at interpreter shutdown (gloo's
    threads: "terminate called without an active exception", SIGABRT); torchrun then stops
    every other rank, rank 0's merge and upload included. Ranks other than 0 finish first, so
    this happened to finished runs (seen in the two-rank CPU tests).
    """
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception as err:  # leaving must never turn a result into a failure
        log.warning("could not leave the process group: %s", err)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line takes no options: everything comes from the mounted manifest.

    ``--help`` exists so that a person (and the image tier's smoke test) can check the image's
    entry point without a job: it says where the trainer reads its job and writes its result.
    """
    parser = argparse.ArgumentParser(
        prog="python -m finetune_trainer",
        description=(
            "Run the FineTuneJob whose manifest FTJ_MANIFEST names (the operator mounts it at "
            "/etc/finetune/job.json): fetch, validate the data, train, merge, publish."
        ),
        epilog=(
            "Exit codes: 0 succeeded, 1 failed (a retry may help), 42 the input is wrong. "
            "The termination message (FTJ_TERMINATION_LOG, default /dev/termination-log) "
            "holds the reason; progress is served on FTJ_PROGRESS_PORT (8080)."
        ),
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the job named by ``FTJ_MANIFEST`` and return the process exit code."""
    parse_args(argv)
    configure_logging()
    # Imported after the arguments: they pull in torch and transformers, which need a
    # writable /tmp that ``--help`` on a bare read-only root does not have.
    from finetune_trainer.progress import (
        ProgressReporter,
        is_main_process,
        termination_message,
        write_termination_message,
    )
    from finetune_trainer.run import RunSettings

    settings = RunSettings.from_env()
    reporter = ProgressReporter(settings.progress_host, settings.progress_port)
    try:
        reporter.start()
    except OSError as err:  # a busy port must not cost the run
        log.warning("progress server not started on port %s: %s", settings.progress_port, err)
    try:
        from finetune_api.manifest import load_manifest

        from finetune_trainer.run import run_job

        job = load_manifest(settings.manifest_path)
        result = run_job(job, settings, reporter)
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
        leave_process_group()
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
    leave_process_group()
    return EXIT_OK


def exit_rank(code: int) -> None:
    """End the process with ``code``; one of several torchrun workers skips interpreter
    teardown.

    Even after ``leave_process_group`` a gloo worker has been seen to abort while the
    interpreter shuts down (SIGABRT after its result was written, in the two-rank CPU tests),
    and torchrun reads a signal as a failed rank. Everything this process had to write is
    written and flushed by then, so nothing is lost by leaving at once.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_rank(main())
