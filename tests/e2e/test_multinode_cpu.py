"""Two "nodes" (127.0.0.2 and 127.0.0.3) train one tiny job with torchrun + gloo on CPUs and
end with the adapter a single process gets from the same data (multi-node path of issue 6).

Each node is one ``torchrun --nnodes 2 --node-rank N --rdzv-backend c10d --rdzv-endpoint
127.0.0.2:PORT`` agent with one process, as the operator's Indexed Job starts pods (node rank =
completion index, rendezvous at index 0 behind the headless Service). The training itself is the
trainer's own code path (``prepare_training``: the plan, the model, the trainer's arguments and
the trainer, as ``run_job`` sets them up): data sharded per rank by the Trainer's distributed
sampler, gradients all-reduced by DDP over gloo, and only rank 0 writes the result.

The whole dataset is one optimizer step (4 examples: 2 per rank, or 4 in the single process),
and LoRA dropout is 0, so both runs compute the same gradients up to summation order.

This file doubles as the worker script torchrun launches (``__main__``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = 4
STEPS = 3


def _train(model_dir: Path, out: Path, batch_size: int) -> None:
    """One training run with the trainer's components; rank 0 writes loss + adapter weights."""
    import tempfile
    from types import SimpleNamespace

    import torch
    from datasets import Dataset
    from finetune_api.spec import FineTuneJobSpec
    from finetune_trainer.acceleration import DeviceInfo
    from finetune_trainer.data import make_collator
    from finetune_trainer.model import load_tokenizer
    from finetune_trainer.train import prepare_training, run_training

    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"uri": str(model_dir)},
            "datasets": [{"uri": "inline.jsonl"}],
            "method": {"lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "training": {
                "maxSteps": STEPS,
                "batchSize": batch_size,
                "gradientAccumulationSteps": 1,
                "learningRate": 1e-2,
                "loggingSteps": 1,
                "packing": True,
            },
            "output": {"uri": tempfile.mkdtemp()},
        }
    )
    tokenizer = load_tokenizer(model_dir)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(EXAMPLES):
        ids = torch.randint(3, 200, (24 + 8 * i,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": ids})
    data = SimpleNamespace(train=Dataset.from_list(rows), validation=None)
    # The adapter's initial A matrices come from the seeded global RNG (DDP then broadcasts
    # rank 0's).
    trainer = prepare_training(
        model_dir,
        spec,
        DeviceInfo.detect(),
        tokenizer=tokenizer,
        data=data,
        collator=make_collator(tokenizer, packing=True),
        output_dir=Path(tempfile.mkdtemp()),
        mean_example_tokens=36,
        overrides={"save_strategy": "no"},
    ).trainer
    result = run_training(trainer, None, None)
    if int(os.environ.get("RANK", "0")) == 0:
        weights = {
            name: param.detach().float().flatten().tolist()
            for name, param in trainer.model.named_parameters()
            if param.requires_grad
        }
        losses = [e["loss"] for e in result.log_history if "loss" in e]
        world = int(os.environ.get("WORLD_SIZE", "1"))
        out.write_text(json.dumps({"world_size": world, "losses": losses, "weights": weights}))


def _tiny_model(root: Path) -> Path:
    """A 2-layer Qwen2 with random weights and a word-level tokenizer (no hub needed)."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, 200)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    cfg = Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=200, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(0)
    path = root / "tiny"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO), str(REPO / "trainer-image"), str(REPO / "operator")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    env.update(
        {
            "CUDA_VISIBLE_DEVICES": "",
            "GLOO_SOCKET_IFNAME": "lo",  # the loopback addresses live on lo
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "FTJ_PROGRESS_PORT": "0",
            # transformers only builds a multi-CPU (gloo) accelerate state when told to; on
            # GPUs the same code path takes NCCL without it.
            "ACCELERATE_USE_CPU": "true",
        }
    )
    return env


def test_two_nodes_match_one_process(tmp_path: Path) -> None:
    import pytest

    pytest.importorskip("trl")
    model_dir = _tiny_model(tmp_path)
    script = str(Path(__file__).resolve())

    single = tmp_path / "single.json"
    subprocess.run(
        [sys.executable, script, str(model_dir), str(single), str(EXAMPLES)],
        env=_env(),
        check=True,
        timeout=300,
    )

    multi = tmp_path / "multi.json"
    port = _free_port("127.0.0.2")
    nodes = []
    for rank, addr in enumerate(("127.0.0.2", "127.0.0.3")):
        cmd = [
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
            # As the operator renders it: c10d rendezvous hosted by node 0. Both addresses are
            # loopback here, so who hosts the store is said explicitly (in pods, node 0
            # recognises its own name in the endpoint).
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.2:{port}",
            "--rdzv-id", "multinode-cpu-test", "--rdzv-conf", f"is_host={int(rank == 0)}",
            "--local-addr", addr,
            script, str(model_dir), str(multi), str(EXAMPLES // 2),
        ]  # fmt: skip
        nodes.append(subprocess.Popen(cmd, env=_env()))
    codes = [node.wait(timeout=300) for node in nodes]
    assert codes == [0, 0]

    one, two = json.loads(single.read_text()), json.loads(multi.read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert len(two["losses"]) == len(one["losses"]) == STEPS
    for a, b in zip(one["losses"], two["losses"], strict=True):
        assert abs(a - b) <= 1e-3 * abs(a), (one["losses"], two["losses"])
    assert one["weights"].keys() == two["weights"].keys()
    worst = 0.0
    for name, w1 in one["weights"].items():
        w2 = two["weights"][name]
        scale = max(max(abs(x) for x in w1), 1e-6)
        worst = max(worst, max(abs(x - y) for x, y in zip(w1, w2, strict=True)) / scale)
    assert worst < 1e-3, f"adapter weights differ by {worst:.2e} (relative)"


try:
    import pytest as _pytest

    test_two_nodes_match_one_process = _pytest.mark.e2e(test_two_nodes_match_one_process)
except ImportError:  # pragma: no cover - the worker process needs no pytest
    pass


if __name__ == "__main__":
    sys.path[:0] = [str(REPO), str(REPO / "trainer-image"), str(REPO / "operator")]
    _train(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
    from finetune_trainer.__main__ import exit_rank, leave_process_group

    leave_process_group()  # as the trainer's entry point ends a rank
    exit_rank(0)
