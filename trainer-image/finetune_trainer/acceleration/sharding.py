"""What changes when the base weights are sharded over the ranks (FSDP2).

The plan (plan.py) shards a bf16/fp16 model that does not fit one GPU. Training itself
is the Trainer's (accelerate wraps every decoder layer with ``fully_shard``); this module holds
the few things the rest of the run must do differently, because with sharded weights no rank
holds the whole model any more:

* the Trainer's FSDP arguments: one FSDP unit per decoder layer, rank 0 reads the weights
  and broadcasts the shards, checkpoints hold the adapter only (sharded, DCP);
* anything that runs the model (sample answers) runs on every rank in lock-step, because each
  forward all-gathers weights from all of them;
* the adapter is gathered from its shards on every rank before rank 0 writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def fsdp_arguments(model: Any) -> dict[str, Any]:
    """``TrainingArguments`` keywords that shard ``model`` (a PeftModel) with FSDP2."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layer_classes = sorted(
        {type(m).__name__ for m in model.modules() if isinstance(m, GradientCheckpointingLayer)}
    )
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": layer_classes,
            # Only rank 0 read the weights (model.load_base_model); it broadcasts the shards.
            "cpu_ram_efficient_loading": True,
            # Checkpoints: each rank writes its shard of the adapter and optimizer state (DCP),
            # never a gathered copy of the frozen base.
            "state_dict_type": "SHARDED_STATE_DICT",
            "reshard_after_forward": True,  # full shard: layers are gathered when used
        },
    }


def gathered_adapter_state(model: Any) -> dict[str, Any]:
    """The adapter's weights, whole and on the CPU; every rank must call it (all-gathers)."""
    from peft import get_peft_model_state_dict
    from torch.distributed.tensor import DTensor

    state = get_peft_model_state_dict(model)
    return {
        name: (value.full_tensor() if isinstance(value, DTensor) else value).detach().cpu()
        for name, value in state.items()
    }


def empty_model(config: Any, **kwargs: Any) -> Any:
    """The model of ``config`` with uninitialised parameters, for the ranks that receive their
    shards from rank 0 (accelerate's ``cpu_ram_efficient_loading``).

    Built on the meta device (no memory, no random init), then given ``torch.empty`` storage in
    host memory: untouched pages are never committed, so a 70B costs no RAM here. Meta tensors
    would not do: accelerate maps the optimizer's parameters to their shards by data pointer,
    and every meta tensor's pointer is 0. Buffers stay real (non-persistent ones, such as the
    rotary frequencies, are not broadcast).
    """
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, **kwargs)  # type: ignore[no-untyped-call]  # transformers leaves it untyped
    model.tie_weights()  # as from_pretrained does: the same parameters as rank 0's
    storage: dict[int, Any] = {}  # tied parameters stay one parameter
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if id(param) not in storage:
                empty = torch.empty_like(param, device="cpu")
                storage[id(param)] = torch.nn.Parameter(empty, requires_grad=param.requires_grad)
            module._parameters[name] = storage[id(param)]
    return model


def load_sharded_adapter(model: Any, checkpoint: Path) -> dict[str, Any]:
    """The adapter of a sharded checkpoint (``pytorch_model_fsdp_0/``, written by the Trainer
    under FSDP), whole, into ``model``'s unsharded shapes. Every rank must call it (DCP plans
    the read together)."""
    from peft import get_peft_model_state_dict
    from torch.distributed.checkpoint.state_dict_loader import load

    state = {
        name: value.detach().clone() for name, value in get_peft_model_state_dict(model).items()
    }
    holder = {"model": state}  # how accelerate nests it when it saves
    load(holder, checkpoint_id=str(checkpoint / "pytorch_model_fsdp_0"))
    return holder["model"]


def shard_untrained(trainer: Any) -> None:
    """Shard a model that skips training (its checkpoint is finished) as ``Trainer.train``
    would: evaluation, lock-step generation and the adapter's gathering expect FSDP modules.
    Rank 0's weights are broadcast, so its loaded adapter is what every rank ends with."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    # accelerate shards a model under FSDP2 only together with its optimizer (whose parameters
    # it swaps for the shards); the optimizer is never stepped here.
    trainer.create_optimizer()
    model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.model = trainer.model_wrapped = model
    register_fsdp_forward_method(model, "generate")  # generate() outside forward: gather too
