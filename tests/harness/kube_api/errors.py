"""API failures in the shape Kubernetes sends them: a ``Status`` object and its HTTP code.

Why its own module: every part of the emulated API (store, patches, selectors, HTTP
handlers) fails the same way, and clients (kopf, the kubernetes client, kubectl) branch on
``code`` and ``reason`` (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/status/),
so one exception type carries both and renders itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.harness.kube_api.resources import ResourceType


class ApiError(Exception):
    """A request failure rendered as a ``Status`` object with the matching HTTP code."""

    REASONS = {
        400: "BadRequest",
        404: "NotFound",
        409: "AlreadyExists",
        410: "Expired",
        405: "MethodNotAllowed",
        422: "Invalid",
        415: "UnsupportedMediaType",
    }

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or self.REASONS.get(code, "InternalError")
        self.details = dict(details or {})

    def status(self) -> dict[str, Any]:
        """The ``Status`` object sent as the response body (or a watch's ERROR event)."""
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def not_found(res: ResourceType, name: str) -> ApiError:
    """The 404 for a missing object, worded as kube-apiserver words it."""
    what = f"{res.plural}.{res.group}" if res.group else res.plural
    return ApiError(
        404,
        f'{what} "{name}" not found',
        details={"name": name, "group": res.group, "kind": res.plural},
    )
