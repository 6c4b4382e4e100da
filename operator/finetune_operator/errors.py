"""Failures the operator tells apart, each with a CamelCase ``reason``.

The reason is what metrics count (``finetune_operator_errors_total{reason}``) and what a
condition or Event shows; the message names the object and what to do.
"""

from __future__ import annotations


class OperatorError(Exception):
    """Base of the operator's own failures."""

    reason = "OperatorError"


class ApiError(OperatorError):
    """The Kubernetes API answered with an error status."""

    reason = "ApiError"

    def __init__(self, status: int, message: str, *, api_reason: str = "") -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.api_reason = api_reason


class NotFound(ApiError):
    """404: the object does not exist."""

    reason = "NotFound"


class AlreadyExists(ApiError):
    """409 AlreadyExists: an object with that name exists already (a create was repeated)."""

    reason = "AlreadyExists"


class Conflict(ApiError):
    """409 Conflict: the object changed in between (resourceVersion mismatch)."""

    reason = "Conflict"


class OwnershipConflict(OperatorError):
    """The deterministic name is taken by an object this FineTuneJob does not own.

    Typical cause: a FineTuneJob deleted and re-created under the same name while the garbage
    collector still removes the old objects; retrying later resolves it.
    """

    reason = "NameConflict"
