"""The fault suite: the trainer killed, stopped, starved of memory and served by a faulty S3,
and every job still ends with exactly its planned steps and a manifest that verifies.

Each trainer run is a real process (forked from fork_server.py, which only saves the import
time) training the quickstart's tiny Qwen3 on the quickstart's data, with the model, the data
and the output on the moto S3 server over HTTP, behind s3_proxy.py. A restarted "pod" gets a
fresh work folder, as a new pod would: only the output in S3 carries over.

* kills: SIGKILL at ``KILLS`` seeded random moments, some while a checkpoint is uploading;
  then the job runs again and must succeed with exactly ``maxSteps`` steps.
* sigterm: SIGTERM at ``SIGTERMS`` random moments; the steps the next run redoes are counted
  (the step reported by ``/progress`` when the signal was sent, minus the step it resumed
  from).
* s3_faults: whole jobs through a proxy failing 10% of requests (5xx or a reset connection).
* oom_replans: out-of-memory errors injected in the model's forward (fork_server._inject_oom),
  handled by the trainer's real re-plan path; the operator's status code must show it.

It ends by printing one line (``faults: kills=...``) and the seed; set ``FTJ_FAULT_SEED`` to
replay a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from finetune_api.contract import EXIT_INVALID_INPUT, EXIT_OK, EXIT_STOPPED

from tests.e2e.trainer.test_trainer_runs import QUICKSTART_DIR, quickstart_manifest
from tests.faults.s3_proxy import FaultyS3Proxy
from tests.harness.s3 import S3Server

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("FTJ_FAULT_SEED", "20261206"))
KILLS = 20
SIGTERMS = 10
S3_FAULT_JOBS = 4
S3_FAULT_RATE = 0.10
MAX_STEPS = 16
SAVE_STEPS = 4
# Kills meant to land in an upload: each request through the proxy waits this long, so a
# checkpoint's upload lasts long enough to be hit.
UPLOAD_DELAY_S = 0.03


class ForkServer:
    """The client side of fork_server.py."""

    def __init__(self, extra_env: dict[str, str]) -> None:
        env = {**os.environ, **extra_env}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), str(REPO / "operator"), str(REPO / "trainer-image")]
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.fork_server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        assert self._read() == {"ready": True}

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def start(self, **run: Any) -> int:
        return int(self._ask({"run": run})["pid"])

    def poll(self, pid: int) -> int | None:
        """The exit code of a child that has ended, else None (without waiting)."""
        return self.wait(pid, timeout=0)

    def wait(self, pid: int, timeout: float = 240) -> int | None:
        code = self._ask({"wait": pid, "timeout": timeout})["code"]
        return None if code is None else int(code)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@dataclass
class Job:
    """One FineTuneJob of the suite: its manifest, output and runs ("pods")."""

    name: str
    root: Path
    manifest: dict[str, Any]
    runs: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def output(self) -> str:
        return str(self.manifest["spec"]["output"]["uri"])

    def next_run(self, progress_port: int = 0, **extra: Any) -> dict[str, Any]:
        """The arguments of a new pod's trainer: a fresh work folder, the same output."""
        self.runs += 1
        folder = self.root / f"pod-{self.runs}"
        folder.mkdir(parents=True)
        (folder / "job.json").write_text(json.dumps(self.manifest))
        self.logs.append(folder / "trainer.log")
        return {
            "manifest": str(folder / "job.json"),
            "workdir": str(folder / "work"),
            "log": str(folder / "trainer.log"),
            "termination_log": str(folder / "termination-log"),
            "progress_port": progress_port,
            **extra,
        }

    def termination(self) -> dict[str, Any]:
        path = self.root / f"pod-{self.runs}" / "termination-log"
        return json.loads(path.read_text()) if path.exists() else {}

    def last_log(self, chars: int = 3000) -> str:
        return self.logs[-1].read_text()[-chars:] if self.logs else ""


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server(process=True) as server:
        server.create_bucket("models")
        server.create_bucket("data")
        server.create_bucket("results")
        client = server.client()
        for f in (QUICKSTART_DIR / "tiny-qwen3").iterdir():
            client.upload_file(str(f), "models", f"tiny-qwen3/{f.name}")
        client.upload_file(str(QUICKSTART_DIR / "identity.json"), "data", "identity.json")
        yield server


@pytest.fixture(scope="module")
def proxy(s3: S3Server) -> Iterator[FaultyS3Proxy]:
    server = FaultyS3Proxy((s3.host, s3.port), seed=SEED).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def forks(s3: S3Server) -> Iterator[ForkServer]:
    server = ForkServer(s3.env())  # credentials the AWS way, as a pod's Secret gives them
    yield server
    server.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_job(tmp: Path, proxy: FaultyS3Proxy, kind: str, index: int, **training: Any) -> Job:
    name = f"{kind}-{index}"
    manifest = quickstart_manifest(
        maxSteps=MAX_STEPS,
        saveSteps=SAVE_STEPS,
        loggingSteps=1,
        # No held-out splits: sample answers and evaluation are not what is under test, and
        # they would triple a run's time.
        validationSplit=0.0,
        testSplit=0.0,
        **training,
    )
    manifest["metadata"].update(name=name, namespace="faults", uid=str(uuid.uuid4()))
    spec = manifest["spec"]
    spec["model"]["uri"] = "s3://models/tiny-qwen3"
    spec["datasets"][0]["uri"] = "s3://data/identity.json"
    spec["output"]["uri"] = f"s3://results/{uuid.uuid4().hex[:8]}/{name}"
    spec["storage"] = {"s3": {"endpoint": proxy.endpoint_url, "pathStyle": True}}
    return Job(name=name, root=tmp / name, manifest=manifest)


def job_outcome(s3: S3Server, job: Job) -> tuple[bool, list[int], str]:
    """(MANIFEST verifies, the optimizer steps in the published loss history, problem)."""
    from finetune_api.spec import S3Storage
    from finetune_trainer.storage import Storage, verify_manifest

    os.environ.update(s3.env())
    storage = Storage.from_spec(S3Storage(endpoint=s3.endpoint_url, path_style=True))
    problems = verify_manifest(storage, job.output)
    metrics = storage.read_json(f"{job.output}/metrics.json") or {}
    steps = [int(e["step"]) for e in metrics.get("logHistory", []) if "loss" in e]
    return not problems, steps, "; ".join(problems)


def exact(steps: list[int]) -> bool:
    """Every planned optimizer step exactly once: no step lost, none trained twice."""
    return steps == list(range(1, MAX_STEPS + 1))


def run_to_end(forks: ForkServer, job: Job, **extra: Any) -> int:
    code = forks.wait(forks.start(**job.next_run(**extra)))
    assert code is not None, f"{job.name}: the trainer hung\n{job.last_log()}"
    return code


def progress_step(port: int) -> int | None:
    """The step the trainer's /progress reports now (None: not training yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=2) as answer:
            step = json.loads(answer.read()).get("step")
    except OSError:
        return None
    return int(step) if step is not None else None


def test_fault_suite(
    tmp_path: Path,
    s3: S3Server,
    proxy: FaultyS3Proxy,
    forks: ForkServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from finetune_api.manifest import FineTuneJob
    from finetune_operator.grace import termination_grace_seconds
    from finetune_operator.observe import observe_status

    rng = random.Random(SEED)
    keys = "kills resumed exact_steps sigterm max_lost_steps s3_faults s3_ok oom_replans oom_ok"
    counts = dict.fromkeys(keys.split(), 0)
    failures: list[str] = []
    os.environ.update(s3.env())

    # A clean run first: how long a whole job takes here, so kills are drawn across it.
    proxy.delay = UPLOAD_DELAY_S
    calibration = new_job(tmp_path, proxy, "clean", 0)
    started = time.monotonic()
    assert run_to_end(forks, calibration) == EXIT_OK, calibration.last_log()
    duration = time.monotonic() - started
    verified, steps, problem = job_outcome(s3, calibration)
    assert verified and exact(steps), f"clean run: {problem} {steps}"

    # -- kills --------------------------------------------------------------------------------
    in_upload = 0
    index = 0
    while counts["kills"] < KILLS:
        index += 1
        job = new_job(tmp_path, proxy, "kill", index)
        during_upload = index % 3 == 0  # every third kill waits for an upload to be under way
        pid = forks.start(**job.next_run())
        deadline = time.monotonic() + (120 if during_upload else rng.uniform(0.1, duration))
        while time.monotonic() < deadline and not (during_upload and proxy.uploads_in_flight):
            time.sleep(0.005)
            if forks.poll(pid) is not None:
                break
        uploading = proxy.uploads_in_flight
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        code = forks.wait(pid)
        if code != -signal.SIGKILL:  # it had finished before the kill: draw again
            continue
        counts["kills"] += 1
        in_upload += uploading
        code = run_to_end(forks, job)
        verified, steps, problem = job_outcome(s3, job) if code == EXIT_OK else (False, [], "")
        counts["resumed"] += code == EXIT_OK
        counts["exact_steps"] += verified and exact(steps)
        if code != EXIT_OK or not (verified and exact(steps)):
            failures.append(f"{job.name}: exit {code}, {problem}, steps {steps}\n{job.last_log()}")

    # -- SIGTERM ------------------------------------------------------------------------------
    lost_steps: list[int] = []
    exit_seconds: list[float] = []
    in_training = 0  # SIGTERMs that stopped a run mid-training (checkpoint of that step)
    for index in range(1, SIGTERMS + 1):
        job = new_job(tmp_path, proxy, "sigterm", index)
        port = _free_port()
        pid = forks.start(**job.next_run(progress_port=port))
        if index % 2:  # in training: once /progress reports a random step
            wanted = rng.randint(1, MAX_STEPS - 2)
            while (progress_step(port) or 0) < wanted and forks.poll(pid) is None:
                time.sleep(0.005)
        else:  # anywhere in the run: downloading, training, merging, publishing
            deadline = time.monotonic() + rng.uniform(0.2, duration)
            while time.monotonic() < deadline and forks.poll(pid) is None:
                time.sleep(0.01)
        step_at_signal = progress_step(port)
        sent = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        code = forks.wait(pid)
        exit_seconds.append(time.monotonic() - sent)
        counts["sigterm"] += 1
        if code not in (EXIT_STOPPED, EXIT_OK):
            failures.append(f"{job.name}: SIGTERM exit {code}\n{job.last_log()}")
            continue
        stopped = job.termination()
        if code == EXIT_STOPPED and stopped.get("reason") != "Stopped":
            failures.append(f"{job.name}: stopped without reason Stopped: {stopped}")
        in_training += "after step" in str(stopped.get("message"))
        if code == EXIT_STOPPED:
            code = run_to_end(forks, job)
        resumed = job.termination().get("resumedFromStep") or 0
        lost_steps.append(max(0, (step_at_signal or 0) - resumed))
        verified, steps, problem = job_outcome(s3, job) if code == EXIT_OK else (False, [], "")
        if code != EXIT_OK or not (verified and exact(steps)):
            failures.append(f"{job.name}: exit {code}, {problem}, steps {steps}\n{job.last_log()}")
    counts["max_lost_steps"] = max(lost_steps, default=0)
    grace = termination_grace_seconds(FineTuneJob.model_validate(calibration.manifest))
    if max(exit_seconds) > grace:
        failures.append(f"a SIGTERM took {max(exit_seconds):.1f} s, over the {grace} s grace")

    # -- a faulty S3 --------------------------------------------------------------------------
    proxy.delay, proxy.fault_rate = 0.0, S3_FAULT_RATE
    faults_before, requests_before = proxy.faults, proxy.requests
    for index in range(1, S3_FAULT_JOBS + 1):
        job = new_job(tmp_path, proxy, "s3", index)
        code = run_to_end(forks, job)
        counts["s3_faults"] += 1
        verified, steps, problem = job_outcome(s3, job) if code == EXIT_OK else (False, [], "")
        counts["s3_ok"] += code == EXIT_OK and verified and exact(steps)
        if not (code == EXIT_OK and verified and exact(steps)):
            failures.append(f"{job.name}: exit {code}, {problem}\n{job.last_log()}")
    injected = proxy.faults - faults_before
    requests = proxy.requests - requests_before
    proxy.fault_rate = 0.0

    # -- out of memory ------------------------------------------------------------------------
    # From step 5 on, this "GPU" holds 4 of the spec's 8 examples per micro-step: one re-plan.
    job = new_job(tmp_path, proxy, "oom", 1)
    code = run_to_end(forks, job, oom={"from_step": 5, "max_examples": 4})
    message = job.termination()
    replan = (message.get("progress") or {}).get("memoryReplan") or {}
    counts["oom_replans"] += int(replan.get("count", 0))
    verified, steps, problem = job_outcome(s3, job) if code == EXIT_OK else (False, [], "")
    # What the operator makes of this pod: its status must show the re-plan.
    status = observe_status(
        FineTuneJob.model_validate(job.manifest),
        {"metadata": {"name": job.name}, "status": {"succeeded": 1}},
        [_ended_pod(job.name, code, json.dumps(message))],
        None,
        datetime.now(timezone.utc),
    ).status
    shown = [c for c in status.conditions if c.type == "MemoryReplanned" and c.status == "True"]
    oom_ok = (
        code == EXIT_OK
        and verified
        and exact(steps)
        and replan.get("step") == 5
        and "micro_batch=4x" in str(replan.get("after"))
        and bool(shown)
    )
    counts["oom_ok"] += oom_ok
    if not oom_ok:
        failures.append(
            f"oom: exit {code}, {problem}, steps {steps}, replan {replan}, status "
            f"{[c.model_dump() for c in status.conditions]}\n{job.last_log()}"
        )
    # No micro-step fits at all: three re-plans (8 → 4 → 2 → 1), then OutOfMemory at once.
    job = new_job(tmp_path, proxy, "oom-nofit", 1)
    code = run_to_end(forks, job, oom={"from_step": 0, "max_examples": 0})
    message = job.termination()
    if code != EXIT_INVALID_INPUT or message.get("reason") != "OutOfMemory":
        failures.append(f"oom-nofit: exit {code}, {message}\n{job.last_log()}")
    elif "spec.training.cutoffLength" not in message.get("message", ""):
        failures.append(f"oom-nofit: no advice in {message.get('message')!r}")

    line = " ".join(f"{key}={value}" for key, value in counts.items())
    with capsys.disabled():
        print(
            f"\nfault suite seed {SEED} (replay: FTJ_FAULT_SEED={SEED}); {in_upload} kill(s) "
            f"during a checkpoint upload; S3 proxy failed {injected} of {requests} requests; "
            f"{in_training} SIGTERM(s) mid-training, exits within {max(exit_seconds):.1f} s "
            f"(grace {grace} s)\n"
            f"faults: {line}"
        )
    assert not failures, "\n\n".join(failures)
    assert counts["kills"] == counts["resumed"] == counts["exact_steps"] == KILLS
    assert in_upload >= 1, "no kill landed during a checkpoint upload"
    assert counts["sigterm"] == SIGTERMS and counts["max_lost_steps"] <= 1
    assert in_training >= SIGTERMS // 2, "too few SIGTERMs landed mid-training"
    assert counts["s3_ok"] == counts["s3_faults"] == S3_FAULT_JOBS and injected > 0
    assert counts["oom_ok"] == 1 and counts["oom_replans"] >= 1


def _ended_pod(name: str, exit_code: int, message: str) -> dict[str, Any]:
    """A trainer pod as the kubelet reports it once the container ended with ``message``."""
    return {
        "metadata": {
            "name": f"{name}-0",
            "uid": "pod-uid",
            "creationTimestamp": "2026-12-06T00:00:00Z",
            "labels": {"finetune.dev/job": name},
        },
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "startTime": "2026-12-06T00:00:00Z",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "restartCount": 0,
                    "image": "trainer",
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Completed" if exit_code == 0 else "Error",
                            "message": message,
                            "finishedAt": "2026-12-06T00:01:00Z",
                        }
                    },
                }
            ],
        },
    }
