"""What a benchmark row measures while it trains: real tokens, step times, losses, the
launching thread's CPU time and Python's garbage collector, and a profiled step's idle gaps.

Split from bench/worker.py (which builds and runs the row) so each module does one job.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import synthetic


class Meter:
    """Counts real (non-pad) tokens at the input embedding and times optimizer steps."""

    def __init__(self, warmup: int) -> None:
        import torch

        self.warmup = warmup
        device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: dry runs only
        self.tokens = torch.zeros((), dtype=torch.int64, device=device)
        self.marks: list[tuple[float, int]] = []
        self.first_step_end: float | None = None
        self.losses: list[float] = []
        self.threads_at_start: dict[str, float] = {}
        self.thread_cpu_s: dict[str, float] = {}
        self.gc_started: float | None = None
        self.gc_s = [0.0, 0.0, 0.0]  # seconds in Python's garbage collector, per generation
        self.gc_runs = [0, 0, 0]

    def gc_callback(self, phase: str, info: dict[str, Any]) -> None:
        """Times each collection of Python's garbage collector during the timed steps: a
        pause of the launching thread is a pause of the GPU's work queue."""
        if len(self.marks) < self.warmup:
            return
        if phase == "start":
            self.gc_started = time.perf_counter()
        elif self.gc_started is not None:
            generation = int(info.get("generation", 0))
            self.gc_s[generation] += time.perf_counter() - self.gc_started
            self.gc_runs[generation] += 1
            self.gc_started = None

    def hook(self, module: Any, args: Any, kwargs: Any) -> None:
        ids = args[0] if args else kwargs.get("input")
        if ids is not None and ids.dtype in (__import__("torch").int64, __import__("torch").int32):
            self.tokens += (ids != synthetic.PAD_ID).sum()

    def callback(self) -> Any:
        import torch
        from transformers import TrainerCallback

        meter = self

        profile_step = meter.warmup + 1 if os.environ.get("FTJ_BENCH_PROFILE") else None
        host_profile = os.environ.get("FTJ_BENCH_PROFILE") == "host"
        trace = os.environ.get("FTJ_BENCH_PROFILE") == "trace"

        class StepTimer(TrainerCallback):
            profiler: Any = None

            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if profile_step is not None and state.global_step + 1 == profile_step:
                    activities = [torch.profiler.ProfilerActivity.CUDA]
                    if host_profile:  # where the host's time goes too (-hostprofile rows)
                        activities.append(torch.profiler.ProfilerActivity.CPU)
                    self.profiler = torch.profiler.profile(activities=activities)
                    self.profiler.__enter__()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if self.profiler is not None and trace:  # when the GPU waited (-trace rows)
                    self.profiler.__exit__(None, None, None)
                    print(idle_report(self.profiler), file=sys.stderr, flush=True)
                    self.profiler = None
                if self.profiler is not None:  # where one step's GPU time goes (-profile rows)
                    self.profiler.__exit__(None, None, None)
                    table = self.profiler.key_averages().table(
                        sort_by="self_cpu_time_total" if host_profile else "device_time_total",
                        row_limit=30,
                        max_name_column_width=70,
                    )
                    print(table, file=sys.stderr, flush=True)
                    self.profiler = None
                now = time.perf_counter()
                if meter.first_step_end is None:
                    meter.first_step_end = now
                meter.marks.append((now, int(meter.tokens.item())))
                if len(meter.marks) == meter.warmup:
                    meter.threads_at_start = thread_cpu_seconds()
                elif len(meter.marks) > meter.warmup:
                    spent = {
                        name: cpu - meter.threads_at_start.get(name, 0.0)
                        for name, cpu in thread_cpu_seconds().items()
                    }
                    meter.thread_cpu_s = {k: round(v, 2) for k, v in spent.items() if v >= 0.01}

            def on_log(
                self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any
            ) -> None:
                if logs and "loss" in logs:
                    meter.losses.append(float(logs["loss"]))

        return StepTimer()

    def attach(self, model: Any) -> None:
        embed = model.get_input_embeddings()
        embed.register_forward_pre_hook(self.hook, with_kwargs=True)
        gc.callbacks.append(self.gc_callback)

    def result(self) -> dict[str, Any]:
        start = self.marks[self.warmup - 1]
        end = self.marks[-1]
        seconds = end[0] - start[0]
        tokens = end[1] - start[1]
        return {
            "timed_steps": len(self.marks) - self.warmup,
            "timed_seconds": round(seconds, 3),
            "timed_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
            "tokens_per_step": round(tokens / (len(self.marks) - self.warmup)),
            # Each timed step on its own: one slow step (allocator, host sync) shows here.
            "step_seconds": [
                round(b[0] - a[0], 3)
                for a, b in zip(
                    self.marks[self.warmup - 1 :], self.marks[self.warmup :], strict=False
                )
            ],
            # CPU seconds each of the process's threads spent in the timed steps: a busy thread
            # besides the one launching kernels competes with it for the GIL.
            "thread_cpu_s": self.thread_cpu_s,
            "gc_ms_by_generation": [round(x * 1e3, 1) for x in self.gc_s],
            "gc_runs_by_generation": self.gc_runs,
        }


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) so far of each thread of this process, as ``"main"`` or
    ``"<thread name>/<id>"``, from /proc (empty where there is no Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    totals: dict[str, float] = {}
    for task in Path("/proc/self/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        key = "main" if int(task.name) == os.getpid() else f"{name}/{task.name}"
        totals[key] = (int(fields[11]) + int(fields[12])) / ticks
    return totals


def idle_report(profiler: Any) -> str:
    """bench/timeline.py's report on the profiled step, its trace kept as
    ``$FTJ_BENCH_TRACE_DIR/trace.json.gz`` (the temporary directory by default)."""
    from bench import timeline

    folder = Path(os.environ.get("FTJ_BENCH_TRACE_DIR", tempfile.gettempdir()))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "trace.json.gz"
    profiler.export_chrome_trace(str(path))  # torch gzips a path ending in .gz
    return timeline.report(timeline.load(path))
