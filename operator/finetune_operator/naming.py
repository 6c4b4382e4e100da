"""Names and labels of the objects rendered for one FineTuneJob.

Names are a pure function of the FineTuneJob name, so a crashed and restarted operator finds
the objects it already created instead of creating twins: ``create`` answers 409 AlreadyExists
for the second attempt (https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-uniqueness).
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

PREFIX: Final = "ftj-"
# Indexed Job pods get the hostname ``<job name>-<index>``, a DNS label of at most 63 characters
# (https://kubernetes.io/docs/concepts/workloads/controllers/job/#completion-mode); with up to 512
# nodes the index takes 4 characters ("-511"), so names stop at 56.
MAX_NAME_LENGTH: Final = 56
MAX_LABEL_VALUE_LENGTH: Final = 63
HASH_LENGTH: Final = 8

JOB_LABEL: Final = "finetune.dev/job"
QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"
APP_NAME: Final = "finetune-trainer"
PART_OF: Final = "finetune-operator"
MANAGED_BY: Final = "finetune-operator"
COMPLETION_INDEX_ANNOTATION: Final = "batch.kubernetes.io/job-completion-index"

_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:HASH_LENGTH]


def _shorten(text: str, limit: int, original: str) -> str:
    """``text`` cut to ``limit`` with a hash of ``original`` at the end, so cuts never collide."""
    head = text[: limit - HASH_LENGTH - 1].rstrip("-.")
    return f"{head}-{_digest(original)}"


def resource_name(ftj_name: str) -> str:
    """Name of the Job, ConfigMap and Service of a FineTuneJob: ``ftj-<name>``.

    FineTuneJob names are DNS subdomains (up to 253 characters, dots allowed) but a Service
    name and an Indexed Job pod's hostname must be DNS-1035 labels, so dots become dashes and
    long names are cut, each time with a hash of the full name appended.
    """
    candidate = PREFIX + ftj_name
    if len(candidate) <= MAX_NAME_LENGTH and _DNS_1035_LABEL.match(candidate):
        return candidate
    return _shorten(candidate.replace(".", "-"), MAX_NAME_LENGTH, ftj_name)


def label_value(ftj_name: str) -> str:
    """The FineTuneJob name as a label value (at most 63 characters, hashed when longer)."""
    if len(ftj_name) <= MAX_LABEL_VALUE_LENGTH:
        return ftj_name
    return _shorten(ftj_name, MAX_LABEL_VALUE_LENGTH, ftj_name)


def labels(ftj_name: str, component: str) -> dict[str, str]:
    """Labels of every rendered object (``app.kubernetes.io/*`` plus ``finetune.dev/job``).

    See https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/.
    """
    value = label_value(ftj_name)
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/instance": value,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        JOB_LABEL: value,
    }


def selector_labels(ftj_name: str) -> dict[str, str]:
    """Labels that select the trainer pods of one FineTuneJob (the rendezvous Service uses them)."""
    return {JOB_LABEL: label_value(ftj_name), "app.kubernetes.io/component": "trainer"}
