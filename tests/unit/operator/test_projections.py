"""Index entries keep only what the status computation reads, and it computes the same status.

The Job and pod fixtures are decorated with what a real API server adds and the operator never
reads (managedFields, other containers, volumes, env, kopf's annotations); every case of the
status table must give the same status, events and progress target from the slim entries.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from finetune_api import parse_manifest
from finetune_operator.inventory import job_pods, owned_job
from finetune_operator.observe import observe_status
from finetune_operator.progress import progress_target
from finetune_operator.projections import finetunejob_entry, job_entry, pod_entry

from .fixtures import JOB_UID, UID, k8s_job, manifest, pod, terminated
from .test_observe import CASES, NOW, PROGRESS, Case

pytestmark = pytest.mark.unit

Obj = dict[str, Any]

MANAGED = [
    {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "apiVersion": "v1",
        "time": "2025-06-01T10:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:status": {"f:conditions": {}, "f:phase": {}, "f:podIP": {}}},
    }
]


def as_served(obj: Obj) -> Obj:
    """``obj`` with what the API server and other controllers add around the fields we read."""
    full = copy.deepcopy(obj)
    meta = full["metadata"]
    meta["managedFields"] = MANAGED
    meta["resourceVersion"] = "12345"
    meta.setdefault("labels", {})["team"] = "nlp"
    meta.setdefault("annotations", {})["kubectl.kubernetes.io/last-applied-configuration"] = (
        json.dumps(full.get("spec"))
    )
    if full.get("kind") == "Pod":
        spec = full["spec"]
        spec["volumes"] = [{"name": f"v{i}", "emptyDir": {}} for i in range(8)]
        spec["containers"][0]["env"] = [{"name": f"E{i}", "value": "x" * 50} for i in range(20)]
        spec["containers"].append({"name": "log-shipper", "image": "fluent-bit:3"})
        spec["nodeName"] = "gpu-node-7"
        status = full["status"]
        status["hostIP"] = "192.168.1.7"
        status["containerStatuses"].insert(
            0,
            {
                "name": "log-shipper",
                "image": "fluent-bit:3",
                "restartCount": 7,
                "state": {"terminated": {"exitCode": 1, "finishedAt": "2025-06-01T11:00:00Z"}},
            },
        )
    if full.get("kind") == "Job":
        full["spec"]["template"] = {"spec": {"containers": [{"name": "trainer", "env": []}]}}
        full["spec"]["completions"] = 1
        full["status"]["uncountedTerminatedPods"] = {}
    return full


def outcome(job_body: Obj, k8s: Obj | None, pods: list[Obj], progress: Obj | None) -> Any:
    """Everything the operator derives from one set of objects."""
    job = parse_manifest(
        {k: job_body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in job_body}
    )
    owned = owned_job([k8s] if k8s else [], job_body["metadata"]["uid"])
    mine = job_pods(pods, owned)
    update = observe_status(job, owned, mine, progress, NOW)
    return update.status.to_wire(), update.events, update.stop_job, progress_target(mine)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("gpus", [0, 2])
def test_slim_entries_give_the_same_status_as_full_objects(case: Case, gpus: int) -> None:
    body = manifest(**case.spec, resources={"gpus": gpus}, limits={"maxGPUHours": 1.5})
    body = as_served(body)
    full_job = as_served(case.job) if case.job else None
    full_pods = [as_served(p) for p in case.pods]
    slim = outcome(
        finetunejob_entry(body),
        job_entry(full_job) if full_job else None,
        [pod_entry(p) for p in full_pods],
        case.progress,
    )
    assert slim == outcome(body, full_job, full_pods, case.progress)


def test_a_preempted_multi_node_job_reads_the_same_from_slim_entries() -> None:
    body = as_served(manifest(resources={"gpus": 8, "nodes": 2}))
    summary = {"reason": "Preempted", "progress": {"step": 40, "totalSteps": 100}}
    first = pod("ftj-demo-0-a", "Failed", index="0", state=terminated(143, "Error", summary))
    pods = [
        as_served(first),
        as_served(pod("ftj-demo-1-a", "Running", index="1", restarts=2)),
        as_served(pod("ftj-demo-0-b", "Running", index="0", created="2025-06-01T10:31:00Z")),
    ]
    job = as_served(k8s_job(failed=1))
    slim = outcome(finetunejob_entry(body), job_entry(job), [pod_entry(p) for p in pods], PROGRESS)
    full = outcome(body, job, pods, PROGRESS)
    assert slim == full
    assert full[3] is not None and full[3].pod_name == "ftj-demo-0-b"  # rank 0's newest pod


def test_entries_drop_what_the_status_never_reads() -> None:
    served_pod = as_served(pod(index="0"))
    entry = pod_entry(served_pod)
    assert "managedFields" not in entry["metadata"]
    assert entry["metadata"]["annotations"] == {"batch.kubernetes.io/job-completion-index": "0"}
    assert entry["metadata"]["ownerReferences"] == [{"uid": JOB_UID, "controller": True}]
    assert [c["name"] for c in entry["spec"]["containers"]] == ["trainer"]
    assert "env" not in entry["spec"]["containers"][0]
    assert [c["name"] for c in entry["status"]["containerStatuses"]] == ["trainer"]
    assert len(json.dumps(entry)) < len(json.dumps(served_pod)) / 3

    ftj_entry = finetunejob_entry(as_served(manifest()))
    assert set(ftj_entry["metadata"]) == {"name", "namespace", "uid", "generation"}
    assert ftj_entry["metadata"]["uid"] == UID
    assert ftj_entry["spec"] == manifest()["spec"]


def test_entries_share_nothing_with_the_body_they_came_from() -> None:
    served = as_served(pod())
    entry = pod_entry(served)
    served["status"]["conditions"].append({"type": "Ready", "status": "True"})
    served["status"]["containerStatuses"][1]["restartCount"] = 99
    assert entry["status"]["conditions"] == pod()["status"]["conditions"]
    assert entry["status"]["containerStatuses"][0]["restartCount"] == 0
