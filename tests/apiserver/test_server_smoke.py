"""Smoke test of the apiserver harness: a throwaway CRD goes through the real server.

Proves end to end what the CRD tests rely on: server-side defaulting, CEL validation with the
rule's message, the python client talking to the server, and kubectl rendering the server's
Table (printer columns).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client import ApiException

from tests.harness.apiserver import KubeApiServer

pytestmark = pytest.mark.apiserver

GROUP, VERSION, PLURAL = "smoke.test", "v1", "widgets"
CEL_MESSAGE = "spec.min must not exceed spec.max"

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {
            "plural": PLURAL,
            "singular": "widget",
            "kind": "Widget",
            "listKind": "WidgetList",
        },
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["min", "max"],
                                "properties": {
                                    "size": {"type": "integer", "default": 3},
                                    "min": {"type": "integer"},
                                    "max": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {"rule": "self.min <= self.max", "message": CEL_MESSAGE},
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def widget(name: str, **spec: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture(scope="module")
def widgets(kube_apiserver: KubeApiServer) -> Iterator[client.CustomObjectsApi]:
    kube_apiserver.install_crd(WIDGET_CRD)
    api_client: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kube_apiserver.kubeconfig_path)
    )
    with api_client:
        yield client.CustomObjectsApi(api_client)
    kube_apiserver.delete_crd(WIDGET_CRD["metadata"]["name"])


def test_default_is_applied(widgets: client.CustomObjectsApi) -> None:
    created = widgets.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, widget("defaulted", min=1, max=2)
    )
    assert isinstance(created, dict)
    assert created["spec"] == {"min": 1, "max": 2, "size": 3}


def test_cel_rule_refuses_with_its_message(widgets: client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as refused:
        widgets.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, widget("inverted", min=5, max=1)
        )
    assert refused.value.status == 422
    assert CEL_MESSAGE in str(refused.value.body)


def test_kubectl_shows_printer_column(
    kube_apiserver: KubeApiServer, kube_tools_bin: Path, widgets: client.CustomObjectsApi
) -> None:
    widgets.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, widget("sized", size=7, min=0, max=0)
    )
    result = subprocess.run(
        [
            str(kube_tools_bin / "kubectl"),
            "--kubeconfig",
            str(kube_apiserver.kubeconfig_path),
            "get",
            PLURAL,
            "sized",
        ],
        env=kube_apiserver.kubectl_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split()[:2] == ["NAME", "SIZE"]
    assert row.split()[:2] == ["sized", "7"]
