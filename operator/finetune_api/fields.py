"""Patterns and field types the spec's models share (URIs, quantities, names, paths).

Split from :mod:`finetune_api.spec` so that the pod overrides (:mod:`finetune_api.pod`) and the
spec use one definition of each, without importing each other.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field

# Where models and data can come from: S3, a hub id, a file:// URI, or a plain path
# (a mounted volume in the cluster; relative to the manifest for `ftj run`).
SOURCE_URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|hf://[^/\s]+/[^/\s]+(/.*)?|file://.+|[^:\s][^:]*)$"
# Outputs can't go to the hub: only S3, file:// or a path.
OUTPUT_URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|file://.+|[^:\s][^:]*)$"
_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY_PATTERN = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# Absolute, no trailing slash: "below a mount" is then a plain prefix test (rules.volume_holds).
MOUNT_PATH_PATTERN = r"^(/[^/]+)+$"
CAPABILITY_PATTERN = r"^[A-Z][A-Z0-9_]*$"
_FREE_FORM: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}

SourceUri = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        pattern=SOURCE_URI_PATTERN,
        description=(
            "Where to read from: s3://bucket/key, hf://org/name, file:///path, or a plain path "
            "(a mounted volume; relative paths are resolved against the manifest's folder by "
            "`ftj run`)."
        ),
    ),
]


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, str) and not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: 8, 500m, 64Gi)")
    return value


_QUANTITY_FACTORS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "m": 10**-3,
}  # fmt: skip


def quantity_value(value: int | str) -> float:
    """A Kubernetes quantity as a plain number (``"20Gi"`` -> 21474836480.0, ``"1.5e9"``)."""
    if isinstance(value, int):
        return float(value)
    match = re.fullmatch(r"([+-]?[0-9.]+)([KMGTPE]i|[numkMGTPE])?((?:[eE][+-]?[0-9.]+)?)", value)
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: 8, 500m, 64Gi)")
    number, suffix, exponent = match.groups()
    factor = {"n": 10**-9, "u": 10**-6}.get(suffix or "", _QUANTITY_FACTORS.get(suffix or "", 1))
    return float(number + exponent) * factor


def _check_gpu_memory_budget(value: int | str | None) -> int | str | None:
    if value is not None and quantity_value(value) < 2**30:
        raise ValueError(
            f"{value!r} is less than 1Gi: spec.resources.gpuMemoryBudget is bytes of GPU memory "
            "per GPU, e.g. 20Gi"
        )
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    Field(
        json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN},
        description="A Kubernetes quantity, e.g. 8, 500m, 64Gi.",
    ),
]
