"""Issue 22 end to end: spec.pod shapes the real trainer's pod, data comes from a PVC, and S3
is reached without a credentials Secret, through the AWS SDK's web-identity path.

How close this gets to IRSA/EKS (the S3 server is moto):

* real: the operator renders ``spec.pod`` (service account, env, volumes, mounts, labels); the
  simulated kubelet mounts the PersistentVolumeClaim as a host folder and the Secret volume as
  files; the trainer (``python -m finetune_trainer``) runs with no AWS keys in its environment,
  so boto3's credential chain skips the environment and takes botocore's
  ``assume-role-with-web-identity`` provider: it reads the token file, calls STS
  ``AssumeRoleWithWebIdentity`` (moto's STS on the same endpoint) with the role ARN and the
  session name from ``spec.pod.env``, and signs every S3 request with the temporary keys;
* stand-ins: the token file is a Secret volume where EKS's pod identity webhook would inject a
  projected ServiceAccount token and the two variables; moto's STS checks neither the JWT's
  signature nor an OIDC provider or trust policy, and moto's S3 checks no signature or IAM
  policy. The harness has no mount namespaces, so the claim's mountPath is the host folder
  the simulated kubelet backs it with (the path in job.json is then the same in and out).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from typing import Any

import pytest

from tests.e2e.conftest import REPO, KubeEnv, wait_for
from tests.e2e.test_operator_e2e import (  # noqa: F401 (buckets: an autouse fixture)
    buckets,
    ftj,
    operator_and_pod_logs,
    status,
    verify_manifest,
)
from tests.harness.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

ROLE_ARN = "arn:aws:iam::123456789012:role/ftj-e2e-trainer"
SESSION_NAME = "ftj-e2e-issue-22"
TOKEN_DIR = "/var/run/secrets/eks.amazonaws.com/serviceaccount"


def _assumed_sessions(endpoint: str) -> list[str]:
    """Role session names moto's STS handed temporary credentials to."""
    with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=10) as answer:
        data = json.load(answer)
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            name = node.get("session_name")
            if isinstance(name, str):
                found.append(name)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data.get("sts", {}))
    return found


@pytest.mark.parametrize(
    "operator_env", [{"FTJ_TRAINER_COMMAND": f"{sys.executable} -m finetune_trainer"}]
)
def test_web_identity_s3_pvc_dataset_and_env(
    kube_env: KubeEnv, ns: str, operator: OperatorProcess
) -> None:
    if os.environ.get("FTJ_E2E_SKIP_REAL_TRAINER"):
        pytest.skip("FTJ_E2E_SKIP_REAL_TRAINER is set")
    pytest.importorskip("torch")
    # The claim's data, where the simulated kubelet backs PVC "team-data" of this namespace.
    claim_dir = kube_env.workdir / "pods" / "pvc" / ns / "team-data"
    (claim_dir / "sft").mkdir(parents=True)
    (claim_dir / "sft" / "identity.json").write_bytes(
        (REPO / "examples" / "quickstart" / "identity.json").read_bytes()
    )
    kube_env.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "team-data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        ns,
    )
    kube_env.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": "trainer-s3",
                "annotations": {"eks.amazonaws.com/role-arn": ROLE_ARN},
            },
        },
        ns,
    )
    kube_env.apply(  # stands in for the webhook's projected ServiceAccount token
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "web-identity-token"},
            "stringData": {
                "token": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0cmFpbmVyLXMzIn0.c2lnbmF0dXJl"
            },
        },
        ns,
    )
    body = ftj("web-identity", kube_env, ns)
    # The harness gives every pod fallback static keys; this job's pods get none, so the only
    # way to S3 is the web identity below (an empty variable is no credential for botocore).
    kube_env.simulator.set_pod_env(
        ns, {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, job="web-identity"
    )
    mount = str(claim_dir)
    body["spec"].update(
        {
            "datasets": [
                {
                    "uri": f"{mount}/sft/identity.json",
                    "format": "alpaca",
                    "variables": {"name": "Quokka", "author": "the FineTune Operator team"},
                }
            ],
            "template": {"name": "qwen3"},
            "training": {
                "maxSteps": 4,
                "learningRate": 0.005,
                "batchSize": 4,
                "cutoffLength": 128,
                "precision": "fp32",
                "saveSteps": 2,
                "loggingSteps": 1,
            },
            "storage": {"s3": {"endpoint": kube_env.s3.endpoint_url, "pathStyle": True}},
            "pod": {
                "serviceAccountName": "trainer-s3",
                "env": [
                    {"name": "AWS_ROLE_ARN", "value": ROLE_ARN},
                    {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": f"{TOKEN_DIR}/token"},
                    {"name": "AWS_ROLE_SESSION_NAME", "value": SESSION_NAME},
                ],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "team-data"}},
                    {"name": "aws-iam-token", "secret": {"secretName": "web-identity-token"}},
                ],
                "volumeMounts": [
                    {"name": "data", "mountPath": mount, "readOnly": True},
                    {"name": "aws-iam-token", "mountPath": TOKEN_DIR, "readOnly": True},
                ],
                "labels": {"team": "nlp"},
            },
        }
    )
    kube_env.apply(body, ns)
    done = wait_for(
        lambda: (lambda s: s if s.get("phase") in ("Succeeded", "Failed") else None)(
            status(kube_env, ns, "web-identity")
        ),
        timeout=400,
        interval=1,
        what="web-identity finished",
        details=lambda: operator_and_pod_logs(kube_env, ns, operator),
    )
    assert done["phase"] == "Succeeded", done
    # The pod is the one spec.pod asked for.
    (pod,) = kube_env.gateway.objects("pods", ns)
    assert pod["spec"]["serviceAccountName"] == "trainer-s3"
    assert pod["metadata"]["labels"]["team"] == "nlp"
    env = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
    assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    # The trainer saw spec.pod.env: botocore took the session name from it for STS, and the
    # model and the output went through the temporary credentials STS returned.
    assert SESSION_NAME in _assumed_sessions(kube_env.s3.endpoint_url)
    manifest = verify_manifest(kube_env, done["artifacts"]["manifest"])
    (dataset,) = manifest["lineage"]["datasets"]
    assert dataset["uri"].endswith("/sft/identity.json")  # read from the claim
    assert dataset["examples"] > 0
