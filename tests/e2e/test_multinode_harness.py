"""Multi-node through the real operator: ``resources.nodes: 2`` trains like one process.

A FineTuneJob with ``nodes: 2, gpus: 1`` is applied with kubectl; the operator renders an
Indexed Job (completions = parallelism = 2) and a headless Service named like the pods'
subdomain, and each pod runs the rendered ``torchrun ... --node-rank=$(JOB_COMPLETION_INDEX)
--rdzv-backend=c10d --rdzv-endpoint=<job>-0.<job>:29500``. The Job simulator starts the two
pods as processes on their own loopback addresses, expands ``$(JOB_COMPLETION_INDEX)``, and
plays cluster DNS (``<job>-0.<job>`` becomes pod 0's address, see
``tests.harness.cluster.cluster_dns``), so the two torchrun agents meet at pod 0 and train
the tiny quickstart Qwen3 over gloo. Rank 0 alone publishes.

The same data with the same global batch in one process (``nodes: 1``, ``batchSize`` doubled)
must publish the same adapter: every optimizer step sees the same examples (the Trainer's
seeded sampler, batches dealt to the ranks in turn), LoRA dropout is 0, fp32, and the loss is
token-weighted across ranks, so only the summation order of the gradients differs.

The simulated host has no GPUs: each pod's one process trains on CPU, where accelerate builds
a gloo process group under torchrun only with ``ACCELERATE_USE_CPU=true`` (found by
``test_multinode_cpu.py``); that is a property of the host, so it goes in through the
simulator's per-job environment, not the operator's rendering.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.e2e.conftest import KubeEnv, wait_for
from tests.e2e.test_operator_e2e import (  # noqa: F401 (buckets: autouse fixture)
    buckets,
    ftj,
    read_s3,
    status,
    verify_manifest,
)
from tests.harness.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

STEPS = 4
BATCH_PER_NODE = 2
# Largest difference of a published adapter tensor, relative to the tensor's largest entry.
# Both runs compute each step's gradient from the same examples in fp32; only the order of the
# sums differs (two half-batches all-reduced over gloo vs one batch), ~1e-7 relative. Adam
# divides by sqrt(v), which can turn such noise in near-zero gradient entries into a larger
# change of those entries (at most lr per step). Measured here: 1.3e-5 after 4 steps. 1e-3 (as
# in test_multinode_cpu.py) leaves ~75x margin; a run that saw other examples in a step is
# caught by the loss check first (its step loss is the mean over different examples).
TOLERANCE = 1e-3


@pytest.fixture
def operator_env() -> dict[str, str]:
    """No trainer command override: the operator renders python / torchrun itself."""
    return {}


def finetune_job(kube_env: KubeEnv, ns: str, name: str, nodes: int) -> dict[str, Any]:
    """The tiny quickstart job, with the global batch split over ``nodes`` pods."""
    body = ftj(name, kube_env, ns)
    body["spec"].update(
        {
            "datasets": [
                {
                    "uri": "s3://datasets/identity.json",
                    "format": "alpaca",
                    "variables": {"name": "Quokka", "author": "the FineTune Operator team"},
                }
            ],
            "template": {"name": "qwen3"},
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "training": {
                "maxSteps": STEPS,
                "learningRate": 0.005,
                "batchSize": BATCH_PER_NODE * (2 // nodes),
                "gradientAccumulationSteps": 1,
                "cutoffLength": 128,
                "precision": "fp32",
                "loggingSteps": 1,
                "saveSteps": STEPS,
            },
            "output": {"uri": f"s3://artifacts/{name}", "merge": False},
            "resources": {"nodes": nodes, "gpus": 1} if nodes > 1 else {"gpus": 0},
        }
    )
    return body


def adapter_weights(kube_env: KubeEnv, artifacts: dict[str, str]) -> dict[str, Any]:
    """The published adapter/adapter_model.safetensors, as float32 tensors."""
    from safetensors.torch import load

    uri = artifacts["adapter"].rstrip("/") + "/adapter_model.safetensors"
    return {k: v.float() for k, v in load(read_s3(kube_env, uri)).items()}


def test_two_nodes_rendezvous_and_match_one_process(
    kube_env: KubeEnv, ns: str, operator: OperatorProcess
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    # The simulated host has no GPUs (see the module docstring).
    kube_env.simulator.set_pod_env(ns, {"ACCELERATE_USE_CPU": "true"}, job="two-nodes")
    started = time.monotonic()
    kube_env.apply(finetune_job(kube_env, ns, "two-nodes", nodes=2), ns)
    kube_env.apply(finetune_job(kube_env, ns, "one-node", nodes=1), ns)

    def pod_logs() -> str:
        return "\n".join(
            f"--- {p['metadata']['name']} ---\n"
            + kube_env.simulator.pod_log(p["metadata"]["name"], ns)[-4000:]
            for p in kube_env.gateway.objects("pods", ns)
        )

    def finished() -> dict[str, dict[str, Any]] | None:
        both = {n: status(kube_env, ns, n) for n in ("two-nodes", "one-node")}
        # Failed, or Succeeded with its artifacts: the status is level-triggered, and under load
        # the Job's Complete can reach the operator before the pod that carries the termination
        # message; the next pod event fills the artifacts in.
        done = all(
            s.get("phase") == "Failed" or (s.get("phase") == "Succeeded" and s.get("artifacts"))
            for s in both.values()
        )
        return both if done else None

    done = wait_for(
        finished,
        timeout=240,
        interval=1,
        what="both jobs finished",
        details=lambda: operator.logs()[-3000:] + "\n" + pod_logs(),
    )
    elapsed = time.monotonic() - started
    for name, s in done.items():
        assert s["phase"] == "Succeeded", (name, s, pod_logs())

    # What the operator rendered: an Indexed Job of 2 pods, torchrun meeting at pod 0 behind
    # a headless Service named like the pods' subdomain.
    job = kube_env.kubectl_json("get", "job", "-n", ns, "-l", "finetune.dev/job=two-nodes")
    (job,) = job["items"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    pod_spec = spec["template"]["spec"]
    job_name, subdomain = job["metadata"]["name"], pod_spec["subdomain"]
    command = pod_spec["containers"][0]["command"]
    assert command[0] == "torchrun" and "--node-rank=$(JOB_COMPLETION_INDEX)" in command
    assert f"--rdzv-endpoint={job_name}-0.{subdomain}:29500" in command
    service = kube_env.kubectl_json("get", "service", subdomain, "-n", ns)
    assert service["spec"]["clusterIP"] == "None"

    # Two pods, completion indices 0 and 1, each on its own address; only rank 0 (index 0)
    # reports: its termination message carries the artifacts, index 1's is empty. c10d ignores
    # --node-rank and ranks the agents by (FQDN, pid): in a cluster <job>-0.<svc>... sorts first;
    # here all share the host's FQDN and pod 0's agent is started first, so has the lower pid.
    pods = [
        p
        for p in kube_env.kubectl_json("get", "pods", "-n", ns)["items"]
        if p["metadata"]["labels"].get("job-name") == job_name
    ]
    by_index = {
        int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]): p
        for p in pods
    }
    assert sorted(by_index) == [0, 1] and len(pods) == 2, [p["metadata"]["name"] for p in pods]
    assert by_index[0]["status"]["podIP"] != by_index[1]["status"]["podIP"]
    assert by_index[1]["spec"]["hostname"] == f"{job_name}-1"
    messages = {
        i: p["status"]["containerStatuses"][0]["state"]["terminated"].get("message", "")
        for i, p in by_index.items()
    }
    assert '"artifacts"' in messages[0], messages
    assert not messages[1].strip(), messages
    # Index 1 trained as rank 1 of the same world (the trainer prefixes its log lines).
    log_1 = kube_env.kubectl("logs", by_index[1]["metadata"]["name"], "-n", ns).stdout
    assert "[rank 1]" in log_1, log_1[-3000:]

    # Both published a complete output; the adapters (and the losses on the way) agree.
    two, one = done["two-nodes"], done["one-node"]
    verify_manifest(kube_env, two["artifacts"]["manifest"])
    verify_manifest(kube_env, one["artifacts"]["manifest"])
    history = {
        name: json.loads(read_s3(kube_env, s["artifacts"]["metrics"]))["logHistory"]
        for name, s in done.items()
    }
    losses = {name: [e["loss"] for e in h if "loss" in e] for name, h in history.items()}
    assert len(losses["two-nodes"]) == len(losses["one-node"]) == STEPS, losses
    for a, b in zip(losses["one-node"], losses["two-nodes"], strict=True):
        assert abs(a - b) <= 1e-4 * abs(a), losses  # same examples, same weights so far
    w2, w1 = (
        adapter_weights(kube_env, two["artifacts"]),
        adapter_weights(kube_env, one["artifacts"]),
    )
    assert w1.keys() == w2.keys() and w1
    worst = max(float((w1[k] - w2[k]).abs().max() / w1[k].abs().max().clamp_min(1e-6)) for k in w1)
    print(f"two nodes vs one: adapter differs by {worst:.2e} (relative); {elapsed:.0f}s")
    assert worst < TOLERANCE, f"adapter weights differ by {worst:.2e} (relative)"
