"""Two nodes of one GPU each over NCCL; one node dies mid-run; the job resumes (issue 25, item 3).

``tests/e2e/trainer/test_multinode_kill_resume_cpu.py`` over NCCL instead of gloo: the
quickstart job with ``resources: {gpus: 1, nodes: 2}`` runs as the operator's Indexed Job runs
it, two torchrun agents started with the pod command the operator renders (``torchrun
--nproc-per-node=1 --nnodes=2 --node-rank=$(JOB_COMPLETION_INDEX) --rdzv-backend=c10d
--rdzv-endpoint=<job>-0.<job>:29500 ...``), ``<job>-0.<job>`` mapped onto node 0's loopback
address and each agent on its own loopback address with its own scratch folder
(``tests.harness.multinode``). Each node sees one GPU (``CUDA_VISIBLE_DEVICES``), as each pod
would, and NCCL talks between them over sockets on the loopback (peer-to-peer, shared memory
and InfiniBand off), as two machines without InfiniBand would. The output is S3 (the moto
server), the only thing the nodes share.

As soon as a checkpoint is whole in the output (both nodes' parts), node 1's agent and worker
are SIGKILLed; node 0's trainer then fails (NCCL loses its peer) or is stopped after 60 s. The
job starts again on new addresses with empty scratch folders: node 1's checkpoint part (its RNG
state and, sharded, its FSDP shard) must come from the output, and the run must end with
exactly ``maxSteps`` optimizer steps, each logged once, and a MANIFEST whose checksums verify.

Twice: with the weights sharded (FSDP2: each node uploads its shard, ``__1_0.distcp``) and
replicated (DDP: node 1 uploads its RNG state only). FSDP on GPUs needs untied input and output
embeddings (``search.requested_sharding``), so the quickstart model is untied first.

Needs two CUDA GPUs (``nvidia-h100-x2`` / ``nvidia-h200-x2``); not run yet (none lent). Run:

    python3 -m pytest tests/gpu/test_multinode_nccl.py -q -s
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.trainer.test_trainer_runs import QUICKSTART_DIR, quickstart_manifest, trainer_env
from tests.harness.multinode import (
    NodeEnv,
    kill_last_node_once_whole,
    node_logs,
    run_to_the_end,
)

pytestmark = pytest.mark.gpu

# Twice the CPU test's steps: a GPU trains the tiny model in milliseconds a step, and node 1
# must still be running when the first whole checkpoint is seen.
STEPS = 16
SAVE_STEPS = 2
OUTPUT = "s3://results/multinode-nccl"


def untied_model(root: Path) -> Path:
    """The quickstart's tiny Qwen3 with its output embedding a copy of the input one (the same
    function, two parameters), so FSDP may shard it on GPUs."""
    import torch
    from transformers import AutoModelForCausalLM

    path = root / "tiny-qwen3-untied"
    shutil.copytree(QUICKSTART_DIR / "tiny-qwen3", path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    weight = model.get_input_embeddings().weight.detach().clone()
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(weight)
    model.save_pretrained(path)
    assert not json.loads((path / "config.json").read_text())["tie_word_embeddings"]
    return path


def job_manifest(s3_endpoint: str, model: Path) -> dict[str, Any]:
    """The quickstart, short, checkpointing every ``SAVE_STEPS`` into the S3 output, on two
    nodes of one GPU."""
    manifest = quickstart_manifest(
        maxSteps=STEPS, saveSteps=SAVE_STEPS, evalSteps=STEPS, loggingSteps=1, batchSize=2
    )
    manifest["metadata"]["uid"] = "uid-two-gpu-nodes"
    spec = manifest["spec"]
    spec["model"]["uri"] = str(model)
    spec["output"] = {"uri": OUTPUT, "merge": False}
    spec["storage"] = {"s3": {"endpoint": s3_endpoint, "pathStyle": True,
                              "credentialsSecret": {"name": "s3-creds"}}}  # fmt: skip
    spec["resources"] = {"gpus": 1, "nodes": 2}
    return manifest


def node_env(manifest: dict[str, Any], s3_env: dict[str, str], sharded: bool) -> NodeEnv:
    """A node's environment: the pod's, its one GPU, NCCL over loopback sockets."""

    def env_of(index: int, scratch: Path) -> dict[str, str]:
        return trainer_env(
            scratch,
            manifest,
            **s3_env,
            FTJ_SHARD_WEIGHTS="1" if sharded else "0",
            CUDA_VISIBLE_DEVICES=str(index),  # a pod's one GPU
            NCCL_SOCKET_IFNAME="lo",
            GLOO_SOCKET_IFNAME="lo",
            NCCL_P2P_DISABLE="1",  # two machines share no GPU memory...
            NCCL_SHM_DISABLE="1",  # ...nor host memory
            NCCL_IB_DISABLE="1",
            NCCL_DEBUG="INFO",
            NCCL_DEBUG_SUBSYS="INIT,NET",  # the transport NCCL chose, in each node's log
            OMP_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
        )

    return env_of


@pytest.mark.parametrize("sharded", [True, False], ids=["fsdp", "ddp"])
def test_a_gpu_node_killed_mid_run_resumes_on_new_nodes_with_exact_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sharded: bool
) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs (nvidia-h100-x2 or nvidia-h200-x2)")
    pytest.importorskip("psutil")
    from finetune_api.spec import S3Storage
    from finetune_trainer.storage import CheckpointStore, Storage, verify_manifest

    from tests.harness.s3 import S3Server

    model = untied_model(tmp_path)
    started = time.monotonic()
    with S3Server() as s3:
        s3.reset()  # moto's state outlives a server in this process (the other parameter's)
        s3.create_bucket("results")
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        storage = Storage.from_spec(S3Storage(endpoint=s3.endpoint_url, path_style=True))
        store = CheckpointStore(storage, OUTPUT)
        manifest = job_manifest(s3.endpoint_url, model)
        env = node_env(manifest, s3.env(), sharded)

        # 1. Two nodes train; node 1 dies as soon as a checkpoint is whole in the output.
        first = tmp_path / "first"
        whole, nodes = kill_last_node_once_whole(
            first, manifest, ("127.0.0.2", "127.0.0.3"), env, store.latest_complete
        )
        killed_at = time.monotonic() - started
        assert nodes[1].returncode == -signal.SIGKILL
        assert whole < STEPS and storage.read_json(f"{OUTPUT}/MANIFEST.json") is None
        print(f"\nnode 1 killed after checkpoint {whole} ({killed_at:.0f} s)")

        # The checkpoint counted as whole holds node 1's part: its rank's RNG state and, sharded,
        # its shard of the adapter and optimizer state (replicated: no shard files at all).
        files = storage.list_files(store.uri(whole))
        assert {"COMPLETE.node-0-of-2", "COMPLETE.node-1-of-2"} <= set(files), files
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(files), files
        shards = [f for f in files if f.endswith(".distcp")]
        if sharded:
            assert any("__1_0.distcp" in f for f in shards), files
        else:
            assert not shards, files

        # 2. The job again, on other machines: new addresses, empty scratch folders.
        second = tmp_path / "second"
        codes = run_to_the_end(second, manifest, ("127.0.0.4", "127.0.0.5"), env)
        assert codes == [0, 0], node_logs(second)
        # Both ranks trained over NCCL, through its socket transport (read after a clean exit:
        # a SIGKILLed process may leave its last output unwritten).
        for index in (0, 1):
            log = (second / f"node-{index}.log").read_text()
            assert "NCCL INFO" in log and "NET/Socket" in log, node_logs(second)
        elapsed = time.monotonic() - started

        metrics = json.loads(
            s3.client()
            .get_object(Bucket="results", Key="multinode-nccl/metrics.json")["Body"]
            .read()
        )
        resumed = metrics["resumedFromStep"]
        assert whole <= resumed < STEPS, (whole, resumed)
        assert metrics["steps"] == STEPS
        logged = [e["step"] for e in metrics["logHistory"] if "loss" in e]
        assert logged == list(range(1, STEPS + 1)), logged
        assert verify_manifest(storage, OUTPUT) == []
        both = node_logs(second, tail=200_000)
        assert f"resuming from checkpoint {resumed}" in both
        assert "[rank 1]" in both  # node 1's rank trained in the second attempt
        assert store.latest_complete() == STEPS
        kind = "sharded (FSDP2)" if sharded else "replicated (DDP)"
        print(f"{kind}: resumed from {resumed}; {STEPS} steps; {elapsed:.0f} s in all")
