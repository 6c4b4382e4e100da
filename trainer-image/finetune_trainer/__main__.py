"""``python -m finetune_trainer``: the trainer pod's process.

It reads where the job is and where results go from the ``FTJ_*`` variables the operator
sets (:class:`finetune_api.contract.TrainerEnvironment`, docs/internals.md), runs it through
the trainer's one entry, :func:`finetune_trainer.entry.run_from_manifest` (which ``ftj run``
calls too), and ends the process, one torchrun worker among several included.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

from finetune_api import contract

log = logging.getLogger("finetune_trainer")


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
            f"Run the FineTuneJob whose manifest {contract.ENV_MANIFEST} names (the operator "
            f"mounts it at {contract.MANIFEST_PATH}): fetch, validate the data, train, merge, "
            "publish."
        ),
        epilog=(
            f"Exit codes: {contract.EXIT_OK} succeeded, {contract.EXIT_FAILED} failed (a retry "
            f"may help), {contract.EXIT_INVALID_INPUT} the input is wrong. The termination "
            f"message ({contract.ENV_TERMINATION_LOG}, default {contract.TERMINATION_LOG}) "
            f"holds the reason; progress is served on {contract.ENV_PROGRESS_PORT} "
            f"({contract.PROGRESS_PORT})."
        ),
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the job the ``FTJ_*`` variables name and return the process exit code."""
    parse_args(argv)
    env = contract.TrainerEnvironment.from_env(os.environ)
    # Imported after the arguments: the entry's run pulls in torch and transformers, which
    # need a writable /tmp that ``--help`` on a bare read-only root does not have.
    from finetune_trainer.entry import run_from_manifest

    code = run_from_manifest(
        env.manifest,
        workdir=env.workdir or tempfile.mkdtemp(prefix="ftj-"),
        cache_dir=env.cache_dir,
        output_uri=env.output_uri,
        progress_host=env.progress_host,
        progress_port=env.progress_port,
        termination_log=env.termination_log,
    )
    leave_process_group()
    return code


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
