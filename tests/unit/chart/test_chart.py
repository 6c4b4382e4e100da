"""The Helm chart: lint, render with every ci/ value set, schema-valid manifests, RBAC shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import tomllib
import yaml
from finetune_api.crd import render_crd_yaml

from tests.harness import pod_security
from tests.unit.chart.conftest import CHART, NAMESPACE, REPO, VALUE_SETS, Render, of_kind, run_helm

pytestmark = pytest.mark.unit

K8S_VERSION = "1.33.0"
# Kinds kubernetes_validate has no schema for: checked structurally below.
CUSTOM_KINDS = {"ServiceMonitor", "ClusterKopfPeering", "KopfPeering"}
ids = [p.name.removesuffix("-values.yaml") for p in VALUE_SETS]


def test_there_are_at_least_four_value_sets() -> None:
    assert {"default", "namespaced", "metrics", "custom-images"} <= set(ids)


def test_helm_lint_is_clean(helm: Path) -> None:
    done = run_helm(helm, "lint", str(CHART), "--strict")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", VALUE_SETS, ids=ids)
def test_lint_and_render_with_value_set(helm: Path, render: Render, values: Path) -> None:
    done = run_helm(helm, "lint", str(CHART), "--strict", "-f", str(values))
    assert done.returncode == 0, done.stdout + done.stderr
    objects = render(values)
    assert of_kind(objects, "Deployment") and of_kind(objects, "ServiceAccount")


@pytest.mark.parametrize("values", VALUE_SETS, ids=ids)
def test_every_manifest_validates_against_kubernetes_schemas(render: Render, values: Path) -> None:
    for obj in render(values):
        if obj["kind"] in CUSTOM_KINDS:
            _check_custom(obj)
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        labels = obj["metadata"].get("labels") or {}
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
        ):
            assert key in labels, f"{obj['kind']}/{obj['metadata']['name']} lacks label {key}"


def _check_custom(obj: dict[str, Any]) -> None:
    """Structure of the kinds without a published JSON schema."""
    name = obj["metadata"]["name"]
    assert name and len(name) <= 253
    if obj["kind"] == "ServiceMonitor":
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        spec = obj["spec"]
        assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
        assert spec["selector"]["matchLabels"]
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
            assert isinstance(endpoint["port"], str)
    else:
        assert obj["apiVersion"] == "kopf.dev/v1"
        assert ("namespace" in obj["metadata"]) == (obj["kind"] == "KopfPeering")
        assert set(obj) == {"apiVersion", "kind", "metadata"}


@pytest.mark.parametrize(
    "bad",
    [
        "replicaCount=two",
        "image.pullPolicy=Sometimes",
        "metrics.port=http",
        "watchNamespaces=ml-team",  # a string, not a list
        "peering.enabled=maybe",
        "unknownTopLevel=1",
        "trainer.gpuResourceName=gpu",
    ],
)
def test_values_schema_rejects_wrong_types(helm: Path, bad: str) -> None:
    done = run_helm(helm, "template", "x", str(CHART), "--set", bad)
    assert done.returncode != 0, f"{bad} was accepted"
    assert "at '" in done.stderr, done.stderr  # helm's schema error names the value's path


def test_schema_documents_every_value() -> None:
    """Every key of values.yaml is typed in values.schema.json, and the reverse."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        if isinstance(value, dict) and "properties" in node:
            assert set(value) <= set(node["properties"]), (
                f"{path}: untyped {set(value) - set(node['properties'])}"
            )
            for key, sub in value.items():
                walk(sub, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "values")
    assert set(schema["properties"]) - {"global"} == set(values)


def test_values_yaml_comments_every_top_level_value() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#")) and ":" in line:
            block = [line_ for line_ in lines[max(0, i - 3) : i] if line_.startswith("#")]
            nested = i + 1 < len(lines) and lines[i + 1].startswith("  ")
            assert block or nested, f"values.yaml: {line} has no comment"


def test_replicas_above_one_need_peering(helm: Path) -> None:
    done = run_helm(
        helm,
        "template",
        "x",
        str(CHART),
        "--set",
        "replicaCount=2",
        "--set",
        "peering.enabled=false",
    )
    assert done.returncode != 0 and "peering" in done.stderr


def test_crd_copy_is_ftj_crd_output() -> None:
    committed = (CHART / "crds" / "finetune.dev_finetunejobs.yaml").read_text()
    assert committed == render_crd_yaml(), "run: ftj crd --write ."


def test_chart_crds_are_valid_customresourcedefinitions() -> None:
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_default_image_tags_follow_app_version(render: Render) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    deployment = of_kind(render(), "Deployment")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"].rsplit(":", 1)[1] == chart["appVersion"]
    assert env["FTJ_TRAINER_IMAGE"].rsplit(":", 1)[1] == chart["appVersion"]
    dockerfile = (REPO / "operator" / "Dockerfile").read_text()
    assert f'org.opencontainers.image.version="{chart["appVersion"]}"' in dockerfile


def test_deployment_env_matches_operator_settings(render: Render) -> None:
    from finetune_operator.settings import ENV_DOCS, OperatorSettings

    container = of_kind(render(), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    unknown = {n for n in env if n.startswith("FTJ_")} - set(ENV_DOCS)
    assert not unknown, f"chart sets variables the operator doesn't read: {unknown}"
    settings = OperatorSettings.from_env({**env, "POD_NAME": "x"})
    assert settings.metrics_port == 9090
    port = container["livenessProbe"]["httpGet"]["port"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.liveness_endpoint == f"http://0.0.0.0:{ports[port]}/healthz"
    assert settings.peering and settings.watch_namespaces == ()


def test_namespaced_install_has_roles_per_namespace_and_no_cluster_role(render: Render) -> None:
    objects = render(CHART / "ci" / "namespaced-values.yaml")
    assert not of_kind(objects, "ClusterRole") and not of_kind(objects, "ClusterRoleBinding")
    assert {r["metadata"]["namespace"] for r in of_kind(objects, "Role")} == {"ml-team", "research"}
    assert {b["metadata"]["namespace"] for b in of_kind(objects, "RoleBinding")} == {
        "ml-team",
        "research",
    }
    peerings = of_kind(objects, "KopfPeering")
    assert {p["metadata"]["namespace"] for p in peerings} == {"ml-team", "research"}
    deployment = of_kind(objects, "Deployment")[0]
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["FTJ_WATCH_NAMESPACES"] == "ml-team,research"


@pytest.mark.parametrize("values", VALUE_SETS, ids=ids)
def test_rbac_is_least_privilege(render: Render, values: Path) -> None:
    objects = render(values)
    roles = of_kind(objects, "ClusterRole") + of_kind(objects, "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            assert "secrets" not in rule["resources"], "the operator must not read Secrets"
            assert not {
                "delete",
                "deletecollection",
                "update",
                "escalate",
                "bind",
                "impersonate",
            } & set(rule["verbs"])


@pytest.mark.parametrize("values", VALUE_SETS, ids=ids)
def test_operator_pod_meets_restricted_pod_security(render: Render, values: Path) -> None:
    for obj in render(values):
        if obj["kind"] in ("Deployment", "Pod"):
            assert pod_security.violations(obj) == [], obj["metadata"]["name"]


def test_helm_test_pod_meets_restricted_pod_security(helm: Path) -> None:
    done = run_helm(helm, "template", "x", str(CHART), "--namespace", NAMESPACE)
    pods = [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "Pod"]
    assert pods, "the chart has a helm test pod"
    for pod in pods:
        assert pod_security.violations(pod) == []


@pytest.mark.parametrize("nodes,gpus", [(1, 0), (1, 1), (2, 8)])
def test_trainer_pod_meets_restricted_pod_security(nodes: int, gpus: int) -> None:
    from finetune_api import parse_manifest
    from finetune_operator.render import render_objects
    from finetune_operator.settings import OperatorSettings

    from tests.cases.manifests import minimal_manifest

    manifest = minimal_manifest("pss")
    manifest["metadata"].update(namespace="ml-team", uid="0b6c1f9e-0000-4000-8000-000000000001")
    manifest["spec"]["resources"] = {"gpus": gpus, "nodes": nodes, "modelCacheClaim": "models"}
    manifest["spec"]["storage"] = {"s3": {"credentialsSecret": {"name": "s3-credentials"}}}
    rendered = render_objects(parse_manifest(manifest), OperatorSettings())
    assert pod_security.violations(rendered.job) == []
    kubernetes_validate.validate(rendered.job, K8S_VERSION, strict=True)


def test_network_policy_allows_trainer_progress_port(render: Render) -> None:
    from finetune_api import contract
    from finetune_operator import naming

    objects = render(CHART / "ci" / "namespaced-values.yaml")
    policies = {
        (p["metadata"]["namespace"], p["metadata"]["name"]): p
        for p in of_kind(objects, "NetworkPolicy")
    }
    operator_policy = policies[(NAMESPACE, "ftj-finetune-operator")]
    trainer_egress = [
        e
        for e in operator_policy["spec"]["egress"]
        if {"port": contract.PROGRESS_PORT, "protocol": "TCP"} in e["ports"]
    ]
    assert trainer_egress
    selector = trainer_egress[0]["to"][0]["podSelector"]["matchLabels"]
    trainer_labels = naming.labels("any", "trainer")
    assert selector.items() <= trainer_labels.items(), (
        "selector must match the operator's pod labels"
    )
    assert {ns for ns, _ in policies} == {NAMESPACE, "ml-team", "research"}
