"""Several torchrun "nodes" on one host, started as the operator's Indexed Job pods start them.

The command is the operator's own rendering (``render.render_job`` of the job with
``resources.nodes > 1``: ``torchrun --nproc-per-node=G --nnodes=N
--node-rank=$(JOB_COMPLETION_INDEX) --rdzv-backend=c10d --rdzv-endpoint=<job>-0.<job>:29500
...``), changed only where one host must stand in for a cluster, as the Job simulator's
cluster DNS does (``tests.harness.cluster.cluster_dns``):

* ``$(JOB_COMPLETION_INDEX)`` becomes the node's index (the kubelet expands it);
* ``<job>-0.<job>`` (pod 0 behind the headless Service) becomes node 0's loopback address,
  and port 29500 a free one: all nodes share one network namespace here, and a leftover
  listener on 29500 would otherwise take the rendezvous;
* every node listens on its own loopback address (``--local-addr``, as each pod has its own IP),
  and ``is_host`` says which agent hosts the c10d store: all ``127.x`` addresses are this
  host's, so each agent would otherwise see itself in the endpoint (in pods, only pod 0 does);
* ``torchrun`` is this interpreter's ``-m torch.distributed.run``.

Used by the CPU (gloo) and GPU (NCCL) kill-and-resume tests.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# A node's environment, given its index and its own scratch folder (a pod's).
NodeEnv = Callable[[int, Path], dict[str, str]]


def free_port(host: str) -> int:
    """A TCP port free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def rendered_command(
    manifest: dict[str, Any], node: int, rendezvous: tuple[str, int], local_addr: str
) -> list[str]:
    """Node ``node``'s command: the operator's rendered pod command with the cluster's names
    and ports mapped onto this host (module docstring)."""
    from finetune_api import contract, parse_manifest
    from finetune_operator import naming
    from finetune_operator.render import render_job
    from finetune_operator.settings import OperatorSettings

    job = parse_manifest(manifest)
    pod = render_job(job, OperatorSettings())["spec"]["template"]["spec"]
    command: list[str] = list(pod["containers"][0]["command"])
    assert command[0] == "torchrun", command
    name = naming.resource_name(job.metadata.name)
    # Pod 0 of the Indexed Job behind the headless Service named like the pods' subdomain.
    expected = f"--rdzv-endpoint={name}-0.{pod['subdomain']}:{contract.RENDEZVOUS_PORT}"
    assert expected in command, command
    host, port = rendezvous
    mapped = []
    for arg in command[1:]:
        if arg == expected:
            arg = f"--rdzv-endpoint={host}:{port}"
        elif arg.startswith("--rdzv-conf="):
            arg = f"{arg},is_host={int(node == 0)}"
        arg = arg.replace("$(JOB_COMPLETION_INDEX)", str(node))
        mapped.append(arg)
    # Before "-m finetune_trainer": the rest are the worker's own arguments.
    at = mapped.index("-m")
    mapped[at:at] = [f"--local-addr={local_addr}"]
    return [sys.executable, "-m", "torch.distributed.run", *mapped]


def start_nodes(
    tmp: Path, manifest: dict[str, Any], hosts: tuple[str, ...], node_env: NodeEnv
) -> list[subprocess.Popen[str]]:
    """Every node's torchrun agent, each on its own address with its own scratch folder
    (``tmp/node-<i>``) and log (``tmp/node-<i>.log``), meeting at the first one."""
    rendezvous = (hosts[0], free_port(hosts[0]))
    nodes = []
    for index, host in enumerate(hosts):
        command = rendered_command(manifest, index, rendezvous, host)
        env = node_env(index, tmp / f"node-{index}")
        log = (tmp / f"node-{index}.log").open("w")
        nodes.append(
            subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        )
    return nodes


def kill_tree(pid: int) -> None:
    """SIGKILL a torchrun agent and its workers at once (a node lost)."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        launcher = psutil.Process(pid)
        for process in [*launcher.children(recursive=True), launcher]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)


def node_logs(tmp: Path, tail: int = 5000) -> str:
    """The last ``tail`` characters of every node's log under ``tmp``."""
    return "\n".join(
        f"--- {p.name} ---\n{p.read_text()[-tail:]}" for p in sorted(tmp.glob("node-*.log"))
    )


def kill_last_node_once_whole(
    tmp: Path,
    manifest: dict[str, Any],
    hosts: tuple[str, ...],
    node_env: NodeEnv,
    latest_complete: Callable[[], int | None],
    timeout: float = 180,
) -> tuple[int, list[subprocess.Popen[str]]]:
    """Start the nodes; as soon as ``latest_complete()`` names a checkpoint (every node's part
    in the output), SIGKILL the last node's agent and workers, as a node failure would. The
    other nodes' trainers then fail (their collectives lost a member) or are stopped after 60 s,
    as the Job controller would stop them. Returns the checkpoint and the ended agents."""
    nodes = start_nodes(tmp, manifest, hosts, node_env)
    try:
        deadline = time.monotonic() + timeout
        while (whole := latest_complete()) is None:
            exited = [n.poll() for n in nodes]
            assert exited == [None] * len(nodes), f"a node ended early {exited}:\n{node_logs(tmp)}"
            assert time.monotonic() < deadline, f"no whole checkpoint:\n{node_logs(tmp)}"
            time.sleep(0.05)
        kill_tree(nodes[-1].pid)
        nodes[-1].wait(timeout=30)
        for node in nodes[:-1]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=60)
    finally:
        for node in nodes:
            if node.poll() is None:
                kill_tree(node.pid)
                node.wait(timeout=30)
    return whole, nodes


def run_to_the_end(
    tmp: Path,
    manifest: dict[str, Any],
    hosts: tuple[str, ...],
    node_env: NodeEnv,
    timeout: float = 300,
) -> list[int]:
    """Start the nodes and wait for every agent's exit code (killing them past ``timeout``)."""
    nodes = start_nodes(tmp, manifest, hosts, node_env)
    try:
        return [node.wait(timeout=timeout) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                kill_tree(node.pid)
                node.wait(timeout=30)
