"""Which node this process trains on, for the work done once per node (checkpoint uploads).

A multi-node job runs one torchrun agent per node (pod); each starts ``LOCAL_WORLD_SIZE``
workers. The files of one checkpoint are spread over the nodes' own scratch folders: every
rank writes its RNG state, and with sharded weights (FSDP) its shard of the adapter and of
the optimizer state, to the local disk of its node. So every node uploads its own part
(``storage.checkpoints``), from one process per node: its local rank 0.

torchrun tells each worker where it runs (``GROUP_RANK``: the node's rank in the rendezvous,
which orders the global ranks, ``GROUP_WORLD_SIZE``: the number of nodes, ``LOCAL_RANK``);
other launchers set ``NODE_RANK``. A process started without a launcher is node 0 of 1.
https://pytorch.org/docs/stable/elastic/run.html#environment-variables
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class NodePlace:
    """Where this process runs: node ``index`` of ``count``, and its rank on that node."""

    index: int
    count: int
    local_rank: int

    @property
    def local_main(self) -> bool:
        """Whether this process does its node's once-per-node work (local rank 0)."""
        return self.local_rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NodePlace:
        """The place torchrun's variables describe (``os.environ`` by default)."""
        env = os.environ if env is None else env

        def number(*names: str, default: int) -> int:
            for name in names:
                value = env.get(name, "").strip()
                if value:
                    return int(value)
            return default

        world = number("WORLD_SIZE", default=1)
        per_node = max(number("LOCAL_WORLD_SIZE", default=world), 1)
        count = number("GROUP_WORLD_SIZE", default=max(world // per_node, 1))
        index = number("GROUP_RANK", "NODE_RANK", default=0)
        if not 0 <= index < count:
            raise ValueError(
                f"node rank {index} is outside the job's {count} node(s) (GROUP_RANK/NODE_RANK "
                "and GROUP_WORLD_SIZE or WORLD_SIZE/LOCAL_WORLD_SIZE disagree)"
            )
        return cls(index=index, count=count, local_rank=number("LOCAL_RANK", default=0))


def this_node() -> NodePlace:
    """This process's place, from its environment."""
    return NodePlace.from_env()


def wait_for_every_rank() -> None:
    """Return once every rank of the run got here (no-op in a single process).

    The Trainer writes a checkpoint's per-rank files (RNG states) without a barrier after them,
    so a node's local rank 0 may reach ``on_save`` before its neighbours have written theirs;
    waiting here makes the folder it uploads whole.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
