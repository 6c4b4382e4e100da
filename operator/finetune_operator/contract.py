"""What the operator and the trainer pod agree on (``docs/internals.md``), as constants.

The operator image must not need the trainer package, so the values are restated here rather
than imported from ``finetune_trainer``; ``tests/unit/operator/test_contract.py`` fails when
the two sides drift apart.
"""

from __future__ import annotations

from typing import Final

# Exit code of an InvalidInput failure: the Job's podFailurePolicy fails the Job at once on it
# (https://kubernetes.io/docs/concepts/workloads/controllers/job/#pod-failure-policy).
EXIT_INVALID_INPUT: Final = 42

CONTAINER_NAME: Final = "trainer"
PROGRESS_PORT: Final = 8080
PROGRESS_PORT_NAME: Final = "progress"
PROGRESS_PATH: Final = "/progress"
RENDEZVOUS_PORT: Final = 29500

CONFIG_DIR: Final = "/etc/finetune"
MANIFEST_KEY: Final = "job.json"
MANIFEST_PATH: Final = f"{CONFIG_DIR}/{MANIFEST_KEY}"
SCRATCH_DIR: Final = "/scratch"
CACHE_DIR: Final = "/cache"
TMP_DIR: Final = "/tmp"
SHM_DIR: Final = "/dev/shm"
TERMINATION_LOG: Final = "/dev/termination-log"

# Phases the trainer reports in /progress and the termination message.
TRAINER_PHASES: Final = frozenset(
    {"Initializing", "Training", "Merging", "Uploading", "Succeeded", "Failed"}
)


def standalone_torchrun_args(gpus: int) -> list[str]:
    """torchrun's arguments (after the program) that start ``gpus`` trainer workers on one
    node: a one-pod multi-GPU job's command, and ``ftj run``'s on a multi-GPU machine."""
    return ["--standalone", f"--nproc-per-node={gpus}", "-m", "finetune_trainer"]
