"""Evaluation: held-out losses, and sample answers before and after training.

Losses say whether the model fits the data; the sample answers say whether it learned what
the user wanted (a new name, a format, a tone), which a loss number can't show. Both go into
metrics.json, the "before" answers taken from the freshly wrapped model (its adapter starts
as the identity, so it still answers as the base model).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

log = logging.getLogger("finetune_trainer")

MAX_SAMPLE_PROMPTS = 8
MAX_NEW_TOKENS = 128


def held_out_loss(trainer: Any, dataset: Any, prefix: str) -> float | None:
    """Token-weighted loss of ``dataset`` (``None`` without one), across all ranks."""
    if dataset is None or len(dataset) == 0:
        return None
    metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix)
    loss = metrics.get(f"{prefix}_loss")
    return None if loss is None or math.isnan(loss) else float(loss)


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[Any],
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    synced: bool = False,
) -> list[dict[str, str]]:
    """Greedy answers to up to 8 held-out prompts: ``{"prompt", "expected", "answer"}``.

    Greedy, so that before and after are comparable and a rerun gives the same text. One
    prompt at a time: no padding side effects, and eight prompts cost seconds. ``synced``:
    every rank calls this with the same prompts (weights sharded with FSDP: each forward needs
    all ranks), and ranks keep stepping until all have finished.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
    results = []
    for item in prompts[:MAX_SAMPLE_PROMPTS]:
        encoded = tokenizer(item.prompt, return_tensors="pt", add_special_tokens=False).to(device)
        output = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
            synced_gpus=synced,
        )
        answer = tokenizer.decode(
            output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True
        )
        results.append({"prompt": item.prompt, "expected": item.expected, "answer": answer.strip()})
    if was_training:
        model.train()
    return results
