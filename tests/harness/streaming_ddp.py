"""Two ranks train a LoRA under DDP, with or without streamed frozen weights: the workload of
the streaming-under-DDP tests (CPUs over gloo in ``tests/unit/acceleration``, GPUs over NCCL in
``tests/gpu/test_streaming_ddp_gpu.py``).

The model is the tiny Qwen2 of the streaming tests under a fused LoRA (dropout 0), every layer
recomputed, the listed layers' frozen weights streamed from host memory (pinned on GPUs), then
wrapped in ``DistributedDataParallel`` as the Trainer wraps it: after streaming, so DDP's
start-up broadcast and its gradient all-reduce see only registered tensors. Each rank draws its
own batches; rank 0 writes the per-step losses (the mean over ranks) and the adapter's final
weights.

Run as a torchrun worker: ``python -m torch.distributed.run --standalone --nproc-per-node 2
-m tests.harness.streaming_ddp OUT SHAPE_JSON STREAMED STEPS SEQ``, where STREAMED is a
comma-separated list of layer indices (empty: nothing streams).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def train(shape: dict[str, int], streamed: list[int], steps: int, seq: int, out: Path) -> None:
    """``steps`` optimizer steps in the process group torchrun set up (NCCL on GPUs, gloo on
    CPUs); rank 0 writes ``out`` (losses, JSON) and ``out.pt`` (adapter weights)."""
    import torch
    import torch.distributed as dist
    from finetune_trainer.acceleration.apply import apply_gradient_checkpointing
    from finetune_trainer.acceleration.lora_fused import fuse_lora_linears
    from finetune_trainer.acceleration.weight_streaming import WeightStreamer

    from tests.harness.tiny_lora import tiny_qwen2, with_lora

    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = torch.bfloat16 if cuda else None
    model = with_lora(tiny_qwen2(shape, str(device), dtype), 8, 0.0, 0.02)
    fuse_lora_linears(model)
    layers = shape["num_hidden_layers"]
    plan = types.SimpleNamespace(gradient_checkpointing=True, checkpointed_layers=layers)
    apply_gradient_checkpointing(model, plan)
    streamer = None
    if streamed:
        streamer = WeightStreamer(list(model.get_base_model().model.layers), streamed, device)
        if cuda:
            torch.cuda.empty_cache()
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if cuda else None)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-3)
    batches = torch.Generator().manual_seed(100 + rank)  # each rank its own examples
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, shape["vocab_size"], (2, seq), generator=batches).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = ddp(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean = loss.detach().float().reshape(1)
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
    if rank == 0:
        adapter = {
            n: p.detach().float().cpu() for n, p in model.named_parameters() if p.requires_grad
        }
        torch.save(adapter, f"{out}.pt")
        resident = streamer.resident() if streamer is not None else []
        peak = torch.cuda.max_memory_allocated() if cuda else 0
        host = streamer.host_bytes if streamer is not None else 0
        out.write_text(
            json.dumps(
                {
                    "world_size": world,
                    "losses": losses,
                    "resident": resident,
                    "host_bytes": host,
                    "peak_bytes": peak,
                }
            )
        )
    dist.barrier()
    dist.destroy_process_group()


def run(
    out: Path, shape: dict[str, int], streamed: list[int], steps: int, seq: int, cpu: bool
) -> dict[str, Any]:
    """The worker under ``torchrun --standalone --nproc-per-node 2``; rank 0's results
    (``adapter``: the final adapter weights by name)."""
    import torch

    env = dict(os.environ)
    paths = [str(REPO), str(REPO / "trainer-image"), str(REPO / "operator")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    if cpu:
        env.update(CUDA_VISIBLE_DEVICES="", GLOO_SOCKET_IFNAME="lo")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "tests.harness.streaming_ddp",
        str(out), json.dumps(shape), ",".join(map(str, streamed)), str(steps), str(seq),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result: dict[str, Any] = json.loads(out.read_text())
    result["adapter"] = torch.load(f"{out}.pt")
    return result


if __name__ == "__main__":
    _out, _shape, _streamed, _steps, _seq = sys.argv[1:6]
    train(
        json.loads(_shape),
        [int(i) for i in _streamed.split(",") if i],
        int(_steps),
        int(_seq),
        Path(_out),
    )
