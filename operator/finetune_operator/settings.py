"""Operator configuration, read once from environment variables.

The operator has exactly one entry point (``python -m finetune_operator`` or
``kopf run -m finetune_operator.main``) and no config file: the Helm chart sets these variables
on the Deployment, the e2e harness sets them on the process. Every variable is listed in
:data:`ENV_DOCS` with its default; ``OperatorSettings.from_env`` refuses malformed values with
a message that names the variable.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

DEFAULT_TRAINER_IMAGE: Final = "ghcr.io/finetune-dev/finetune-trainer:0.1.0"
API_DEFAULT_GPU_RESOURCE: Final = "nvidia.com/gpu"

ENV_DOCS: Final[dict[str, str]] = {
    "FTJ_TRAINER_IMAGE": (
        f"Trainer image for specs without resources.image (default {DEFAULT_TRAINER_IMAGE})."
    ),
    "FTJ_TRAINER_IMAGE_PULL_POLICY": (
        "imagePullPolicy of trainer containers: Always, IfNotPresent, Never (default IfNotPresent)."
    ),
    "FTJ_TRAINER_COMMAND": (
        "Replaces the trainer container's command (shell words, e.g. "
        "'python -m finetune_trainer'); empty: python -m finetune_trainer, or torchrun for "
        "several GPUs/nodes."
    ),
    "FTJ_GPU_RESOURCE_NAME": (
        "Cluster default GPU resource name: replaces the API default nvidia.com/gpu in specs "
        "(default nvidia.com/gpu)."
    ),
    "FTJ_S3_ENDPOINT": (
        "S3 endpoint written into the trainer's job.json when the spec has none (default: none)."
    ),
    "FTJ_SCRATCH_STORAGE_CLASS": (
        "When set, /scratch is a generic ephemeral volume (a PVC of this StorageClass, "
        "resources.scratchSize) instead of an emptyDir (default: emptyDir)."
    ),
    "FTJ_ALLOWED_CAPABILITIES": (
        "Comma-separated Linux capabilities FineTuneJobs may add to trainer containers with "
        "spec.pod.capabilities, e.g. IPC_LOCK for RDMA (default: none; a job asking for "
        "another fails with CapabilityNotAllowed)."
    ),
    "FTJ_GPU_HOUR_PRICE": (
        "Price of one GPU-hour; when set, status.cost shows gpuHours x this price "
        "(default: none, no cost shown)."
    ),
    "FTJ_GPU_HOUR_CURRENCY": "Currency of FTJ_GPU_HOUR_PRICE, e.g. USD or EUR (default USD).",
    "FTJ_WATCH_NAMESPACES": (
        "Comma-separated namespaces to watch; empty: all namespaces (default empty)."
    ),
    "FTJ_PROGRESS_POLL_SECONDS": "Interval of GET /progress on each running trainer (default 10).",
    "FTJ_PROGRESS_TIMEOUT_SECONDS": "Timeout of one GET /progress (default 2).",
    "FTJ_STATUS_MIN_INTERVAL_SECONDS": (
        "Least time between two progress-only status writes of one job (default 10); "
        "phase and condition changes are written at once."
    ),
    "FTJ_METRICS_PORT": "Port of the Prometheus /metrics endpoint; 0 turns it off (default 9090).",
    "FTJ_LIVENESS_ENDPOINT": (
        "kopf liveness endpoint (default http://0.0.0.0:8081/healthz; empty: off)."
    ),
    "FTJ_PEERING": "kopf peering name; empty: standalone, no peering (default empty).",
    "FTJ_PEERING_PRIORITY": (
        "Priority of this replica in the peering; default: derived from POD_NAME/HOSTNAME so "
        "that every replica has a distinct one."
    ),
    "FTJ_LOG_LEVEL": "DEBUG, INFO, WARNING or ERROR (default INFO).",
    "FTJ_EVENT_LEVEL": (
        "Least severity of operator log lines posted as Kubernetes Events (default WARNING)."
    ),
}


class SettingsError(ValueError):
    """An environment variable holds a value the operator can't use."""

    reason = "InvalidSettings"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number of seconds") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def _price(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a price such as 2.49") from None
    if not value >= 0 or value == float("inf"):
        raise SettingsError(f"{name}={raw!r}: must be a finite number, at least 0")
    return value


def _capabilities(raw: str) -> tuple[str, ...]:
    """``IPC_LOCK, cap_sys_nice`` -> ("IPC_LOCK", "SYS_NICE"): the names a pod spec uses."""
    names = []
    for item in raw.split(","):
        name = item.strip().upper().removeprefix("CAP_")
        if not name:
            continue
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            raise SettingsError(
                f"FTJ_ALLOWED_CAPABILITIES={raw!r}: {item.strip()!r} is not a capability name "
                "(e.g. IPC_LOCK)"
            )
        names.append(name)
    return tuple(names)


def default_priority(identity: str) -> int:
    """A stable peering priority from the replica's name (pod name hash), in [1, 2**31)."""
    return int(hashlib.sha256(identity.encode()).hexdigest()[:8], 16) % (2**31 - 1) + 1


@dataclass(frozen=True)
class OperatorSettings:
    """Everything the operator can be told, with its defaults. See :data:`ENV_DOCS`."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    trainer_image_pull_policy: str = "IfNotPresent"
    trainer_command: tuple[str, ...] = ()
    gpu_resource_name: str = API_DEFAULT_GPU_RESOURCE
    s3_endpoint: str | None = None
    scratch_storage_class: str | None = None
    allowed_capabilities: tuple[str, ...] = ()
    gpu_hour_price: float | None = None
    gpu_hour_currency: str = "USD"
    watch_namespaces: tuple[str, ...] = ()
    progress_poll_seconds: float = 10.0
    progress_timeout_seconds: float = 2.0
    status_min_interval_seconds: float = 10.0
    metrics_port: int = 9090
    liveness_endpoint: str | None = "http://0.0.0.0:8081/healthz"
    peering: str | None = None
    peering_priority: int = field(default=1)
    log_level: str = "INFO"
    event_level: str = "WARNING"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """Read the settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        pull_policy = env.get("FTJ_TRAINER_IMAGE_PULL_POLICY", "").strip() or "IfNotPresent"
        if pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise SettingsError(
                f"FTJ_TRAINER_IMAGE_PULL_POLICY={pull_policy!r}: "
                "expected Always, IfNotPresent or Never"
            )
        levels = ("DEBUG", "INFO", "WARNING", "ERROR")
        log_level = env.get("FTJ_LOG_LEVEL", "").strip().upper() or "INFO"
        event_level = env.get("FTJ_EVENT_LEVEL", "").strip().upper() or "WARNING"
        for name, level in (("FTJ_LOG_LEVEL", log_level), ("FTJ_EVENT_LEVEL", event_level)):
            if level not in levels:
                raise SettingsError(f"{name}={level!r}: expected one of {', '.join(levels)}")
        endpoint = env.get("FTJ_S3_ENDPOINT", "").strip() or None
        if endpoint and not endpoint.startswith(("http://", "https://")):
            raise SettingsError(f"FTJ_S3_ENDPOINT={endpoint!r}: expected an http(s):// URL")
        currency = env.get("FTJ_GPU_HOUR_CURRENCY", "").strip() or "USD"
        if not re.fullmatch(r"[A-Za-z]{1,16}", currency):
            raise SettingsError(
                f"FTJ_GPU_HOUR_CURRENCY={currency!r}: expected a currency code such as USD"
            )
        identity = env.get("POD_NAME") or env.get("HOSTNAME") or "finetune-operator"
        liveness = env.get("FTJ_LIVENESS_ENDPOINT")
        return cls(
            trainer_image=env.get("FTJ_TRAINER_IMAGE", "").strip() or DEFAULT_TRAINER_IMAGE,
            trainer_image_pull_policy=pull_policy,
            trainer_command=tuple(shlex.split(env.get("FTJ_TRAINER_COMMAND", ""))),
            gpu_resource_name=env.get("FTJ_GPU_RESOURCE_NAME", "").strip()
            or API_DEFAULT_GPU_RESOURCE,
            s3_endpoint=endpoint,
            scratch_storage_class=env.get("FTJ_SCRATCH_STORAGE_CLASS", "").strip() or None,
            allowed_capabilities=_capabilities(env.get("FTJ_ALLOWED_CAPABILITIES", "")),
            gpu_hour_price=_price(env, "FTJ_GPU_HOUR_PRICE"),
            gpu_hour_currency=currency,
            watch_namespaces=tuple(
                ns.strip() for ns in env.get("FTJ_WATCH_NAMESPACES", "").split(",") if ns.strip()
            ),
            progress_poll_seconds=_float(env, "FTJ_PROGRESS_POLL_SECONDS", 10.0, 1.0),
            progress_timeout_seconds=_float(env, "FTJ_PROGRESS_TIMEOUT_SECONDS", 2.0, 0.1),
            status_min_interval_seconds=_float(env, "FTJ_STATUS_MIN_INTERVAL_SECONDS", 10.0, 0.0),
            metrics_port=_int(env, "FTJ_METRICS_PORT", 9090),
            liveness_endpoint=(
                "http://0.0.0.0:8081/healthz" if liveness is None else liveness.strip() or None
            ),
            peering=env.get("FTJ_PEERING", "").strip() or None,
            peering_priority=_int(
                env, "FTJ_PEERING_PRIORITY", default_priority(identity), minimum=0
            ),
            log_level=log_level,
            event_level=event_level,
        )
