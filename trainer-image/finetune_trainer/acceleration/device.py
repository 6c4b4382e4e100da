"""The hardware one rank trains on: the one description every decision about it reads.

:meth:`DeviceInfo.detect` looks at this process's GPU (or the CPU) once, at the start of a run;
the planner, the model loader and the trainer's arguments all take that description, so tests
plan for an H200 on a laptop by writing one down. Imports torch lazily: the planner stays
importable (and testable) without it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from finetune_api.spec import Method

from finetune_trainer.errors import UnsupportedHardware


@dataclass(frozen=True)
class DeviceInfo:
    """The accelerator one rank trains on."""

    type: Literal["cuda", "cpu", "mps", "xpu"] = "cpu"
    name: str = "cpu"
    total_memory_bytes: int = 0
    bf16: bool = False
    compute_capability: tuple[int, int] = (0, 0)
    sm_count: int = 0  # streaming multiprocessors (0: unknown)
    # Host memory this process may use (its share of a pod's memory limit, else of the
    # machine's RAM); what frozen weights streamed from host memory may pin. 0: unknown,
    # nothing is streamed.
    host_memory_bytes: int = 0
    # bitsandbytes is installed (QLoRA's 4-bit and int8 bases need it, on a CUDA GPU).
    bitsandbytes: bool = False

    @property
    def cuda(self) -> bool:
        """Whether this is a CUDA GPU (the only accelerator the trainer plans for)."""
        return self.type == "cuda"

    @classmethod
    def detect(cls) -> DeviceInfo:
        """This rank's CUDA device (``LOCAL_RANK``), or the CPU when there is none."""
        import torch

        bitsandbytes = importlib.util.find_spec("bitsandbytes") is not None
        if not torch.cuda.is_available():
            return cls(bitsandbytes=bitsandbytes)
        index = local_rank()
        props = torch.cuda.get_device_properties(index)
        return cls(
            type="cuda",
            name=str(props.name),
            total_memory_bytes=int(props.total_memory),
            bf16=bool(torch.cuda.is_bf16_supported()),
            compute_capability=(int(props.major), int(props.minor)),
            sm_count=int(props.multi_processor_count),
            host_memory_bytes=rank_host_memory_bytes(),
            bitsandbytes=bitsandbytes,
        )


def local_rank() -> int:
    """This process's GPU index on its node (torchrun sets ``LOCAL_RANK``)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_host_memory_bytes(env: Mapping[str, str] | None = None) -> int:
    """This rank's share of the node's host memory: the ``LOCAL_WORLD_SIZE`` ranks torchrun
    starts on one node (one pod) share its memory, and under DDP each would pin its own copy
    of the weights it streams, so each plans with an equal part."""
    env = os.environ if env is None else env
    ranks = int(env.get("LOCAL_WORLD_SIZE", "").strip() or 1)
    return host_memory_bytes() // max(ranks, 1)


def host_memory_bytes() -> int:
    """The memory this process may use: its cgroup's limit (a pod's ``resources.limits.memory``)
    when lower than the machine's RAM, else the RAM; 0 when neither can be read."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 0
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max": no limit
            return min(int(text), physical) if physical else int(text)
    return physical


def check_quantization(method: Method, device: DeviceInfo) -> None:
    """bitsandbytes QLoRA needs the package on a CUDA GPU: refuse clearly before any download.
    The Float8 base (8 bits, format float8) runs anywhere."""
    if method.type != "qlora" or method.float8_base:
        return
    if not device.cuda:
        raise UnsupportedHardware(
            "spec.method.type: qlora needs a CUDA GPU (bitsandbytes 4/8-bit quantization runs "
            "on GPUs only) and this machine has none. Use type: lora on CPUs, or set "
            "spec.resources.gpus >= 1."
        )
    if not device.bitsandbytes:
        raise UnsupportedHardware(
            "spec.method.type: qlora needs the bitsandbytes package, which is not installed in "
            "this trainer image. Use the default trainer image, or `pip install bitsandbytes`."
        )
