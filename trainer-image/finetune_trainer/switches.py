"""The trainer's tuning switches: ``FTJ_*`` environment variables that change how a run is made
fast, never what it computes for the user's spec.

Each switch is declared once in :data:`SWITCHES` (name, type, default, help text). That one
declaration feeds :meth:`TrainerSwitches.from_env`, which refuses a malformed value with a message
naming the variable, and ``ftj docs`` (docs/reference.md), so a switch cannot exist without its
documentation. Most are bench ablations (bench/NOTES.md); a pod is started without any of them.

They are read once, when the run starts (:func:`load`), not when a module is imported: the
planner takes them as its arguments, and the few kernels that consult one at run time
(:func:`active`) all see the same values. Tests and the bench change them with
:func:`override`, not by editing ``os.environ`` mid-run. The pod's contract variables (where the
manifest is, the progress port: ``FTJ_MANIFEST``...) are not switches; they are part of the
operator-trainer contract.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Literal

SwitchType = Literal["bool", "auto-bool", "int", "float"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class SwitchError(ValueError):
    """A ``FTJ_*`` switch holds a value the trainer can't read."""


@dataclass(frozen=True)
class Switch:
    """One switch: its variable, the :class:`TrainerSwitches` field it sets, and its docs."""

    name: str
    field: str
    type: SwitchType
    help: str


# Every switch, in the order ``ftj docs`` lists them. Defaults are the TrainerSwitches fields'.
SWITCHES: Final[tuple[Switch, ...]] = (
    Switch(
        "FTJ_MEMORY_BUDGET_GIB",
        "memory_budget_gib",
        "float",
        "GPU memory the plan may use, in GiB; overrides spec.resources.gpuMemoryBudget "
        "(the bench plans for smaller cards with it). Unset: the spec's budget, else 85% of "
        "the card.",
    ),
    Switch(
        "FTJ_SHARD_WEIGHTS",
        "shard_weights",
        "auto-bool",
        "1: shard the base weights with FSDP2 even where they fit one GPU (even on one rank); "
        "0: never. Unset: only when the model does not fit one GPU.",
    ),
    Switch(
        "FTJ_MICRO_EXAMPLES",
        "micro_examples",
        "int",
        "Examples per micro-step, pinned (a divisor of batchSize x gradientAccumulationSteps; "
        "a bench ablation). Unset or 0: the planner chooses.",
    ),
    Switch(
        "FTJ_TORCH_COMPILE",
        "torch_compile",
        "bool",
        "torch.compile the decoder layers (GPU only; measured no faster, more memory).",
    ),
    Switch(
        "FTJ_LIGER",
        "liger",
        "bool",
        "Liger's fused RMSNorm, SwiGLU and RoPE kernels where liger-kernel is installed.",
    ),
    Switch(
        "FTJ_FUSED_LORA",
        "fused_lora",
        "bool",
        "The fused LoRA forward (no dropout copies kept for the backward); 0: peft's own.",
    ),
    Switch(
        "FTJ_FUSED_NF4",
        "fused_nf4",
        "bool",
        "QLoRA 4-bit in bf16: unquantized weights stay bf16 under the fused LoRA forward; "
        "0: peft's QLoRA recipe (fp32).",
    ),
    Switch(
        "FTJ_INT8_HALF_COMPUTE",
        "int8_half_compute",
        "bool",
        "bitsandbytes 8-bit base layers compute in the training dtype, not fp32.",
    ),
    Switch(
        "FTJ_STREAM_WEIGHTS",
        "stream_weights",
        "bool",
        "Under a memory budget on a GPU (never sharded), frozen weights of recomputed layers "
        "may stay in pinned host memory and be copied in one layer ahead of use.",
    ),
    Switch(
        "FTJ_STREAM_WEIGHTS_DDP",
        "stream_weights_ddp",
        "bool",
        "1: several DDP ranks may stream too, each its own copy. Off until it has run on "
        "several GPUs (bench/NOTES.md, issue 25).",
    ),
    Switch(
        "FTJ_RECOMPUTE_SKIP",
        "recompute_skip",
        "bool",
        "A recomputed llama-style layer skips its MLP's down projection, whose output the "
        "backward never reads; 0: recompute everything.",
    ),
    Switch(
        "FTJ_TRITON_DROPOUT",
        "triton_dropout",
        "bool",
        "LoRA dropout masks drawn by the Triton kernel on GPUs; 0: torch's generator.",
    ),
    Switch(
        "FTJ_PAIRED_DROPOUT",
        "paired_dropout",
        "bool",
        "The LoRA backward draws its two dropout masks in one Triton kernel; 0: two kernels.",
    ),
    Switch(
        "FTJ_FUSED_DROPOUT_GEMM",
        "fused_dropout_gemm",
        "bool",
        "The LoRA dropout is applied inside the adapter's rank-r GEMMs (Triton, the same "
        "masks): the dropped input is never written, so the forward reads each input once and "
        "the backward makes one pass over the input and its gradient (1.10x the two-kernel "
        "path on the 7B's widths, bench/NOTES.md session 21); 0: a dropout kernel writes the "
        "dropped copies that the GEMMs read.",
    ),
    Switch(
        "FTJ_DROPOUT_HALVES",
        "dropout_halves",
        "int",
        "16-bit numbers taken from each 32-bit Philox word by the dropout kernel: 2, or 1 "
        "(as before bench/NOTES.md step 32).",
    ),
    Switch(
        "FTJ_FP8_COMPUTE",
        "fp8_compute",
        "bool",
        "FP8 tensor cores where the GPU has them: a Float8 base's GEMMs and, under precision "
        "auto, a 16-bit LoRA base's forward GEMMs; 0: 16-bit GEMMs throughout.",
    ),
    Switch(
        "FTJ_FP8_FORWARD_16BIT",
        "fp8_forward_16bit",
        "bool",
        "Under precision auto on an FP8-capable GPU, a 16-bit LoRA base's forward GEMMs run on "
        "FP8 tensor cores (weights stay bf16; gradients bf16); 0: bf16 forward GEMMs "
        "(default 1: +6% tok/s on an H100, loss within a data draw's, bench/NOTES.md session 17).",
    ),
    Switch(
        "FTJ_FP8_BACKWARD_16BIT",
        "fp8_backward_16bit",
        "bool",
        "With FP8 forward GEMMs on a 16-bit LoRA base, each MLP down projection's "
        "input-gradient GEMM runs on FP8 tensor cores too (the gradient quantized per token, "
        "the weight per input channel; every other gradient stays bf16; +2.5-3.3% tok/s on "
        "an H100, final loss within another initialisation's, bench/NOTES.md sessions 20-21); "
        "0: bf16 input gradients.",
    ),
    Switch(
        "FTJ_FP8_BACKWARD",
        "fp8_backward",
        "bool",
        "A Float8 base's input gradients on FP8 tensor cores too (quantizes gradients).",
    ),
    Switch(
        "FTJ_PACKED_MASK_SCAN",
        "packed_mask_scan",
        "bool",
        "Keep transformers' packed-sequence scan (a device sync) at every forward under the "
        "varlen attention.",
    ),
    Switch(
        "FTJ_RANGED_DOWNLOAD",
        "ranged_download",
        "bool",
        "0: download an s3:// model with boto3's managed transfer, every file before the load "
        "starts (before issue 24); 1: ranged GETs on 32 threads (8 per file x 4 files), "
        "written in place, in the background.",
    ),
    Switch(
        "FTJ_LOAD_WHILE_DOWNLOADING",
        "load_while_downloading",
        "bool",
        "1 (default): read each safetensors tensor onto the GPU as soon as its bytes are in "
        "(an H100 pulling a 7B from S3: first step 1.16x the local-disk time, "
        "bench/NOTES.md session 17); 0: load the base weights once the download has finished.",
    ),
)


@dataclass(frozen=True)
class TrainerSwitches:
    """The switches' values for one run (the defaults: what a pod runs with)."""

    memory_budget_gib: float | None = None
    shard_weights: bool | None = None
    micro_examples: int | None = None
    torch_compile: bool = False
    liger: bool = True
    fused_lora: bool = True
    fused_nf4: bool = True
    int8_half_compute: bool = True
    stream_weights: bool = True
    stream_weights_ddp: bool = False
    recompute_skip: bool = True
    triton_dropout: bool = True
    paired_dropout: bool = True
    fused_dropout_gemm: bool = True
    dropout_halves: Literal[1, 2] = 2
    fp8_compute: bool = True
    fp8_forward_16bit: bool = True
    fp8_backward_16bit: bool = True
    fp8_backward: bool = False
    packed_mask_scan: bool = False
    ranged_download: bool = True
    load_while_downloading: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrainerSwitches:
        """The switches set in ``environ`` (``os.environ`` by default); unset or empty ones
        keep their defaults. Raises :class:`SwitchError` naming the variable of a bad value."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for switch in SWITCHES:
            raw = env.get(switch.name, "").strip()
            if raw:
                values[switch.field] = _parse(switch, raw)
        if values.get("micro_examples") == 0:
            values["micro_examples"] = None
        if values.get("dropout_halves", 2) not in (1, 2):
            raise SwitchError(f"FTJ_DROPOUT_HALVES={values['dropout_halves']}: expected 1 or 2")
        return cls(**values)  # type: ignore[arg-type]  # fields typed by SWITCHES

    def defaults_text(self, switch: Switch) -> str:
        """The default of ``switch`` as the docs show it."""
        value = getattr(self, switch.field)
        if value is None:
            return "auto" if switch.type == "auto-bool" else "unset"
        if isinstance(value, bool):
            return "1" if value else "0"
        return str(value)


def _parse(switch: Switch, raw: str) -> bool | int | float:
    if switch.type in ("bool", "auto-bool"):
        word = raw.lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise SwitchError(f"{switch.name}={raw!r}: expected 1 or 0")
    try:
        number = int(raw) if switch.type == "int" else float(raw)
    except ValueError:
        raise SwitchError(f"{switch.name}={raw!r}: expected a {switch.type}") from None
    if number < 0:
        raise SwitchError(f"{switch.name}={raw!r}: must not be negative")
    return number


_active: TrainerSwitches | None = None


def load(environ: Mapping[str, str] | None = None) -> TrainerSwitches:
    """Read the switches from the environment, at the start of a run; they stay in force
    until the next ``load`` (what :func:`active` returns)."""
    global _active
    _active = TrainerSwitches.from_env(environ)
    return _active


def active() -> TrainerSwitches:
    """The switches in force: the last :func:`load`, or the environment's on first use."""
    return _active if _active is not None else load()


@contextlib.contextmanager
def override(**changes: object) -> Iterator[TrainerSwitches]:
    """The active switches with ``changes`` (field names) for the block (tests, bench)."""
    global _active
    before = active()
    _active = dataclasses.replace(before, **changes)  # type: ignore[arg-type]
    try:
        yield _active
    finally:
        _active = before


def documentation() -> list[tuple[str, str, str, str]]:
    """``(name, type, default, help)`` of every switch, for ``ftj docs``."""
    defaults = TrainerSwitches()
    kinds = {"bool": "0 or 1", "auto-bool": "0 or 1", "int": "integer", "float": "number"}
    return [(s.name, kinds[s.type], defaults.defaults_text(s), s.help) for s in SWITCHES]
