"""The thin edge to the Kubernetes API: create, read, patch and list objects as plain dicts.

Built on the official client's configuration and transport (in-cluster ServiceAccount or
kubeconfig, TLS, token refresh) but without its typed models: the operator renders and reads
JSON dicts, and a round trip through generated models would drop fields newer than the
client. Calls are blocking; the kopf handlers run them in a worker thread.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes

from finetune_operator.errors import AlreadyExists, ApiError, Conflict, NotFound

Manifest = dict[str, Any]

PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Pod": "pods",
    "Event": "events",
    "Job": "jobs",
    "FineTuneJob": "finetunejobs",
}
FIELD_MANAGER = "finetune-operator"
REQUEST_TIMEOUT = 30.0


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    """REST path of a namespaced object (or its collection when ``name`` is None).

    https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-uris
    """
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


def load_client_config() -> kubernetes.client.Configuration:
    """In-cluster ServiceAccount credentials, else the kubeconfig (``KUBECONFIG``)."""
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)  # type: ignore[no-untyped-call]
    return config


class KubeClient:
    """Namespaced object CRUD over the Kubernetes REST API, with dicts in and out."""

    def __init__(self, config: kubernetes.client.Configuration | None = None) -> None:
        self._api = kubernetes.client.ApiClient(config or load_client_config())

    def close(self) -> None:
        """Release the connection pool."""
        self._api.close()  # type: ignore[no-untyped-call]

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> Manifest:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body, _ = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(
            method, url, header_params=headers, body=body, _request_timeout=REQUEST_TIMEOUT
        )
        response.read()  # type: ignore[no-untyped-call]
        text = response.data.decode() if response.data else ""
        status = int(response.status)
        if 200 <= status < 300:
            data = json.loads(text) if text else {}
            return data if isinstance(data, dict) else {}
        raise _error(status, text)

    def create(self, obj: Manifest) -> Manifest:
        """POST the object; AlreadyExists when its name is taken."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta["namespace"])
        return self._call("POST", path, obj, query=[("fieldManager", FIELD_MANAGER)])

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest:
        """GET one object; NotFound when it does not exist."""
        return self._call("GET", object_path(api_version, kind, namespace, name))

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        patch: Manifest,
        *,
        subresource: str | None = None,
    ) -> Manifest:
        """JSON merge patch (RFC 7386) of the object or of a subresource such as ``status``."""
        path = object_path(api_version, kind, namespace, name)
        if subresource:
            path = f"{path}/{subresource}"
        return self._call(
            "PATCH",
            path,
            patch,
            content_type="application/merge-patch+json",
            query=[("fieldManager", FIELD_MANAGER)],
        )


def _error(status: int, text: str) -> ApiError:
    try:
        payload = json.loads(text)
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    message = str(payload.get("message") or text[:200] or "no details")
    api_reason = str(payload.get("reason") or "")
    if status == 404:
        return NotFound(status, message, api_reason=api_reason)
    if status == 409 and api_reason == "AlreadyExists":
        return AlreadyExists(status, message, api_reason=api_reason)
    if status == 409:
        return Conflict(status, message, api_reason=api_reason)
    return ApiError(status, message, api_reason=api_reason)
