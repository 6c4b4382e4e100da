"""Let accelerate shard with FSDP2 on CPUs, for the trainer's FSDP tests (never in images).

accelerate only turns an FSDP plugin into ``DistributedType.FSDP`` on accelerators; on CPUs
it builds a MULTI_CPU (gloo, DDP) state and drops the plugin. PyTorch's FSDP2 itself runs on
CPUs over gloo, so with this one switch the trainer's whole sharded path (meta-device loading
on rank 1, accelerate's ``fully_shard`` per decoder layer, sharded checkpoints, gathered
adapter, lock-step generation) runs on two CPU processes. Python imports ``sitecustomize``
at start-up from the first folder on ``sys.path`` that has one, so a test puts this folder
on the trainer processes' ``PYTHONPATH``.
"""

from __future__ import annotations

import os
from typing import Any


def _allow_fsdp_on_cpu() -> None:
    import accelerate.state as state
    from accelerate.utils import DistributedType

    original = state.AcceleratorState.__init__

    def init(self: Any, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    state.AcceleratorState.__init__ = init


if os.environ.get("FTJ_TEST_FSDP_ON_CPU") == "1":
    _allow_fsdp_on_cpu()
