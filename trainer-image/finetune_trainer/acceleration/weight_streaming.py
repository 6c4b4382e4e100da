"""Frozen base weights that live in host memory and visit the GPU one decoder layer at a time.

Why: in a LoRA run the frozen base is the largest thing on the GPU that never changes (a 7B's
bf16 weights are 14.2 GiB). Under a memory budget it leaves little room for activations, so a
plan had to recompute every layer in small micro-steps (the 7B under 18 GiB: 8.4k tok/s,
bench/NOTES.md step 19) or store the base in 8 bits, which changes its numerics. A recomputed
layer reads its weights in two short windows per micro-step: its forward, and its
recomputation plus backward. In between they need not be on the GPU. Kept in pinned host
memory, they are copied in on a side stream one streamed layer ahead of use while the layers
before it compute. One layer of a 7B is 466 MB, ~10 ms over PCIe Gen5, which is about its forward
at 8k tokens and a third of its recomputation plus backward. The planner (search.py)
streams only as many layers as the budget needs and spreads them out, so the copies run behind
the resident layers' work.

How:

* The streamed layers' frozen linear weights (and biases) stop being registered parameters, so
  ``model.to``, the Trainer's device placement and DDP leave them where they are. They become
  plain attributes that point at their pinned host copy while the layer is idle.
* A forward pre-hook on every decoder layer puts the GPU copy in place just before a streamed
  layer runs, and so does a wrapper around the function a recomputed layer runs under
  checkpointing (transformers checkpoints ``forward``, inside the module's hooks, so only the
  wrapper sees the recomputation). Either starts the copy of the next streamed layer in the
  direction of travel: upward in the forward, downward in the backward's recomputations
  (``recompute.recomputing()`` tells them apart). It drops the copies nobody needs any more,
  so at most two streamed layers are on the GPU at once.
* Only recomputed (checkpointed) layers stream. Their forward saves nothing for the backward,
  and their recomputation saves its own references to the GPU copy (checkpoint keeps detached
  aliases), so dropping ours never pulls a tensor from under the backward.

Copies are allocated on the compute stream and written on the side stream after it has waited
for the compute queued so far (the allocator may hand out a block that queued kernels still
read). The compute stream waits for the copy before the layer runs, or before a never-used
copy is freed.

Under DDP (several ranks, each with the whole model) every rank streams its own copy, which
is correct because DDP only ever touches registered parameters and buffers: at wrap time it
broadcasts rank 0's (``named_parameters``/``named_buffers``; NCCL could not broadcast pinned
host tensors anyway), checks that they sit on one device type, and all-reduces the gradients
of those that train. Streamed weights are none of these: they are frozen and unregistered
before the Trainer wraps the model, so DDP neither sees nor syncs them, as ``float8_base``
keeps its frozen e4m3 tensors out of the sync. They need no sync: every rank loads the same
checkpoint, and they never change. The adapter (registered, trainable) is broadcast and
all-reduced as without streaming. Each rank pins its own copies, so each plans with its share
of the node's host memory (``device.rank_host_memory_bytes``). Not under FSDP: a sharded
parameter is FSDP's to gather (search.streamable).

``FTJ_STREAM_WEIGHTS=0`` stops the planner from streaming (a bench ablation,
plan.plan_for_model).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from finetune_trainer.acceleration import recompute


def streamed_indices(checkpointed: int, streamed: int) -> list[int]:
    """Which of the first ``checkpointed`` decoder layers (the recomputed ones) stream: spread
    evenly, so each copy has resident layers' work to hide behind, ending at the last one."""
    streamed = min(max(0, streamed), checkpointed)
    return [int((k + 1) * checkpointed / streamed) - 1 for k in range(streamed)]


@dataclass
class _Tensor:
    """One frozen tensor of a streamed layer: where it is read from, and its host copy."""

    module: torch.nn.Module
    name: str
    host: torch.Tensor


@dataclass
class _Copy:
    """A streamed layer's tensors on the GPU, and the copy's completion event."""

    tensors: list[torch.Tensor]
    ready: Any = None  # torch.cuda.Event, or None on CPUs
    waited: bool = field(default=False)


class WeightStreamer:
    """Streams the frozen linear weights of ``layers[i]`` for each ``i`` in ``indices``.

    ``device``: where the layers compute. On a CPU device the "copies" are plain clones (the
    bookkeeping is what the CPU tests check; a CPU run gains nothing from it).
    """

    def __init__(self, layers: Sequence[torch.nn.Module], indices: list[int], device: Any) -> None:
        self.device = torch.device(device)
        self.order = sorted(set(indices))
        cuda = self.device.type == "cuda"
        # torch.cuda.Stream and Event are untyped in torch's own annotations.
        self._side = torch.cuda.Stream(self.device) if cuda else None  # type: ignore[no-untyped-call]
        self._tensors = {i: _move_to_host(layers[i], pin=cuda) for i in self.order}
        self._present: dict[int, _Copy] = {}
        self.host_bytes = sum(
            t.host.numel() * t.host.element_size() for ts in self._tensors.values() for t in ts
        )
        self.copies = 0  # layer copies started (tests, logs)
        self._handles = [
            layer.register_forward_pre_hook(functools.partial(self._before_layer, index))
            for index, layer in enumerate(layers)
        ]
        self._checkpointed: dict[Any, Any] = {}
        for index, layer in enumerate(layers):
            checkpoint = getattr(layer, "_gradient_checkpointing_func", None)
            if checkpoint is not None:
                self._checkpointed[layer] = checkpoint
                wrapped = functools.partial(self._checkpoint, index, checkpoint)
                setattr(layer, "_gradient_checkpointing_func", wrapped)  # noqa: B010

    def resident(self) -> list[int]:
        """The streamed layers whose copies are on the device now."""
        return sorted(self._present)

    def placed(self, index: int) -> bool:
        """Whether streamed layer ``index`` reads its device copies now (not host memory)."""
        copy = self._present.get(index)
        return copy is not None and all(
            getattr(t.module, t.name) is tensor
            for t, tensor in zip(self._tensors[index], copy.tensors, strict=True)
        )

    def remove(self) -> None:
        """Stop streaming: hooks off, every streamed tensor back to a registered parameter on
        the device (tests; a run keeps streaming until it ends)."""
        for handle in self._handles:
            handle.remove()
        for layer, checkpoint in self._checkpointed.items():
            setattr(layer, "_gradient_checkpointing_func", checkpoint)  # noqa: B010
        for index in list(self._present):
            self._drop(index)
        for tensors in self._tensors.values():
            for t in tensors:
                delattr(t.module, t.name)
                param = torch.nn.Parameter(t.host.to(self.device), requires_grad=False)
                t.module.register_parameter(t.name, param)
        self._tensors.clear()
        self.order = []

    def _checkpoint(self, index: int, checkpoint: Any, function: Any, *args: Any, **kw: Any) -> Any:
        """Checkpoint ``function`` so that it, and so its recomputation, first places layer
        ``index``'s weights (the forward's own pass meets the module hook's work done)."""

        def placed_first(*inner: Any, **inner_kw: Any) -> Any:
            self._before_layer(index)
            return function(*inner, **inner_kw)

        return checkpoint(placed_first, *args, **kw)

    def _before_layer(self, index: int, *hook_args: Any) -> None:
        if not self.order:  # nothing streams (or ``remove`` ran)
            return
        backward = recompute.recomputing()
        upcoming = self._upcoming(index, backward)
        keep = {upcoming} | ({index} if index in self._tensors else set())
        for other in [i for i in self._present if i not in keep]:
            self._drop(other)
        if index in self._tensors:
            self._use(index)
        if upcoming not in self._present:
            self._fetch(upcoming)

    def _upcoming(self, index: int, backward: bool) -> int:
        """The next streamed layer after ``index`` in the direction of travel; past the last,
        the last one (it is where the other direction starts)."""
        if backward:
            below = bisect.bisect_left(self.order, index)
            return self.order[below - 1] if below > 0 else self.order[0]
        above = bisect.bisect_right(self.order, index)
        return self.order[above] if above < len(self.order) else self.order[-1]

    def _fetch(self, index: int) -> None:
        hosts = [t.host for t in self._tensors[index]]
        self.copies += 1
        if self._side is None:
            self._present[index] = _Copy([h.clone() for h in hosts])
            return
        compute = torch.cuda.current_stream(self.device)
        tensors = [torch.empty_like(h, device=self.device) for h in hosts]
        self._side.wait_stream(compute)
        with torch.cuda.stream(self._side):
            for tensor, host in zip(tensors, hosts, strict=True):
                tensor.copy_(host, non_blocking=True)
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record(self._side)
        self._present[index] = _Copy(tensors, ready)

    def _use(self, index: int) -> None:
        if index not in self._present:
            self._fetch(index)
        copy = self._present[index]
        self._wait(copy)
        for t, tensor in zip(self._tensors[index], copy.tensors, strict=True):
            object.__setattr__(t.module, t.name, tensor)

    def _drop(self, index: int) -> None:
        copy = self._present.pop(index)
        self._wait(copy)  # a copy still in flight must land before its block is reused
        for t in self._tensors[index]:
            object.__setattr__(t.module, t.name, t.host)

    def _wait(self, copy: _Copy) -> None:
        if copy.ready is not None and not copy.waited:
            torch.cuda.current_stream(self.device).wait_event(copy.ready)
        copy.waited = True


def _move_to_host(layer: torch.nn.Module, pin: bool) -> list[_Tensor]:
    """Unregister ``layer``'s frozen linear weights and biases and keep them in (pinned) host
    memory; the LoRA matrices (trainable) and the norms (small) stay where they are."""
    moved: list[_Tensor] = []
    for module in layer.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        for name in ("weight", "bias"):
            param = module._parameters.get(name)
            if param is None or param.requires_grad:
                continue
            del module._parameters[name]
            data = param.detach()
            host = torch.empty(data.shape, dtype=data.dtype, device="cpu", pin_memory=pin)
            host.copy_(data)
            object.__setattr__(module, name, host)
            moved.append(_Tensor(module, name, host))
    return moved


def stream_frozen_weights(model: Any, plan: Any, device: Any) -> WeightStreamer:
    """Stream the frozen weights of the layers ``plan`` says (``plan.streamed_layers`` of its
    ``checkpointed_layers``) and move everything else to ``device``; call it once the model is
    whole (after peft and the fused LoRA forward). Returns the streamer (kept on the model)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    indices = streamed_indices(plan.checkpointed_layers, plan.streamed_layers)
    streamer = WeightStreamer(layers, indices, device)
    model.to(device)  # a model loaded through host memory: the rest goes to the GPU now
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()  # the streamed weights' blocks, for the caching allocator
    model._ftj_weight_streamer = streamer
    return streamer
