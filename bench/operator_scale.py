"""The operator under load: N FineTuneJobs training at once, status lag, RSS, CPU, API calls.

Why this shape: the operator's costs grow with the number of *running* jobs (one progress GET
and at most one status PATCH per job per interval), so the bench keeps N jobs in Training at
once and measures, over a fixed window that starts when the statuses have caught up with the
creation burst (every job's phase changes and first steps at once leave writes behind; the
JSON's ``settle_s`` says how long that backlog took to drain):

* **status lag**: from the moment a simulated trainer's step changes to the moment the
  FineTuneJob's ``status.progress.step`` shows that step (or a later one), seen by a watch on
  the real API server (p50, p99 over every step change in the window);
* the operator process's **RSS** (peak) and **CPU** (user+system over the window, % of one core);
* **API requests per second** the operator sends, counted at the gateway (every request of the
  operator goes through it; the simulator and this bench's watch do not).

Also in the JSON, to say where a slow figure comes from: the slowest 1% of steps split into
operator (step to PATCH at the gateway), write (PATCH answered) and watch (change seen), the
PATCH latency at the gateway, every process's CPU over the window, and the lag of the steps
taken while the creation backlog drained (``settle_lag_p99_s``: what a user who just created N
jobs sees). The window opens when 99% of statuses show the step that was current one poll
interval ago (the operator's own bound once it keeps up).

What is real: the operator process (``python -m finetune_operator``, as the image starts it),
apiextensions-apiserver + etcd (FineTuneJobs, their status subresource), the emulated core/batch
API of the e2e harness (Jobs, pods, ConfigMaps, Services) and its Job controller/kubelet.
``--state-dir`` puts the API server's state (etcd's data) elsewhere, e.g. ``/dev/shm`` (tmpfs),
to take this VM's shared disk out of a measurement (session 17: one run on tmpfs had a p99 of
4.9 s, the next 10.7 s, so the disk is not what swings the lag; bench/NOTES.md).
What is simulated: the trainers. 1,000 Python trainers would not fit a small machine, so each
pod runs ``sleep`` and ONE child process of this bench serves every pod's ``GET /progress``: it
listens on port 8080 of each pod IP (the kubelet gives every pod its own loopback address, here
``127.77.x.y`` so as not to meet the ``127.0.x.y`` pods of tests running beside it) and answers
with a step that advances every ``--step-seconds``, staggered across pods.

Run (from the repository root)::

    python -m bench.operator_scale --jobs 250,1000
    python -m bench.operator_scale --jobs 250,1000 --peering   # as the chart runs it

``--peering`` runs the operator as the chart's default does (``FTJ_PEERING``, a ``KopfPeering``
in the namespace, kopf's CRDs from the chart): kopf keeps its heartbeat there and the progress
poller reads it before each round (:mod:`finetune_operator.standby`).

prints one line per size, e.g.
``operator-scale: jobs=1000 lag_p50_s=1.1 lag_p99_s=2.3 rss_mb=95.0 cpu_pct=40.0 api_rps=101.2``
and writes ``bench/results/<date>-operator-scale.json`` (all sizes, the settings, and the
ratio of API requests per second between the largest and smallest size).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO / "operator", REPO / "trainer-image", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from finetune_api.contract import prefer_wait  # noqa: E402

PROGRESS_PORT = 8080  # finetune_api.contract.PROGRESS_PORT: the operator polls this port
GROUP_PATH = "/apis/finetune.dev/v1alpha1"
PEERING_NAME = "ftj-scale"
PEERING_CRDS = REPO / "charts" / "finetune-operator" / "crds" / "kopf.dev_peerings.yaml"


def pod_ips(count: int) -> list[str]:
    """``count`` distinct loopback addresses outside the e2e kubelet's ``127.0.x.y`` range."""
    return [f"127.77.{i // 250}.{i % 250 + 2}" for i in range(count)]


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat().replace("+00:00", "Z")


# --- the one process serving every simulated trainer's /progress ------------------------------


@dataclass(frozen=True)
class StepClock:
    """Step ``k`` of the trainer at IP index ``i`` starts at ``t0 + offset(i) + k * period``.

    Offsets spread the pods evenly over one period, so step changes don't all land at once.
    Shared (pure) by the progress server and the lag computation.
    """

    t0: float
    period: float
    pods: int

    def offset(self, index: int) -> float:
        return self.period * index / max(self.pods, 1)

    def step_at(self, index: int, now: float) -> int:
        return max(0, math.floor((now - self.t0 - self.offset(index)) / self.period))

    def started(self, index: int, step: int) -> float:
        return self.t0 + self.offset(index) + step * self.period


class _ProgressProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 server (keep-alive) of this pod's progress JSON, with the trainer's
    long poll (``contract.PROGRESS_MAX_WAIT``): a request whose ``If-None-Match`` is the
    current step's ETag and that sends ``Prefer: wait=N`` is answered when the next step
    starts, or with 304 after N seconds."""

    def __init__(self, server: ProgressServer) -> None:
        self.server, self.buffer = server, b""
        self.pending: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.index = self.server.index.get(transport.get_extra_info("sockname")[0], 0)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending is not None:
            self.pending.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            headers = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self.server.requests += 1
            now = time.time()
            step = self.server.clock.step_at(self.index, now)
            wait = prefer_wait(headers.get("prefer"))
            if wait > 0 and headers.get("if-none-match") == self.server.etag(step):
                next_step = self.server.clock.started(self.index, step + 1)
                delay = min(wait, max(0.0, next_step - now))
                loop = asyncio.get_running_loop()
                self.pending = loop.call_later(delay, self.answer, step)
            else:
                self.answer(None)

    def answer(self, unchanged_since: int | None) -> None:
        """200 with the document, or 304 when the step is still ``unchanged_since``."""
        self.pending = None
        if self.transport.is_closing():
            return
        step = self.server.clock.step_at(self.index, time.time())
        etag = self.server.etag(step).encode()
        if step == unchanged_since:
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 304 Not Modified\r\nETag: %s\r\nContent-Length: 0\r\n\r\n" % etag
            )
            return
        body = json.dumps(self.server.progress(self.index, time.time())).encode()
        self.transport.write(  # type: ignore[attr-defined]
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (etag, len(body), body)
        )


class ProgressServer:
    """Serves ``GET /progress`` for many pod IPs from one asyncio loop."""

    TOTAL_STEPS = 1_000_000

    def __init__(self, ips: Sequence[str], clock: StepClock) -> None:
        self.index = {ip: i for i, ip in enumerate(ips)}
        self.clock, self.requests = clock, 0

    @staticmethod
    def etag(step: int) -> str:
        """The document changes with the step only."""
        return f'"{step}"'

    def progress(self, index: int, now: float) -> dict[str, Any]:
        step = self.clock.step_at(index, now)
        return {
            "phase": "Training",
            "step": step,
            "totalSteps": self.TOTAL_STEPS,
            "percent": round(100 * step / self.TOTAL_STEPS, 4),
            "loss": round(2.5 * math.exp(-step / 500) + 0.1, 4),
            "summary": f"{step}/{self.TOTAL_STEPS}",
            "updatedAt": iso(self.clock.started(index, step)),
        }


async def _serve(ips: list[str], clock: StepClock, stats_path: Path) -> None:
    server = ProgressServer(ips, clock)
    loop = asyncio.get_running_loop()
    listening = await loop.create_server(
        lambda: _ProgressProtocol(server), host=ips, port=PROGRESS_PORT, backlog=256
    )
    print("ready", flush=True)
    async with listening:
        while True:
            await asyncio.sleep(1)
            stats_path.write_text(json.dumps({"requests": server.requests}))


def serve_main(args: argparse.Namespace) -> None:
    spec = json.loads(Path(args.serve_progress).read_text())
    clock = StepClock(spec["t0"], spec["period"], spec["pods"])
    asyncio.run(_serve(spec["ips"], clock, Path(spec["stats"])))


# --- watching the FineTuneJobs on the API server ------------------------------------------------


class StatusWatch:
    """Records, per FineTuneJob, when each new ``status.progress.step`` became visible."""

    def __init__(self, apiserver: Any, namespace: str) -> None:
        self.apiserver, self.namespace = apiserver, namespace
        self.seen: dict[str, list[tuple[float, int]]] = {}
        self.phases: dict[str, str] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="status-watch")

    def start(self) -> StatusWatch:
        self.thread.start()
        return self

    def _request(self, path: str) -> Any:
        from tests.harness.apiserver import TEST_TOKEN

        req = urllib.request.Request(
            self.apiserver.apiserver_url + path,
            headers={"Authorization": f"Bearer {TEST_TOKEN}", "Accept": "application/json"},
        )
        return urllib.request.urlopen(req, timeout=900, context=self.apiserver._ssl)

    def _record(self, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        step = (status.get("progress") or {}).get("step")
        with self.lock:
            self.phases[name] = status.get("phase") or ""
            if step is None:
                return
            history = self.seen.setdefault(name, [])
            if not history or step > history[-1][1]:
                history.append((now, int(step)))

    def _run(self) -> None:
        path = f"{GROUP_PATH}/namespaces/{self.namespace}/finetunejobs"
        while not self.stopped.is_set():
            with self._request(path) as resp:
                listing = json.loads(resp.read())
            now = time.time()
            for item in listing.get("items") or []:
                self._record(item, now)
            version = listing["metadata"]["resourceVersion"]
            try:
                with self._request(
                    f"{path}?watch=1&resourceVersion={version}&timeoutSeconds=900"
                ) as stream:
                    for line in stream:
                        if self.stopped.is_set():
                            return
                        event = json.loads(line)
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            self._record(event["object"], time.time())
            except (OSError, ValueError):
                time.sleep(0.5)  # the stream broke: list again and go on

    def caught_up(
        self,
        ip_of: dict[str, str],
        index: dict[str, int],
        clock: StepClock,
        now: float,
        within: float,
    ) -> int:
        """Jobs whose status shows the step that was current ``within`` seconds ago, or a
        later one."""
        with self.lock:
            last = {name: history[-1][1] for name, history in self.seen.items() if history}
        return sum(
            1
            for name, ip in ip_of.items()
            if ip in index and last.get(name, -1) >= clock.step_at(index[ip], now - within)
        )

    def training(self) -> int:
        with self.lock:
            return sum(1 for name, phase in self.phases.items() if phase == "Training")


def steps_shown(
    history: Sequence[tuple[float, int]], index: int, clock: StepClock, start: float, end: float
) -> list[tuple[float, float | None]]:
    """Every step of one job that started in ``[start, end)``: ``(began, shown)``, when the
    status first showed it or a later step (None: not by the end of ``history``) (pure)."""
    steps = range(clock.step_at(index, start) + 1, clock.step_at(index, end) + 1)
    return [
        (began, next((t for t, s in history if s >= step and t >= began), None))
        for step, began in ((step, clock.started(index, step)) for step in steps)
    ]


def step_lags_by_start(
    history: Sequence[tuple[float, int]], index: int, clock: StepClock, start: float, end: float
) -> list[tuple[float, float]]:
    """Lag of every step of one job that started in ``[start, end)``, with the step's start:
    ``(began, lag)`` (pure).

    A step's lag is the time from its start until the status showed it or a later step. A step
    not yet shown at ``end`` counts as ``end - began`` (a lower bound, never dropped).
    """
    return [
        (began, (shown if shown is not None else end) - began)
        for began, shown in steps_shown(history, index, clock, start, end)
    ]


def step_lags(
    history: Sequence[tuple[float, int]], index: int, clock: StepClock, start: float, end: float
) -> list[float]:
    """:func:`step_lags_by_start` without the starts (pure)."""
    return [lag for _, lag in step_lags_by_start(history, index, clock, start, end)]


def lag_timeline(
    samples: Sequence[tuple[float, float]], since: float, bucket: float
) -> list[dict[str, float]]:
    """The lag over time (pure): per ``bucket`` seconds of step starts from ``since``, the
    number of steps, their p90 and their max lag. Shows when the creation backlog drained and
    whether anything periodic (a sweep, a resync) holds the writes back."""
    groups: dict[int, list[float]] = {}
    for began, lag in samples:
        groups.setdefault(int((began - since) // bucket), []).append(lag)
    return [
        {
            "t": k * bucket,
            "steps": len(lags),
            "p90_s": round(percentile(lags, 0.90), 3),
            "max_s": round(max(lags), 3),
        }
        for k, lags in sorted(groups.items())
    ]


def lag_parts(
    history: Sequence[tuple[float, int]],
    writes: Sequence[tuple[float, float]],
    index: int,
    clock: StepClock,
    start: float,
    end: float,
) -> list[tuple[float, float, float]]:
    """Where each step's lag went (pure): ``(operator, write, watch)`` seconds per step of one
    job that started in ``[start, end)`` and was shown.

    ``writes`` are this job's status PATCHes as the gateway saw them, ``(arrived, answered)``.
    The write that showed a step is the last one answered before the watch saw it; *operator*
    is the step's start until that write reached the gateway (the long poll's answer, the
    status computation, the wait for a write slot), *write* the gateway and the API server
    answering it, *watch* the API server's watch delivering the change to this bench.
    """
    parts = []
    for began, shown in steps_shown(history, index, clock, start, end):
        if shown is None:
            continue
        write = max((w for w in writes if w[1] <= shown), default=None, key=lambda w: w[1])
        if write is None or write[0] < began:
            continue  # a write this bench can't tell apart (e.g. before the window)
        parts.append((write[0] - began, write[1] - write[0], shown - write[1]))
    return parts


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


# --- the operator process -----------------------------------------------------------------------


class ProcessMeter:
    """CPU seconds and RSS of one process from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_rss = pid, 0.0
        self.tick = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
                self.peak_rss = max(self.peak_rss, rss)
                return rss
        return float("nan")


class MachineMeter:
    """CPU seconds of every process on the machine from the moment it was made (/proc), by
    command name: what else shares the CPUs with the operator (the API server, etcd, this
    bench's gateway and simulator, the progress server)."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.start = self._sample()

    def _sample(self) -> dict[int, tuple[str, float]]:
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            head, tail = stat.rsplit(")", 1)
            fields = tail.split()
            words = [w.decode(errors="replace") for w in cmdline if w]
            # "python3 -m bench.operator_scale" and "python3 -m finetune_operator" apart
            module = words[words.index("-m") + 1] if "-m" in words[:-1] else None
            name = module or head.split("(", 1)[1]
            found[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / self.tick)
        return found

    def cpu_pct(self, window: float) -> dict[str, float]:
        used: Counter[str] = Counter()
        for pid, (name, seconds) in self._sample().items():
            used[name] += seconds - self.start.get(pid, (name, 0.0))[1]
        return {n: round(100 * s / window, 1) for n, s in used.most_common() if s > 0.01 * window}


# --- one size ------------------------------------------------------------------------------------


@dataclass
class SizeResult:
    jobs: int
    lag_p50_s: float
    lag_p99_s: float
    lag_max_s: float
    lag_samples: int
    rss_mb: float
    cpu_pct: float
    api_rps: float
    api_by_verb: dict[str, float] = field(default_factory=dict)
    progress_gets_per_s: float = 0.0
    # The operator's own count of its /progress reads by outcome (its /metrics), per second.
    progress_polls_per_s: dict[str, float] = field(default_factory=dict)
    # The slowest 1% of steps (lag >= p99), where their lag went (lag_parts): mean seconds of
    # operator (step to PATCH at the gateway), write (PATCH answered) and watch (change seen).
    slow_steps: dict[str, float] = field(default_factory=dict)
    # The status PATCHes' latency at the gateway (gateway + API server), p50 and p99.
    patch_p50_s: float = 0.0
    patch_p99_s: float = 0.0
    # CPU (% of one core) over the window of every process on the machine that used > 1%.
    cpu_pct_by_process: dict[str, float] = field(default_factory=dict)
    window_s: float = 0.0
    ramp_s: float = 0.0
    # From the last job reaching Training until the statuses had caught up (--settle-timeout:
    # they had not): how long the creation burst's backlog took to drain.
    settle_s: float = 0.0
    # Status PATCHes from the first creation until every job was Training, per job: the phase
    # changes of the jobs being created, and the steps of those already training.
    ramp_status_writes_per_job: float = 0.0
    # The lag of the steps taken in that time: what a user sees right after creating N jobs.
    settle_lag_p99_s: float = 0.0
    settle_lag_max_s: float = 0.0
    # Steps' lag per 5 s of step starts from the ramp's end (lag_timeline), and where in it the
    # measured window began.
    lag_timeline: list[dict[str, float]] = field(default_factory=list)
    window_starts_at_s: float = 0.0
    training_at_end: int = 0

    def line(self) -> str:
        return (
            f"operator-scale: jobs={self.jobs} lag_p50_s={self.lag_p50_s:.2f} "
            f"lag_p99_s={self.lag_p99_s:.2f} rss_mb={self.rss_mb:.1f} "
            f"cpu_pct={self.cpu_pct:.1f} api_rps={self.api_rps:.1f}"
        )


def manifest(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"uri": "s3://models/tiny-qwen3"},
            "datasets": [{"uri": "s3://datasets/identity.json", "format": "alpaca"}],
            "training": {"maxSteps": ProgressServer.TOTAL_STEPS},
            "output": {"uri": f"s3://artifacts/{name}"},
            "resources": {"gpus": 0},
        },
    }


def poll_outcomes(port: int) -> Counter[str]:
    """finetune_operator_progress_polls_total by outcome, scraped from the operator."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith('finetune_operator_progress_polls_total{outcome="'):
            outcome = line.split('"')[1]
            counts[outcome] = float(line.rsplit(" ", 1)[1])
    return counts


def run_size(jobs: int, args: argparse.Namespace, apiserver: Any, workdir: Path) -> SizeResult:
    """Fresh gateway, simulator, progress server and operator; N jobs; one measured window."""
    from tests.harness.apiserver import free_port
    from tests.harness.cluster import JobSimulator
    from tests.harness.kube_api import KubeGateway, Upstream
    from tests.harness.operator_process import OperatorProcess

    namespace = f"scale-{jobs}"  # one per size: the last size's jobs keep their finalizers
    work = workdir / f"jobs-{jobs}"
    work.mkdir(parents=True)
    ips = pod_ips(jobs + 50)  # spares: a replaced pod takes the next address
    clock = StepClock(time.time(), args.step_seconds, jobs)
    spec = {"t0": clock.t0, "period": clock.period, "pods": jobs, "ips": ips}
    stats = work / "progress-stats.json"
    spec["stats"] = str(stats)
    (work / "progress-spec.json").write_text(json.dumps(spec))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.operator_scale",
            "--serve-progress",
            str(work / "progress-spec.json"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    gateway = simulator = operator = watch = None
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(
                "the progress server did not start (is port 8080 of 127.77.* taken?)"
            )
        gateway = KubeGateway(
            Upstream.from_kubeconfig(apiserver.kubeconfig_path),
            work / "gateway",
            namespaces=("default", "kube-system", namespace),
        )
        gateway.gc_interval = 10.0  # one LIST of every FineTuneJob per pass: not every second
        gateway.start()
        if args.peering:  # the chart creates it; kopf never does
            peerings = f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings"
            body = {
                "apiVersion": "kopf.dev/v1",
                "kind": "KopfPeering",
                "metadata": {"name": PEERING_NAME, "namespace": namespace},
            }
            code, answer = apiserver.request("POST", peerings, body)
            if code not in (200, 201):
                raise RuntimeError(f"creating the KopfPeering failed ({code}): {answer}")
        simulator = JobSimulator(gateway, work / "pods", grace_seconds=1.0)
        # Private on purpose: the bench's pods must not take the 127.0.x.y addresses that e2e
        # tests running beside it use on the same port.
        simulator.kubelet._ips = (ip for ip in ips)
        # A sweep reconciles every Job on the gateway's event loop, which then answers no
        # request (at 1,000 Jobs every 30 s held the operator's writes ~2 s; bench/NOTES.md,
        # session 18). These Jobs have no deadline, backoff or failure for a sweep to find, and
        # every change of their pods still reconciles them at once.
        simulator.controller.sweep_seconds = 3600.0
        simulator.start()
        metrics_port = free_port()
        operator = OperatorProcess(
            gateway.kubeconfig_path,
            work / "operator",
            env={
                "FTJ_WATCH_NAMESPACES": namespace,
                "FTJ_TRAINER_COMMAND": "/bin/sh -c 'exec sleep 86400'",
                "FTJ_PROGRESS_POLL_SECONDS": str(args.poll_seconds),
                "FTJ_STATUS_MIN_INTERVAL_SECONDS": str(args.min_interval_seconds),
                "FTJ_LOG_LEVEL": "INFO",
                "MALLOC_ARENA_MAX": "2",  # as the chart's Deployment sets it
                "FTJ_METRICS_PORT": str(metrics_port),
                **dict(item.split("=", 1) for item in args.operator_env),
            },
        ).start()
        operator.wait_ready(marker="Initial authentication has finished.")
        watch = StatusWatch(apiserver, namespace).start()
        ramp_start = time.monotonic()
        ramp_audit = len(gateway.audit)
        names = [f"scale-{i:04d}" for i in range(jobs)]
        collection = f"{GROUP_PATH}/namespaces/{namespace}/finetunejobs"
        with ThreadPoolExecutor(4) as pool:
            for code, body in pool.map(
                lambda n: apiserver.request("POST", collection, manifest(n, namespace)),
                names,
            ):
                if code not in (200, 201):
                    raise RuntimeError(f"creating a FineTuneJob failed ({code}): {body}")
        deadline = time.monotonic() + args.ramp_timeout
        while watch.training() < jobs:
            if time.monotonic() > deadline or not operator.alive():
                raise RuntimeError(
                    f"only {watch.training()}/{jobs} jobs reached Training in {args.ramp_timeout}s"
                    f"\n{operator.logs()[-3000:]}"
                )
            time.sleep(1)
        ramp_s = time.monotonic() - ramp_start
        ramp_end = time.time()
        ramp_writes = sum(
            1
            for r in list(gateway.audit)[ramp_audit:]
            if r.verb == "patch" and r.resource == "finetunejobs" and r.subresource == "status"
        )
        # The creation burst leaves status writes behind (every job's phase changes and first
        # steps at once): measure the steady state, once it has drained. Caught up: for 99% of
        # jobs the status shows the step that was current one poll interval (or one status
        # write interval, the longer) ago: what the operator promises once it keeps up. (Session
        # 17 waited for the step of one *step period* ago, which jobs still 8-12 s behind met:
        # their catch-up then fell into the window; bench/NOTES.md, session 18.)
        settle_start = time.monotonic()
        time.sleep(args.settle)
        ip_of = _pod_ips_by_job(gateway)
        index = {ip: i for i, ip in enumerate(ips)}
        bound = max(args.poll_seconds, args.min_interval_seconds)
        while time.monotonic() - settle_start < args.settle_timeout:
            if watch.caught_up(ip_of, index, clock, time.time(), bound) >= 0.99 * jobs:
                break
            time.sleep(2)
        settle_s = time.monotonic() - settle_start
        assert operator.pid is not None
        meter = ProcessMeter(operator.pid)
        machine = MachineMeter()
        audit_start, cpu_start = len(gateway.audit), meter.cpu_seconds()
        gets_start = json.loads(stats.read_text())["requests"]
        outcomes_start = poll_outcomes(metrics_port)
        start = time.time()
        while time.time() - start < args.window:
            meter.rss_mb()
            time.sleep(1)
        end = time.time()
        cpu = meter.cpu_seconds() - cpu_start
        window = end - start
        requests = list(gateway.audit)[audit_start:]
        gets = json.loads(stats.read_text())["requests"] - gets_start
        outcomes = poll_outcomes(metrics_port)
        outcomes.subtract(outcomes_start)
        time.sleep(args.tail)  # steps near the end get their chance to show
        ip_of = _pod_ips_by_job(gateway)
        with watch.lock:
            seen = {name: list(history) for name, history in watch.seen.items()}
        lags: list[float] = []
        settling: list[float] = []  # steps between the ramp's end and the window
        timeline: list[tuple[float, float]] = []  # (began, lag) from the ramp's end on
        parts: list[tuple[float, float, float]] = []
        status_writes: dict[str, list[tuple[float, float]]] = {}
        for r in list(gateway.audit)[audit_start:]:
            if r.verb == "patch" and r.subresource == "status" and r.seconds > 0:
                status_writes.setdefault(r.name, []).append((r.arrived, r.arrived + r.seconds))
        for name in names:
            ip = ip_of.get(name)
            if ip in index:
                history = seen.get(name, [])
                lags += step_lags(history, index[ip], clock, start, end)
                settling += step_lags(history, index[ip], clock, ramp_end, start)
                timeline += step_lags_by_start(history, index[ip], clock, ramp_end, end)
                writes = status_writes.get(name, [])
                parts += lag_parts(history, writes, index[ip], clock, start, end)
        slow = sorted(parts, key=sum)[-max(1, len(parts) // 100) :] if parts else []
        patch_seconds = [w[1] - w[0] for ws in status_writes.values() for w in ws]
        verbs = Counter(
            f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}" for r in requests
        )
        return SizeResult(
            jobs=jobs,
            lag_p50_s=percentile(lags, 0.50),
            lag_p99_s=percentile(lags, 0.99),
            lag_max_s=max(lags, default=float("nan")),
            settle_lag_p99_s=percentile(settling, 0.99),
            settle_lag_max_s=max(settling, default=float("nan")),
            window_starts_at_s=start - ramp_end,
            lag_timeline=lag_timeline(timeline, ramp_end, 5.0),
            lag_samples=len(lags),
            rss_mb=meter.peak_rss,
            cpu_pct=100 * cpu / window,
            api_rps=len(requests) / window,
            api_by_verb={k: round(v / window, 2) for k, v in verbs.most_common()},
            progress_gets_per_s=gets / window,
            progress_polls_per_s={k: round(v / window, 2) for k, v in sorted(outcomes.items())},
            slow_steps={
                part: round(sum(p[i] for p in slow) / len(slow), 3)
                for i, part in enumerate(("operator", "write", "watch"))
            }
            if slow
            else {},
            patch_p50_s=percentile(patch_seconds, 0.50),
            patch_p99_s=percentile(patch_seconds, 0.99),
            cpu_pct_by_process=machine.cpu_pct(window),
            window_s=window,
            ramp_s=ramp_s,
            settle_s=settle_s,
            ramp_status_writes_per_job=ramp_writes / jobs,
            training_at_end=watch.training(),
        )
    finally:
        if watch is not None:
            watch.stopped.set()
        if operator is not None:
            operator.stop()
        if simulator is not None:
            simulator.stop()
        if gateway is not None:
            gateway.stop()
        server.terminate()
        server.wait(timeout=10)


def _pod_ips_by_job(gateway: Any) -> dict[str, str]:
    from finetune_operator import naming

    from tests.harness.cluster.kubelet import PODS

    def collect() -> dict[str, str]:
        found = {}
        for pod in gateway.store.list(PODS):
            job = (pod["metadata"].get("labels") or {}).get(naming.JOB_LABEL)
            ip = (pod.get("status") or {}).get("podIP")
            if job and ip and pod["status"].get("phase") == "Running":
                found[job] = ip
        return found

    found: dict[str, str] = gateway.call(collect)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", default="1000", help="comma-separated sizes, e.g. 250,1000")
    parser.add_argument("--step-seconds", type=float, default=10.0, help="simulated step time")
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="FTJ_PROGRESS_POLL_SECONDS")
    parser.add_argument(
        "--min-interval-seconds", type=float, default=2.0, help="FTJ_STATUS_MIN_INTERVAL_SECONDS"
    )
    parser.add_argument("--window", type=float, default=60.0, help="measured seconds per size")
    parser.add_argument(
        "--settle", type=float, default=10.0, help="least wait after the ramp before measuring"
    )
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=300.0,
        help="most wait for the statuses to catch up after the ramp",
    )
    parser.add_argument("--tail", type=float, default=10.0, help="wait after the window")
    parser.add_argument("--ramp-timeout", type=float, default=400.0)
    parser.add_argument(
        "--operator-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the operator process (repeatable)",
    )
    parser.add_argument(
        "--peering", action="store_true", help="kopf peering on, as the chart's default"
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        help="where the API server keeps etcd's data (default: the temp dir), e.g. /dev/shm",
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--serve-progress", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_progress:
        serve_main(args)
        return 0
    if args.peering:
        args.operator_env.append(f"FTJ_PEERING={PEERING_NAME}")

    from tests.harness.apiserver import KubeApiServer

    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the finally blocks stop the
    # operator, the pods and the API server instead of leaving them running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sizes = [int(s) for s in args.jobs.split(",") if s.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="ftj-operator-scale-"))
    if args.state_dir:
        tempfile.tempdir = args.state_dir  # KubeApiServer keeps etcd's data in a temp dir
    results = []
    with KubeApiServer() as apiserver:
        apiserver.install_crd(REPO / "crds" / "finetune.dev_finetunejobs.yaml")
        if args.peering:
            apiserver.install_crd(PEERING_CRDS)
        for jobs in sizes:
            result = run_size(jobs, args, apiserver, workdir)
            results.append(result)
            print(result.line(), flush=True)
    report: dict[str, Any] = {
        "bench": "operator-scale",
        "date": date.today().isoformat(),
        "settings": {
            k: getattr(args, k)
            for k in (
                "step_seconds",
                "poll_seconds",
                "min_interval_seconds",
                "window",
                "settle",
                "settle_timeout",
                "operator_env",
                "peering",
                "state_dir",
            )
        },
        "cpus": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "sizes": [asdict(r) for r in results],
    }
    if len(results) >= 2:
        small, large = min(results, key=lambda r: r.jobs), max(results, key=lambda r: r.jobs)
        report["api_rps_ratio"] = large.api_rps / small.api_rps
        report["jobs_ratio"] = large.jobs / small.jobs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-peering" if args.peering else ""
    path = out / f"{date.today().isoformat()}-operator-scale{suffix}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
