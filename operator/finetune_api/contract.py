"""What the operator and a trainer process agree on: exit codes, paths, ports, variable names.

One copy for every side (docs/internals.md describes it): the operator renders these values
into the trainer pod (``finetune_operator.render``) and reads them back from it
(``observe``, ``progress``); the trainer reads its environment and exits with these codes
(``finetune_trainer``); ``ftj run`` starts the same trainer on a laptop with the same
variables. The module imports nothing but the standard library, so neither image needs the
other's packages to agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

# -- exit codes --------------------------------------------------------------------------------

EXIT_OK: Final = 0
# A failure a retry may fix (network, a crash): counts against the Job's backoffLimit.
EXIT_FAILED: Final = 1
# The input is wrong (bad data, an impossible spec, an output owned by another job): the Job's
# podFailurePolicy fails the Job at once on it
# (https://kubernetes.io/docs/concepts/workloads/controllers/job/#pod-failure-policy).
EXIT_INVALID_INPUT: Final = 42
# Stopped by SIGTERM (preemption, eviction, a deleted pod, a suspended Job) after saving and
# uploading a checkpoint: 128 + SIGTERM, as a shell reports it. The podFailurePolicy ignores it,
# so the replacement pod resumes without using up backoffLimit.
EXIT_STOPPED: Final = 143

# -- the container -----------------------------------------------------------------------------

CONTAINER_NAME: Final = "trainer"
TRAINER_MODULE: Final = "finetune_trainer"  # the pod runs ``python -m finetune_trainer``
PROGRESS_HOST: Final = "0.0.0.0"
PROGRESS_PORT: Final = 8080
PROGRESS_PORT_NAME: Final = "progress"
PROGRESS_PATH: Final = "/progress"
RENDEZVOUS_PORT: Final = 29500  # torchrun's c10d store on pod 0 of a multi-node job
# GET /progress as a long poll: the operator sends the ETag of the document it has in
# ``If-None-Match`` and ``Prefer: wait=N`` (RFC 7240 section 4.3); the trainer answers as soon as
# its progress differs, or after N seconds (at most PROGRESS_MAX_WAIT) with 304 Not Modified.
# A server that ignores both headers answers at once: a plain poll, as before.
PROGRESS_MAX_WAIT: Final = 60.0

# Phases the trainer reports in /progress and in the termination message, in run order.
TRAINER_PHASES: Final = ("Initializing", "Training", "Merging", "Uploading", "Succeeded", "Failed")

# -- paths inside the pod ----------------------------------------------------------------------

CONFIG_DIR: Final = "/etc/finetune"  # the job's ConfigMap, read-only
MANIFEST_KEY: Final = "job.json"
MANIFEST_PATH: Final = f"{CONFIG_DIR}/{MANIFEST_KEY}"
SCRATCH_DIR: Final = "/scratch"  # emptyDir (or an ephemeral volume): model, data, checkpoints
CACHE_DIR: Final = "/cache"  # the model-cache PVC, when spec.resources.modelCacheClaim names one
TMP_DIR: Final = "/tmp"
SHM_DIR: Final = "/dev/shm"
TERMINATION_LOG: Final = "/dev/termination-log"
# The kubelet keeps at most this many bytes of the termination message.
TERMINATION_MESSAGE_LIMIT: Final = 4096

# -- the runtime environment of a trainer process ----------------------------------------------

ENV_MANIFEST: Final = "FTJ_MANIFEST"
ENV_WORKDIR: Final = "FTJ_WORKDIR"
ENV_CACHE_DIR: Final = "FTJ_CACHE_DIR"
ENV_OUTPUT_URI: Final = "FTJ_OUTPUT_URI"
ENV_PROGRESS_HOST: Final = "FTJ_PROGRESS_HOST"
ENV_PROGRESS_PORT: Final = "FTJ_PROGRESS_PORT"
ENV_TERMINATION_LOG: Final = "FTJ_TERMINATION_LOG"

# Each variable with what it means and its default, for the docs.
RUNTIME_ENV_DOCS: Final[Mapping[str, str]] = {
    ENV_MANIFEST: (
        f"Path of the FineTuneJob as JSON (the operator mounts it at {MANIFEST_PATH}; "
        f"default {MANIFEST_PATH})."
    ),
    ENV_WORKDIR: (
        f"Scratch folder for the model, data and local checkpoints ({SCRATCH_DIR} in a pod; "
        "default: a new temporary folder)."
    ),
    ENV_CACHE_DIR: (
        f"Download cache keyed by URI and ETag ({CACHE_DIR} with a model-cache claim; "
        f"default: $FTJ_WORKDIR/cache)."
    ),
    ENV_OUTPUT_URI: "Publish here instead of spec.output.uri (ftj run --output; default unset).",
    ENV_PROGRESS_HOST: f"Address the progress server binds (default {PROGRESS_HOST}).",
    ENV_PROGRESS_PORT: (
        f"Port of GET /progress, /metrics and /healthz; 0 turns the server off "
        f"(default {PROGRESS_PORT})."
    ),
    ENV_TERMINATION_LOG: (
        f"Where the final JSON summary is written, skipped if not writable "
        f"(default {TERMINATION_LOG})."
    ),
}


@dataclass(frozen=True)
class TrainerEnvironment:
    """Where a trainer process finds its job and puts its results: the ``FTJ_*`` variables.

    The operator renders :meth:`to_env` into the pod, ``ftj run`` hands it to torchrun's
    workers, and the trainer reads it back with :meth:`from_env`. ``None`` leaves a variable
    unset, for the trainer's own default (a temporary workdir, ``<workdir>/cache``,
    ``spec.output.uri``).
    """

    manifest: str = MANIFEST_PATH
    workdir: str | None = None
    cache_dir: str | None = None
    output_uri: str | None = None
    progress_host: str = PROGRESS_HOST
    progress_port: int = PROGRESS_PORT
    termination_log: str = TERMINATION_LOG

    def to_env(self) -> dict[str, str]:
        """The variables, by name, in a fixed order; unset ones left out."""
        values = {
            ENV_MANIFEST: self.manifest,
            ENV_WORKDIR: self.workdir,
            ENV_CACHE_DIR: self.cache_dir,
            ENV_OUTPUT_URI: self.output_uri,
            ENV_PROGRESS_HOST: self.progress_host,
            ENV_PROGRESS_PORT: str(self.progress_port),
            ENV_TERMINATION_LOG: self.termination_log,
        }
        return {name: value for name, value in values.items() if value is not None}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TrainerEnvironment:
        """Read the variables; unset or empty ones take the defaults above.

        Raises ``ValueError`` naming the variable when ``FTJ_PROGRESS_PORT`` is not a number.
        """
        port = env.get(ENV_PROGRESS_PORT) or str(PROGRESS_PORT)
        try:
            progress_port = int(port)
        except ValueError:
            raise ValueError(f"{ENV_PROGRESS_PORT}={port!r}: expected a port number") from None
        return cls(
            manifest=env.get(ENV_MANIFEST) or MANIFEST_PATH,
            workdir=env.get(ENV_WORKDIR) or None,
            cache_dir=env.get(ENV_CACHE_DIR) or None,
            output_uri=env.get(ENV_OUTPUT_URI) or None,
            progress_host=env.get(ENV_PROGRESS_HOST) or PROGRESS_HOST,
            progress_port=progress_port,
            termination_log=env.get(ENV_TERMINATION_LOG) or TERMINATION_LOG,
        )


def standalone_torchrun_args(gpus: int) -> list[str]:
    """torchrun's arguments (after the program) that start ``gpus`` trainer workers on one
    node: a one-pod multi-GPU job's command, and ``ftj run``'s on a multi-GPU machine."""
    return ["--standalone", f"--nproc-per-node={gpus}", "-m", TRAINER_MODULE]


def prefer_wait(header: str | None) -> float:
    """Seconds asked for by a ``Prefer: wait=N`` header (RFC 7240), clipped to
    ``[0, PROGRESS_MAX_WAIT]``; 0 when absent or malformed (answer at once)."""
    for preference in (header or "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return min(max(float(value.strip().strip('"')), 0.0), PROGRESS_MAX_WAIT)
            except ValueError:
                return 0.0
    return 0.0
