"""Self-tests of the e2e harness: the fake cluster behaves as the operator will rely on.

No operator here: each test drives the gateway with the real kubectl (or raw HTTP) and the
simulator with the fake trainer, and asserts what Kubernetes would show.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml

from tests.e2e.conftest import FAKE_TRAINER, REPO, KubeEnv, wait_for
from tests.harness.cluster_tls import issue_server_cert
from tests.harness.kube_api import KubeGateway

pytestmark = pytest.mark.e2e


def fake_trainer_job(
    name: str,
    *,
    steps: int = 10,
    step_seconds: float = 0.05,
    exit_code: int = 0,
    backoff_limit: int = 3,
    extra_spec: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """A ConfigMap with a manifest + a Job running the fake trainer, shaped like ours."""
    manifest = {
        "metadata": {
            "name": name,
            "annotations": {
                "fake-trainer.finetune.dev/step-seconds": str(step_seconds),
                "fake-trainer.finetune.dev/exit-code": str(exit_code),
            },
        },
        "spec": {
            "training": {"maxSteps": steps, "saveSteps": max(steps // 2, 1)},
            "output": {"uri": "/scratch/out"},
        },
    }
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-spec"},
        "data": {"job.json": json.dumps(manifest)},
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": "trainer",
                            "operator": "In",
                            "values": [42],
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {
                "metadata": {"labels": {"app": "fake-trainer"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "trainer:test",
                            "command": ["python", str(FAKE_TRAINER)],
                            "env": [
                                {"name": "FTJ_MANIFEST", "value": "/etc/finetune/job.json"},
                                {"name": "FTJ_WORKDIR", "value": "/scratch"},
                                {"name": "FTJ_TERMINATION_LOG", "value": "/dev/termination-log"},
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                            ],
                            "volumeMounts": [
                                {"name": "spec", "mountPath": "/etc/finetune"},
                                {"name": "scratch", "mountPath": "/scratch"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "spec", "configMap": {"name": f"{name}-spec"}},
                        {"name": "scratch", "emptyDir": {}},
                    ],
                },
            },
            **(extra_spec or {}),
        },
    }
    return [config, job]


def cluster_quickstart() -> dict[str, Any]:
    """examples/quickstart.yaml as a cluster takes it: its local paths (fine for ``ftj run``)
    moved to S3, since admission refuses a local output no durable volume holds."""
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    body["spec"]["model"]["uri"] = "s3://models/tiny-qwen3"
    body["spec"]["datasets"][0]["uri"] = "s3://datasets/identity.json"
    body["spec"]["output"]["uri"] = "s3://artifacts/quickstart"
    return body


def apply_all(kube_env: KubeEnv, ns: str, docs: list[dict[str, Any]]) -> None:
    kube_env.apply(yaml.safe_dump_all(docs), ns)


def job_condition(kube_env: KubeEnv, ns: str, name: str) -> dict[str, Any] | None:
    job = kube_env.kubectl_json("get", "job", name, "-n", ns)
    for cond in job.get("status", {}).get("conditions", []):
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return {**cond, "job": job}
    return None


def pods_of(kube_env: KubeEnv, ns: str, job: str) -> list[dict[str, Any]]:
    return kube_env.kubectl_json("get", "pods", "-n", ns, "-l", f"job-name={job}")["items"]


# --------------------------------------------------------------------------------------------


def test_kubectl_apply_lands_in_the_real_api_server(kube_env: KubeEnv, ns: str) -> None:
    kube_env.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "data"}, "data": {"a": "1"}},
        ns,
    )
    kube_env.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "data"}, "data": {"a": "2"}},
        ns,
    )  # second apply: a patch of an existing object
    assert kube_env.kubectl_json("get", "cm", "data", "-n", ns)["data"] == {"a": "2"}

    quickstart = cluster_quickstart()
    out = kube_env.apply(quickstart, ns)
    assert "finetunejob.finetune.dev/quickstart created" in out
    # Stored by the real server: defaults applied by its structural schema, and Table output.
    code, stored = kube_env.apiserver.request(
        "GET", f"/apis/finetune.dev/v1alpha1/namespaces/{ns}/finetunejobs/quickstart"
    )
    assert code == 200, stored
    assert stored["spec"]["training"]["maxSteps"] == 150
    table = kube_env.kubectl("get", "ftj", "-n", ns).stdout
    assert table.split()[:6] == ["NAME", "PHASE", "PROGRESS", "LOSS", "ETA", "MODEL"]
    assert "quickstart" in table

    invalid = cluster_quickstart()
    invalid["metadata"]["name"] = "both-epochs-and-steps"
    invalid["spec"]["training"]["epochs"] = 2
    result = kube_env.kubectl(
        "apply", "-n", ns, "-f", "-", input=yaml.safe_dump(invalid), check=False
    )
    assert result.returncode != 0
    assert "set exactly one of spec.training.epochs or spec.training.maxSteps" in result.stderr
    assert (
        kube_env.apiserver.request(
            "GET", f"/apis/finetune.dev/v1alpha1/namespaces/{ns}/finetunejobs/both-epochs-and-steps"
        )[0]
        == 404
    )


def test_fake_trainer_job_completes_with_progress_and_message(kube_env: KubeEnv, ns: str) -> None:
    apply_all(kube_env, ns, fake_trainer_job("ok", steps=100, step_seconds=0.1))
    pod = wait_for(
        lambda: next(
            (p for p in pods_of(kube_env, ns, "ok") if p["status"].get("phase") == "Running"), None
        ),
        what="a running pod",
    )
    assert pod["metadata"]["name"].startswith("ok-")
    assert pod["metadata"]["labels"]["job-name"] == "ok"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
    ip = pod["status"]["podIP"]
    assert ip.startswith("127.0.") and ip != "127.0.0.1"

    def progress() -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://{ip}:8080/progress", timeout=1) as resp:
                body = json.loads(resp.read())
                return body if body.get("step") else None
        except OSError:
            return None

    assert wait_for(progress, what="/progress on the pod IP")["phase"] == "Training"

    done = wait_for(lambda: job_condition(kube_env, ns, "ok"), what="Job finished")
    assert done["type"] == "Complete", done
    assert done["job"]["status"]["succeeded"] == 1
    final = pods_of(kube_env, ns, "ok")[0]
    terminated = final["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    summary = json.loads(terminated["message"])
    assert summary["phase"] == "Succeeded" and summary["artifacts"]["manifest"].endswith(
        "MANIFEST.json"
    )
    assert final["status"]["phase"] == "Succeeded"


def test_exit_42_fails_the_job_by_pod_failure_policy_without_retry(
    kube_env: KubeEnv, ns: str
) -> None:
    apply_all(kube_env, ns, fake_trainer_job("bad", exit_code=42, backoff_limit=5))
    done = wait_for(lambda: job_condition(kube_env, ns, "bad"), what="Job finished")
    assert done["type"] == "Failed" and done["reason"] == "PodFailurePolicy", done
    assert "exit code 42 matching FailJob rule at index 0" in done["message"]
    pods = pods_of(kube_env, ns, "bad")
    assert len(pods) == 1  # no retry
    terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 42
    assert json.loads(terminated["message"])["reason"] == "InvalidInput"


def test_crash_retries_until_backoff_limit(kube_env: KubeEnv, ns: str) -> None:
    apply_all(kube_env, ns, fake_trainer_job("crash", exit_code=1, backoff_limit=1, steps=2))
    done = wait_for(lambda: job_condition(kube_env, ns, "crash"), what="Job finished")
    assert done["type"] == "Failed" and done["reason"] == "BackoffLimitExceeded", done
    assert done["job"]["status"]["failed"] == 2
    assert len(pods_of(kube_env, ns, "crash")) == 2


def test_eviction_does_not_count_against_backoff_limit(kube_env: KubeEnv, ns: str) -> None:
    apply_all(
        kube_env, ns, fake_trainer_job("evicted", steps=40, step_seconds=0.1, backoff_limit=0)
    )
    first = wait_for(
        lambda: next(
            (p for p in pods_of(kube_env, ns, "evicted") if p["status"].get("phase") == "Running"),
            None,
        ),
        what="a running pod",
    )
    kube_env.simulator.evict_pod(first["metadata"]["name"], ns)
    done = wait_for(lambda: job_condition(kube_env, ns, "evicted"), timeout=60, what="Job finished")
    assert done["type"] == "Complete", done
    assert done["job"]["status"].get("failed", 0) == 0
    pods = {p["metadata"]["name"]: p for p in pods_of(kube_env, ns, "evicted")}
    evicted = pods[first["metadata"]["name"]]
    assert any(c["type"] == "DisruptionTarget" for c in evicted["status"]["conditions"])
    assert len(pods) == 2


def test_kubectl_logs_and_follow(kube_env: KubeEnv, ns: str) -> None:
    apply_all(kube_env, ns, fake_trainer_job("logs", steps=20, step_seconds=0.05))
    follow = kube_env.kubectl("logs", "-f", "job/logs", "-n", ns, timeout=60, check=False)
    wait_for(lambda: job_condition(kube_env, ns, "logs"), what="Job finished")
    pod = pods_of(kube_env, ns, "logs")[0]["metadata"]["name"]
    out = kube_env.kubectl("logs", pod, "-n", ns).stdout
    assert '"event": "started"' in out and '"event": "finished"' in out
    assert '"event": "started"' in follow.stdout, follow.stderr
    tail = kube_env.kubectl("logs", pod, "-n", ns, "--tail", "1").stdout
    assert tail.strip().splitlines() == [out.strip().splitlines()[-1]]


def test_deleting_owners_garbage_collects_dependents(kube_env: KubeEnv, ns: str) -> None:
    # A FineTuneJob on the real server owning emulated objects: deleting it collects them.
    quickstart = cluster_quickstart()
    kube_env.apply(quickstart, ns)
    owner = kube_env.kubectl_json("get", "ftj", "quickstart", "-n", ns)
    ref = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "name": "quickstart",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    docs = fake_trainer_job("owned", steps=200, step_seconds=0.1)
    for doc in docs:
        doc["metadata"]["ownerReferences"] = [ref]
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "owned", "ownerReferences": [ref]},
            "spec": {"clusterIP": "None", "selector": {"job-name": "owned"}},
        }
    )
    apply_all(kube_env, ns, docs)
    pod = wait_for(
        lambda: next(
            (p for p in pods_of(kube_env, ns, "owned") if p["status"].get("phase") == "Running"),
            None,
        ),
        what="a running pod",
    )
    kube_env.kubectl("delete", "ftj", "quickstart", "-n", ns, "--wait=false")

    def gone() -> bool:
        names = kube_env.kubectl("get", "jobs,cm,svc,pods", "-n", ns, "-o", "name").stdout
        return not names.strip()

    wait_for(
        gone,
        timeout=20,
        what="dependents collected",
        details=lambda: kube_env.kubectl("get", "all,cm", "-n", ns).stdout,
    )
    wait_for(
        lambda: pod["metadata"]["name"] not in kube_env.simulator.running_pods(ns),
        what="pod process stopped",
    )

    # Deleting a Job the way kubectl does (propagationPolicy=Background) removes its pods.
    apply_all(kube_env, ns, fake_trainer_job("direct", steps=200, step_seconds=0.1))
    wait_for(lambda: pods_of(kube_env, ns, "direct"), what="a pod")
    kube_env.kubectl("delete", "job", "direct", "-n", ns)
    wait_for(lambda: not pods_of(kube_env, ns, "direct"), what="pods of the deleted Job gone")


def test_watch_streams_deliver_events(kube_env: KubeEnv, ns: str) -> None:
    def watch(path: str, count: int, out: list[dict[str, Any]]) -> None:
        url = f"{kube_env.gateway.url}{path}?watch=true&timeoutSeconds=20"
        with urllib.request.urlopen(url, timeout=25) as resp:
            for line in resp:
                out.append(json.loads(line))
                if len(out) >= count:
                    return

    cm_events: list[dict[str, Any]] = []
    ftj_events: list[dict[str, Any]] = []
    threads = [
        threading.Thread(
            target=watch, args=(f"/api/v1/namespaces/{ns}/configmaps", 3, cm_events), daemon=True
        ),
        threading.Thread(
            target=watch,
            args=(f"/apis/finetune.dev/v1alpha1/namespaces/{ns}/finetunejobs", 2, ftj_events),
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    wait_for(
        lambda: (
            sum(1 for r in kube_env.gateway.audit if r.verb == "watch" and r.namespace == ns) >= 2
            or None
        ),
        what="watches open",
    )
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w"}, "data": {"a": "1"}}
    kube_env.apply(cm, ns)
    kube_env.kubectl("patch", "cm", "w", "-n", ns, "--type=merge", "-p", '{"data":{"a":"2"}}')
    kube_env.kubectl("delete", "cm", "w", "-n", ns)
    quickstart = cluster_quickstart()
    kube_env.apply(quickstart, ns)
    kube_env.kubectl("label", "ftj", "quickstart", "-n", ns, "seen=yes")
    for thread in threads:
        thread.join(timeout=25)
    assert [e["type"] for e in cm_events] == ["ADDED", "MODIFIED", "DELETED"]
    assert cm_events[1]["object"]["data"] == {"a": "2"}
    assert [e["type"] for e in ftj_events] == ["ADDED", "MODIFIED"]
    assert ftj_events[1]["object"]["metadata"]["labels"] == {"seen": "yes"}


def test_suspend_stops_pods_and_resume_starts_new_ones(kube_env: KubeEnv, ns: str) -> None:
    apply_all(kube_env, ns, fake_trainer_job("pause", steps=300, step_seconds=0.1))
    first = wait_for(
        lambda: next(
            (p for p in pods_of(kube_env, ns, "pause") if p["status"].get("phase") == "Running"),
            None,
        ),
        what="a running pod",
    )
    kube_env.kubectl(
        "patch", "job", "pause", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )

    def suspended() -> bool:
        job = kube_env.kubectl_json("get", "job", "pause", "-n", ns)
        conds = {c["type"]: c for c in job["status"].get("conditions", [])}
        return conds.get("Suspended", {}).get("status") == "True" and not pods_of(
            kube_env, ns, "pause"
        )

    wait_for(suspended, timeout=20, what="Job suspended, pods gone")
    assert first["metadata"]["name"] not in kube_env.simulator.running_pods(ns)
    kube_env.kubectl(
        "patch", "job", "pause", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    second = wait_for(
        lambda: next(
            (p for p in pods_of(kube_env, ns, "pause") if p["status"].get("phase") == "Running"),
            None,
        ),
        what="a new running pod",
    )
    assert second["metadata"]["name"] != first["metadata"]["name"]
    job = kube_env.kubectl_json("get", "job", "pause", "-n", ns)
    assert job["status"].get("failed", 0) == 0


def test_unschedulable_and_image_pull_faults(kube_env: KubeEnv, ns: str) -> None:
    kube_env.simulator.make_unschedulable("stuck", ns)
    kube_env.simulator.image_pull_backoff("nopull", ns)
    apply_all(kube_env, ns, fake_trainer_job("stuck") + fake_trainer_job("nopull"))

    def scheduled_false() -> dict[str, Any] | None:
        for pod in pods_of(kube_env, ns, "stuck"):
            for cond in pod["status"].get("conditions", []):
                if cond["type"] == "PodScheduled" and cond["status"] == "False":
                    return cond
        return None

    cond = wait_for(scheduled_false, what="PodScheduled=False")
    assert cond["reason"] == "Unschedulable" and "Insufficient nvidia.com/gpu" in cond["message"]

    def pulling() -> str | None:
        for pod in pods_of(kube_env, ns, "nopull"):
            for status in pod["status"].get("containerStatuses", []):
                return status.get("state", {}).get("waiting", {}).get("reason")
        return None

    assert wait_for(pulling, what="waiting reason") == "ImagePullBackOff"
    assert "ImagePullBackOff" in kube_env.kubectl("get", "pods", "-n", ns).stdout
    kube_env.simulator.clear_faults("stuck", ns)
    done = wait_for(lambda: job_condition(kube_env, ns, "stuck"), what="Job finished")
    assert done["type"] == "Complete"


def test_active_deadline_fails_the_job(kube_env: KubeEnv, ns: str) -> None:
    apply_all(
        kube_env,
        ns,
        fake_trainer_job(
            "slow", steps=1000, step_seconds=0.1, extra_spec={"activeDeadlineSeconds": 2}
        ),
    )
    done = wait_for(lambda: job_condition(kube_env, ns, "slow"), what="Job finished")
    assert done["type"] == "Failed" and done["reason"] == "DeadlineExceeded", done
    wait_for(lambda: not kube_env.simulator.running_pods(ns), what="pods stopped")


def test_kill_pod_counts_as_failure_and_secret_env_resolves(kube_env: KubeEnv, ns: str) -> None:
    kube_env.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3"},
            "stringData": {"AWS_ACCESS_KEY_ID": "AKIDTEST"},
        },
        ns,
    )
    docs = fake_trainer_job("killed", steps=60, step_seconds=0.1, backoff_limit=2)
    docs[1]["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {
            "name": "AWS_ACCESS_KEY_ID",
            "valueFrom": {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}},
        }
    )
    apply_all(kube_env, ns, docs)
    first = wait_for(
        lambda: next(
            (p for p in pods_of(kube_env, ns, "killed") if p["status"].get("phase") == "Running"),
            None,
        ),
        what="a running pod",
    )
    kube_env.simulator.kill_pod(first["metadata"]["name"], signal.SIGKILL, ns)

    def retried() -> bool:
        job = kube_env.kubectl_json("get", "job", "killed", "-n", ns)
        return job["status"].get("failed") == 1 and len(pods_of(kube_env, ns, "killed")) == 2

    wait_for(retried, what="one failure and a replacement pod")
    dead = next(
        p
        for p in pods_of(kube_env, ns, "killed")
        if p["metadata"]["name"] == first["metadata"]["name"]
    )
    assert dead["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137


def test_audit_records_what_clients_did(kube_env: KubeEnv, ns: str) -> None:
    kube_env.kubectl("get", "pods,jobs,ftj", "-n", ns)
    rules = kube_env.gateway.audit_rules(user_agent_contains="kubectl")
    assert {
        ("", "pods", "list"),
        ("batch", "jobs", "list"),
        ("finetune.dev", "finetunejobs", "list"),
    } <= rules


def test_kubectl_apply_of_the_helm_chart(kube_env: KubeEnv, ns: str) -> None:
    # What a deployment of the operator image starts from: the chart, rendered and applied.
    helm = kube_env.kubectl_bin.parent / "helm"
    rendered = subprocess.run(
        [str(helm), "template", "ftj", str(REPO / "charts" / "finetune-operator")]
        + ["--namespace", ns, "--set", "metrics.enabled=false", "--set", "peering.enabled=false"],
        env=kube_env.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds
    out = kube_env.kubectl("apply", "-n", ns, "-f", "-", input=rendered).stdout
    assert "deployment.apps/ftj-finetune-operator created" in out
    assert "clusterrole.rbac.authorization.k8s.io/ftj-finetune-operator created" in out
    again = kube_env.kubectl("apply", "-n", ns, "-f", "-", input=rendered).stdout
    assert "deployment.apps/ftj-finetune-operator unchanged" in again
    try:
        deploy = kube_env.kubectl_json("get", "deploy", "ftj-finetune-operator", "-n", ns)
        assert deploy["spec"]["replicas"] == 1
        pod = deploy["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "ftj-finetune-operator"
        assert kube_env.kubectl_json("get", "sa", "ftj-finetune-operator", "-n", ns)
        role = kube_env.kubectl_json("get", "clusterrole", "ftj-finetune-operator")
        assert "namespace" not in role["metadata"]  # cluster-scoped, despite ``-n``
        assert {"finetune.dev", "batch", ""} <= {g for r in role["rules"] for g in r["apiGroups"]}
        binding = kube_env.kubectl_json("get", "clusterrolebinding", "ftj-finetune-operator")
        assert binding["roleRef"]["name"] == "ftj-finetune-operator"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "ftj-finetune-operator", "namespace": ns}
        ]
        table = kube_env.kubectl("get", "deploy", "-n", ns).stdout
        assert table.split()[:2] == ["NAME", "READY"] and "0/1" in table
        # Discovery lists the new groups with their resources, so kubectl maps them right.
        resources = kube_env.kubectl("api-resources", "-o", "wide").stdout
        for line in ("deployments", "clusterroles", "clusterrolebindings", "roles"):
            assert line in resources
    finally:  # cluster-scoped objects outlive the test's namespace
        kube_env.kubectl("delete", "-n", ns, "-f", "-", input=rendered, check=False)


def test_tls_serves_in_cluster_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes import client
    from kubernetes.config.incluster_config import InClusterConfigLoader

    with KubeGateway(None, tmp_path / "gateway", tls=True) as gateway:
        assert gateway.tls_url == f"https://127.0.0.1:{gateway.tls_port}"
        sa = gateway.service_account_files("finetune-system", tmp_path / "serviceaccount")
        assert (sa / "namespace").read_text() == "finetune-system"
        assert (sa / "ca.crt").read_bytes() == Path(gateway.ca_file or "").read_bytes()
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(gateway.tls_port))
        config = client.Configuration()
        InClusterConfigLoader(
            token_filename=str(sa / "token"), cert_filename=str(sa / "ca.crt")
        ).load_and_set(config)
        assert config.host == gateway.tls_url and config.verify_ssl
        names = client.CoreV1Api(client.ApiClient(config)).list_namespace().items
        assert {n.metadata.name for n in names} == {"default", "kube-system"}
        assert any(r.resource == "namespaces" and r.verb == "list" for r in gateway.audit)

        # The certificate is verified: a client trusting another CA is refused.
        stranger = client.Configuration()
        stranger.host, stranger.retries = gateway.tls_url, 0
        stranger.ssl_ca_cert = str(issue_server_cert(tmp_path / "other").ca_file)
        with pytest.raises(urllib3.exceptions.MaxRetryError, match="CERTIFICATE_VERIFY_FAILED"):
            client.CoreV1Api(client.ApiClient(stranger)).list_namespace()
        # Plain HTTP keeps working next to HTTPS.
        with urllib.request.urlopen(f"{gateway.url}/api/v1/namespaces", timeout=5) as resp:
            assert len(json.loads(resp.read())["items"]) == 2
