"""Start trainer processes in milliseconds: a process that imports the training stack once and
forks one child per run.

The fault suite runs ~60 trainer processes and kills most of them; paying torch's and
transformers' import (~5 s on two cores) each time would take most of its budget. Each child
is a real, separate process running :func:`finetune_trainer.entry.run_from_manifest`, exactly
as ``python -m finetune_trainer`` does in a pod, so SIGKILL and SIGTERM reach it as they would
a pod's. This server only forks: it runs no torch code itself before forking (no thread pools
to inherit).

Protocol: one JSON object per line on stdin, one answer per line on stdout.

* ``{"run": {...}}`` → ``{"pid": N}``: fork a child that runs ``run["manifest"]`` with
  ``workdir``, ``progress_port``, ``termination_log``, extra ``env``, its stderr in ``log``,
  and optionally ``oom``: ``{"from_step": k, "max_examples": m}`` (below).
* ``{"wait": N, "timeout": s}`` → ``{"code": C}`` (``-signal`` when killed, None on timeout;
  ``timeout`` 0 polls).

The ``oom`` injection stands in for a GPU that holds at most ``max_examples`` examples per
micro-step: from optimizer step ``k`` on, a training forward pass over more rows than that
raises ``torch.OutOfMemoryError`` from the model's forward, where the CUDA allocator raises
it, so the trainer's own recovery path (oom_recovery.py) handles it as it would a real one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def _examples_in(args: Any, kwargs: Any) -> int:
    """Examples in one forward's batch: packed rows carry several, each starting at position 0."""
    positions = kwargs.get("position_ids")
    if positions is not None:
        return int((positions == 0).sum())
    ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
    return int(ids.shape[0])


def _inject_oom(from_step: int, max_examples: int) -> None:
    """Make every model the trainer builds run out of "memory" on large micro-steps."""
    import torch
    from finetune_trainer import train

    original = train.build_model
    calls = {"training_forwards": 0}

    def build_model(*args: Any, **kwargs: Any) -> Any:
        model, plan = original(*args, **kwargs)
        accumulation = plan.gradient_accumulation_steps

        def pre_hook(module: Any, args: Any, kwargs: Any) -> None:
            if not module.training:
                return
            calls["training_forwards"] += 1
            step = (calls["training_forwards"] - 1) // max(1, accumulation)
            examples = _examples_in(args, kwargs)
            if step >= from_step and examples > max_examples:
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate {examples * 64} MiB (injected: this "
                    f"'GPU' holds {max_examples} examples per micro-step)"
                )

        model.register_forward_pre_hook(pre_hook, with_kwargs=True)
        return model, plan

    train.build_model = build_model


def _child(run: dict[str, Any]) -> int:
    log = os.open(run["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 2)
    os.dup2(log, 1)
    os.environ.update(run.get("env", {}))
    from finetune_trainer.entry import run_from_manifest

    if run.get("oom"):
        _inject_oom(int(run["oom"]["from_step"]), int(run["oom"]["max_examples"]))
    return run_from_manifest(
        run["manifest"],
        workdir=run["workdir"],
        progress_port=int(run.get("progress_port", 0)),
        termination_log=run["termination_log"],
    )


_ENDED: dict[int, int] = {}  # children already reaped: their exit codes


def _wait(pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while pid not in _ENDED:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            _ENDED[pid] = os.waitstatus_to_exitcode(status)
        elif time.monotonic() > deadline:
            return None
        else:
            time.sleep(0.02)
    return _ENDED[pid]


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The imports every child needs, paid once (no torch code runs here).
    import finetune_trainer.run  # noqa: F401
    import peft  # noqa: F401
    import trl  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "run" in request:
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = _child(request["run"])
                finally:
                    os._exit(code)
            print(json.dumps({"pid": pid}), flush=True)
        elif "wait" in request:
            code = _wait(int(request["wait"]), float(request.get("timeout", 300)))
            print(json.dumps({"code": code}), flush=True)


if __name__ == "__main__":
    main()
