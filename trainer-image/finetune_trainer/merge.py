"""Merging the adapter into the base model: one folder anyone can load without peft.

The base is always loaded afresh from disk in ``spec.output.mergeDtype``, never reused from
training: after QLoRA the training copy is 4/8-bit, and merging into quantized weights would
round the adapter away (this is the "reload the base in 16-bit" step of the QLoRA recipe).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from finetune_trainer.model import TORCH_DTYPES

log = logging.getLogger("finetune_trainer")

DEFAULT_MAX_SHARD_SIZE = "5GB"


def merge_adapter(
    base_model_dir: Path,
    adapter_dir: Path,
    out_dir: Path,
    *,
    dtype: str,
    tokenizer: Any,
    max_shard_size: str = DEFAULT_MAX_SHARD_SIZE,
    trust_remote_code: bool = False,
) -> Path:
    """Write base + adapter as safetensors shards, with tokenizer and generation config.

    Merging happens on the GPU when there is one (it is a matmul per adapted layer), and
    on CPU otherwise; the result is the same.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch_dtype = TORCH_DTYPES[dtype]
    device_map = "auto" if torch.cuda.is_available() else None
    base = AutoModelForCausalLM.from_pretrained(
        base_model_dir,
        dtype=torch_dtype,
        device_map=device_map,
        trust_remote_code=trust_remote_code,
    )
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged = merged.to(torch_dtype)
    merged.config.use_cache = True
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out_dir)
    if merged.generation_config is not None:
        merged.generation_config.save_pretrained(out_dir)
    log.info("merged model written to %s (%s)", out_dir, dtype)
    del merged, base
    return out_dir
