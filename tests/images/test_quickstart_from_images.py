"""The quickstart the way a platform team runs it: chart → operator image → trainer image.

``kubectl apply`` of the FineTuneJob the kind tier applies (``run-kind-e2e.sh --print-job``:
``examples/quickstart.yaml`` with its model and data in S3), on CPU here. The operator,
installed from the chart and running from its image with its ServiceAccount, renders the Job;
the trainer, from its image as uid 1000 on a read-only root, pulls the tiny model and data from
the S3 server, trains, merges and publishes. The user then sees Training with progress and
Succeeded in ``kubectl get ftj``, downloads the artifacts with ``ftj artifacts --download``
(every checksum verified) and asks the merged model who it is. A malformed dataset ends
``Failed`` / ``InvalidInput`` naming the file and the line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import REPO, KubeEnv, wait_for
from tests.images.conftest import JOB_NAMESPACE, KIND_SCRIPT, S3_KEYS, S3_SECRET, TRAINER_IMAGE

pytestmark = pytest.mark.images

QUICKSTART = REPO / "examples" / "quickstart.yaml"
RUN = f"image-tier-{uuid.uuid4().hex[:6]}"  # this run's output prefix
BAD_DATA = b'{"instruction": "hi", "output": "hello"}\n{"instruction": "a", "output": "b"}\n{"instruction": "broken", "output": \n'  # noqa: E501


def upload_quickstart_inputs(cluster: KubeEnv) -> None:
    """The tiny model and the data in S3, where a cluster's trainer finds them."""
    client = cluster.s3.client()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in ("models", "datasets", "artifacts"):
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
    for path in (REPO / "examples" / "quickstart" / "tiny-qwen3").iterdir():
        client.upload_file(str(path), "models", f"tiny-qwen3/{path.name}")
    client.upload_file(
        str(REPO / "examples" / "quickstart" / "identity.json"), "datasets", "identity.json"
    )
    client.put_object(Bucket="datasets", Key="broken.jsonl", Body=BAD_DATA)


def quickstart_on_s3(name: str, dataset: str = "s3://datasets/identity.json") -> dict[str, Any]:
    """The kind tier's FineTuneJob (the quickstart in S3, credentials from a Secret) on CPU."""
    printed = subprocess.run(
        ["bash", str(KIND_SCRIPT), "--print-job"], capture_output=True, text=True, check=True
    ).stdout
    body = dict(yaml.safe_load(printed))
    expected = yaml.safe_load(QUICKSTART.read_text())["spec"]
    assert body["spec"]["training"] == expected["training"], "the kind job drifted from examples/"
    body["metadata"] = {"name": name}
    spec = body["spec"]
    spec["datasets"][0]["uri"] = dataset
    # moto keeps one store per process: the e2e tier's jobs wrote (and own) s3://artifacts/<name>
    spec["output"]["uri"] = f"s3://artifacts/{RUN}/{name}"
    spec["resources"]["gpus"] = 0  # the same job on a CPU node
    assert spec["storage"]["s3"]["credentialsSecret"]["name"] == S3_SECRET
    return body


@pytest.fixture(scope="module")
def ml_team(image_cluster: KubeEnv, chart_operator: str) -> str:
    """The operator's watched namespace with the S3 credentials Secret and the inputs."""
    ns = JOB_NAMESPACE
    upload_quickstart_inputs(image_cluster)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": S3_SECRET},
        "stringData": S3_KEYS,
    }
    image_cluster.apply(secret, ns)
    return ns


def status(cluster: KubeEnv, ns: str, name: str) -> dict[str, Any]:
    return dict(cluster.kubectl_json("get", "ftj", name, "-n", ns).get("status") or {})


def pods_report(cluster: KubeEnv, ns: str) -> str:
    out = []
    for pod in cluster.gateway.objects("pods", ns):
        name = pod["metadata"]["name"]
        out.append(f"--- {name}: {json.dumps(pod.get('status'))[:1500]}")
        out.append(cluster.simulator.pod_log(name, ns)[-3000:])
    for pod in cluster.gateway.objects("pods", "finetune-system"):
        name = pod["metadata"]["name"]
        out.append(f"--- operator {name}:\n{cluster.simulator.pod_log(name, 'finetune-system')}")
    return "\n".join(out)[-12000:]


def test_quickstart_from_the_images_succeeds_and_learns(
    image_cluster: KubeEnv, ml_team: str, tmp_path: Path
) -> None:
    cluster, ns = image_cluster, ml_team
    cluster.apply(quickstart_on_s3("quickstart"), ns)
    tables: list[str] = []

    def finished() -> dict[str, Any] | None:
        table = cluster.kubectl("get", "ftj", "-n", ns).stdout
        if not tables or table != tables[-1]:
            tables.append(table)
        s = status(cluster, ns, "quickstart")
        return s if s.get("phase") in ("Succeeded", "Failed") else None

    done = wait_for(
        finished,
        timeout=600,
        interval=1,
        what="the quickstart finished",
        details=lambda: pods_report(cluster, ns),
    )
    print("\n".join(tables))
    assert done["phase"] == "Succeeded", f"{done}\n{pods_report(cluster, ns)}"
    # The user saw it train, with progress, before it succeeded.
    training_rows = [t for t in tables if " Training " in t and "/150 (" in t]
    assert training_rows, "\n".join(tables)

    # The trainer pod really ran the trainer image as the rendered pod says.
    pods = cluster.gateway.objects("pods", ns)
    assert pods and all(p["spec"]["containers"][0]["image"] == TRAINER_IMAGE for p in pods)

    target = tmp_path / "result"
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "AWS_ENDPOINT_URL": cluster.s3.endpoint_url,
        "AWS_DEFAULT_REGION": "us-east-1",
        **S3_KEYS,
    }
    got = subprocess.run(
        [sys.executable, "-m", "finetune_cli.main", "artifacts", "quickstart", "-n", ns,
         "--download", str(target)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert got.returncode == 0, got.stdout + got.stderr
    assert f"verified against {target / 'MANIFEST.json'}" in got.stderr, got.stderr

    from tests.e2e.trainer.test_trainer_runs import greedy_answer

    answer = greedy_answer(target / "merged", "Who are you?")
    print(f"merged model from the images: Who are you? → {answer!r}")
    assert "Quokka" in answer


def test_malformed_dataset_fails_invalid_input_naming_file_and_line(
    image_cluster: KubeEnv, ml_team: str
) -> None:
    cluster, ns = image_cluster, ml_team
    cluster.apply(quickstart_on_s3("broken-data", "s3://datasets/broken.jsonl"), ns)
    done = wait_for(
        lambda: (lambda s: s if s.get("phase") in ("Succeeded", "Failed") else None)(
            status(cluster, ns, "broken-data")
        ),
        timeout=300,
        interval=1,
        what="broken-data finished",
        details=lambda: pods_report(cluster, ns),
    )
    assert done["phase"] == "Failed", done
    failed = [c for c in done["conditions"] if c.get("reason") == "InvalidInput"]
    assert failed, done["conditions"]
    # The field, the user's own URI (not the pod's local copy) and the line.
    assert "spec.datasets[0] s3://datasets/broken.jsonl, line 3" in failed[0]["message"], failed
    # Exit 42 is not retried: exactly one trainer pod ran.
    trainer_pods = [p for p in cluster.gateway.objects("pods", ns) if "broken-data" in str(p)]
    assert len(trainer_pods) == 1, [p["metadata"]["name"] for p in trainer_pods]
