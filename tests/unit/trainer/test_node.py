"""Which node a trainer process is on, from what torchrun (or another launcher) tells it."""

from __future__ import annotations

import pytest
from finetune_trainer.node import NodePlace

pytestmark = pytest.mark.unit


def torchrun_env(node: int, nodes: int, local_rank: int, per_node: int) -> dict[str, str]:
    """The variables torchrun gives worker ``local_rank`` of node ``node``."""
    return {
        "RANK": str(node * per_node + local_rank),
        "LOCAL_RANK": str(local_rank),
        "GROUP_RANK": str(node),
        "GROUP_WORLD_SIZE": str(nodes),
        "LOCAL_WORLD_SIZE": str(per_node),
        "WORLD_SIZE": str(nodes * per_node),
    }


def test_each_node_has_exactly_one_uploader() -> None:
    """2 nodes x 2 processes: ranks 0 and 2 (local rank 0) upload, for node 0 and node 1."""
    places = [NodePlace.from_env(torchrun_env(n, 2, r, 2)) for n in range(2) for r in range(2)]
    uploaders = [(p.index, p.count) for p in places if p.local_main]
    assert uploaders == [(0, 2), (1, 2)]
    assert {p.index for p in places} == {0, 1}


def test_a_process_without_launcher_is_node_0_of_1() -> None:
    assert NodePlace.from_env({}) == NodePlace(index=0, count=1, local_rank=0)
    one_pod = NodePlace.from_env(torchrun_env(0, 1, 1, 4))  # gpus: 4 on one node
    assert (one_pod.index, one_pod.count, one_pod.local_main) == (0, 1, False)


def test_other_launchers_node_rank_and_sizes() -> None:
    """NODE_RANK, and the node count from WORLD_SIZE / LOCAL_WORLD_SIZE."""
    env = {"NODE_RANK": "2", "WORLD_SIZE": "12", "LOCAL_WORLD_SIZE": "4", "LOCAL_RANK": "0"}
    assert NodePlace.from_env(env) == NodePlace(index=2, count=3, local_rank=0)
    with pytest.raises(ValueError, match="node rank 3 is outside the job's 3 node"):
        NodePlace.from_env({**env, "NODE_RANK": "3"})
