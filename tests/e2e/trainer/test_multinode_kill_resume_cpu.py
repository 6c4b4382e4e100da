"""Two nodes x two processes train with sharded weights; one node dies; the job resumes.

A multi-node checkpoint lives on every node's own disk: each rank writes its RNG state and,
with the weights sharded (FSDP), its shard of the adapter and of the optimizer state. Here the
quickstart runs as the operator's Indexed Job would run it on two nodes: the pod command the
operator renders for ``resources: {gpus: 2, nodes: 2}`` (``torchrun --nproc-per-node=2
--nnodes=2 ... --rdzv-endpoint=<job>-0.<job>:29500``, the name mapped onto node 0's loopback
address by ``tests.harness.multinode``), each agent on its own loopback address with its own
scratch folder (as two pods on two machines), gloo between the
four CPU ranks (``ACCELERATE_USE_CPU``, and ``tests/harness/fsdp_on_cpu`` to let accelerate
shard on CPUs). The output is S3 (the moto server), the only thing the nodes share.
``tests/gpu/test_multinode_nccl.py`` is the same test over NCCL, one GPU per node.

As soon as a checkpoint is whole in the output (both nodes' parts), node 1's torchrun and its
workers are SIGKILLed, as a node failure would; node 0's trainers then fail or are stopped as
the Job controller would stop them. Then the job starts again on "other machines": new
addresses, empty scratch folders, a new rendezvous. Every node must restore the whole
checkpoint from the output alone (node 1's shards and RNG states included: without them ranks
2 and 3 have nothing to load), and the run must end Succeeded with exactly ``maxSteps``
optimizer steps, each logged once, and a MANIFEST whose checksums verify.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.trainer.test_trainer_runs import REPO, quickstart_manifest, trainer_env
from tests.harness.multinode import (
    NodeEnv,
    kill_last_node_once_whole,
    node_logs,
    run_to_the_end,
)

pytestmark = pytest.mark.e2e

STEPS = 8
SAVE_STEPS = 2
OUTPUT = "s3://results/multinode"


def job_manifest(s3_endpoint: str) -> dict[str, Any]:
    """The quickstart, short, checkpointing every ``SAVE_STEPS``, into the S3 output, on two
    nodes of two processes (``resources.gpus`` is the processes per node torchrun starts)."""
    manifest = quickstart_manifest(
        maxSteps=STEPS, saveSteps=SAVE_STEPS, evalSteps=STEPS, loggingSteps=1, batchSize=2
    )
    manifest["metadata"]["uid"] = "uid-two-nodes"
    spec = manifest["spec"]
    spec["output"] = {"uri": OUTPUT, "merge": False}
    spec["storage"] = {"s3": {"endpoint": s3_endpoint, "pathStyle": True,
                              "credentialsSecret": {"name": "s3-creds"}}}  # fmt: skip
    spec["resources"] = {"gpus": 2, "nodes": 2}
    return manifest


def node_env(manifest: dict[str, Any], s3_env: dict[str, str]) -> NodeEnv:
    """A node's environment: the pod's, gloo between CPU processes, FSDP allowed on CPUs."""

    def env_of(index: int, scratch: Path) -> dict[str, str]:
        env = trainer_env(
            scratch,
            manifest,
            **s3_env,
            FTJ_SHARD_WEIGHTS="1",
            FTJ_TEST_FSDP_ON_CPU="1",
            ACCELERATE_USE_CPU="true",  # gloo under torchrun (test_multinode_cpu.py)
            GLOO_SOCKET_IFNAME="lo",
            OMP_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
            CUDA_VISIBLE_DEVICES="",
        )
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "tests" / "harness" / "fsdp_on_cpu"), env["PYTHONPATH"]]
        )
        return env

    return env_of


def test_a_node_killed_mid_run_resumes_on_new_nodes_with_exact_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("psutil")
    from finetune_api.spec import S3Storage
    from finetune_trainer.storage import CheckpointStore, Storage, verify_manifest

    from tests.harness.s3 import S3Server

    started = time.monotonic()
    with S3Server() as s3:
        s3.create_bucket("results")
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        storage = Storage.from_spec(S3Storage(endpoint=s3.endpoint_url, path_style=True))
        store = CheckpointStore(storage, OUTPUT)
        manifest = job_manifest(s3.endpoint_url)

        # 1. Two nodes train; node 1 dies as soon as a checkpoint is whole in the output.
        first = tmp_path / "first"
        env = node_env(manifest, s3.env())
        # Node 0's collectives then lose a member: its trainer fails (gloo) or would hang until
        # the Job controller stops it; either way this attempt is over.
        whole, nodes = kill_last_node_once_whole(
            first, manifest, ("127.0.0.2", "127.0.0.3"), env, store.latest_complete
        )
        killed_at = time.monotonic() - started
        assert nodes[1].returncode == -signal.SIGKILL
        assert whole < STEPS and storage.read_json(f"{OUTPUT}/MANIFEST.json") is None
        print(f"\nnode 1 killed after checkpoint {whole} ({killed_at:.0f} s)")

        # The checkpoint counted as whole holds node 1's part: its ranks' shards and RNG states.
        files = storage.list_files(store.uri(whole))
        assert {"COMPLETE.node-0-of-2", "COMPLETE.node-1-of-2"} <= set(files), files
        assert {"rng_state_2.pth", "rng_state_3.pth"} <= set(files), files
        assert any("__3_0.distcp" in f for f in files), files

        # 2. The job again, on other machines: new addresses, empty scratch folders.
        second = tmp_path / "second"
        codes = run_to_the_end(second, manifest, ("127.0.0.4", "127.0.0.5"), env)
        assert codes == [0, 0], node_logs(second)
        elapsed = time.monotonic() - started

        metrics = json.loads(
            s3.client().get_object(Bucket="results", Key="multinode/metrics.json")["Body"].read()
        )
        resumed = metrics["resumedFromStep"]
        assert whole <= resumed < STEPS, (whole, resumed)
        assert metrics["steps"] == STEPS
        # Exactly maxSteps optimizer steps: each step's loss logged once (loggingSteps: 1),
        # the ones before the checkpoint from the first attempt, the rest from the second.
        logged = [e["step"] for e in metrics["logHistory"] if "loss" in e]
        assert logged == list(range(1, STEPS + 1)), logged
        assert verify_manifest(storage, OUTPUT) == []
        both = node_logs(second)
        assert f"resuming from checkpoint {resumed}" in both
        assert "[rank 3]" in both  # node 1's second rank trained in the second attempt
        # The final checkpoint is whole too: both nodes uploaded their part before exiting.
        assert store.latest_complete() == STEPS
        print(f"resumed from {resumed}; {STEPS} steps; {elapsed:.0f} s in all")
