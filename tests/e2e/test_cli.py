"""``ftj get/describe/logs/watch/artifacts`` against the e2e cluster, as a user runs them.

One FineTuneJob (S3 output, the fake trainer: 100 steps of 0.05 s) is driven to Succeeded by
the real operator while ``ftj watch`` and ``ftj logs -f`` follow it from the start; the other
commands then read the finished job, and ``ftj artifacts --download`` fetches and verifies its
files. The error paths use what a user meets: a kubeconfig pointing at a closed port, a name
that does not exist, and an API server answering 403 (a tiny local HTTP server, since the
gateway has no RBAC).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import FAKE_TRAINER_COMMAND, REPO, KubeEnv, wait_for
from tests.harness.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

JOB = "cli-job"
BAD = "cli-bad"  # its dataset URI makes the fake trainer exit 42 (InvalidInput)
STEPS = 100
BUCKET = "cli-artifacts"
SPARK = "▁▂▃▄▅▆▇█"
EXIT_NO_CLUSTER, EXIT_NOT_FOUND, EXIT_FORBIDDEN = 3, 4, 5


def cli_env(kubeconfig: Path | str, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: their kubeconfig and S3 credentials."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), **extra}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO / "operator"), str(REPO / "trainer-image"), env.get("PYTHONPATH")])
    )
    return env


def ftj(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``ftj ARGS`` (the package's entry point) and capture what the user sees."""
    return subprocess.run(
        [sys.executable, "-m", "finetune_cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ftj_popen(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "finetune_cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@dataclass
class Finished:
    """The namespace, the CLI's environment and what watch/logs -f showed while it ran."""

    ns: str
    env: dict[str, str]
    kube_env: KubeEnv
    watch: subprocess.CompletedProcess[str]
    follow: subprocess.CompletedProcess[str]


def _communicate(proc: subprocess.Popen[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args} did not end in {timeout}s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _manifest(name: str, ns: str, kube_env: KubeEnv) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "s3://models/tiny"},
            "datasets": [{"uri": "s3://datasets/d.jsonl"}],
            "output": {"uri": f"s3://{BUCKET}/{ns}/{name}"},
            "storage": {"s3": {"endpoint": kube_env.s3.endpoint_url, "pathStyle": True}},
            "training": {"maxSteps": STEPS, "saveSteps": 50},
            "resources": {"gpus": 0},
            "backoffLimit": 0,
        },
    }


@pytest.fixture(scope="module")
def finished(kube_env: KubeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Finished]:
    """A FineTuneJob run to Succeeded by the operator, followed by ``ftj watch``/``logs -f``."""
    ns = kube_env.create_namespace(f"cli-{uuid.uuid4().hex[:6]}")
    client = kube_env.s3.client()
    if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=BUCKET)
    env = cli_env(
        kube_env.kubeconfig,
        AWS_ACCESS_KEY_ID="FTJTESTACCESSKEY0000",
        AWS_SECRET_ACCESS_KEY="ftj-test",
        AWS_DEFAULT_REGION="us-east-1",
    )
    operator = OperatorProcess(
        kube_env.kubeconfig,
        tmp_path_factory.mktemp("operator"),
        env={
            "FTJ_WATCH_NAMESPACES": ns,
            "FTJ_TRAINER_COMMAND": FAKE_TRAINER_COMMAND,
            "FTJ_STATUS_MIN_INTERVAL_SECONDS": "0",
        },
    ).start()
    try:
        operator.wait_ready()
        kube_env.apply(_manifest(JOB, ns, kube_env), ns)
        bad = _manifest(BAD, ns, kube_env)
        bad["spec"]["datasets"] = [{"uri": "s3://datasets/invalid.jsonl"}]
        kube_env.apply(bad, ns)
        watch = ftj_popen(env, "watch", JOB, "-n", ns, "--interval", "0.3")
        follow = ftj_popen(env, "logs", JOB, "-n", ns, "-f", "--poll", "0.3")
        watched = _communicate(watch, timeout=90)
        followed = _communicate(follow, timeout=30)
        wait_for(
            lambda: (
                kube_env.kubectl_json("get", "ftj", BAD, "-n", ns).get("status", {}).get("phase")
                == "Failed"
            ),
            what=f"{BAD} Failed",
            details=operator.logs,
        )
    finally:
        operator.stop()
        print(f"--- operator log (last 3000 chars) ---\n{operator.logs()[-3000:]}")
    yield Finished(ns, env, kube_env, watched, followed)


# --------------------------------------------------------------------------------------------
# Following a running job.
# --------------------------------------------------------------------------------------------


def test_watch_shows_progress_bar_and_sparkline_and_exits_0(finished: Finished) -> None:
    out = finished.watch.stdout
    print(out)
    assert finished.watch.returncode == 0, finished.watch
    lines = out.splitlines()
    assert lines[-1].startswith(f"FineTuneJob {JOB} succeeded"), out
    assert f"ftj artifacts {JOB}" in lines[-1]
    training = [line for line in lines if line.startswith("Training")]
    assert training, out
    assert any("[#" in line and "loss " in line for line in training), out
    assert any(any(c in line for c in SPARK) for line in training), out
    final = next(line for line in reversed(lines) if line.startswith("Succeeded"))
    assert "[" + "#" * 24 + "]" in final and f"{STEPS}/{STEPS}" in final, final
    assert sum(c in SPARK for c in final) >= 3, final  # one block per loss value seen


def test_logs_follow_streams_until_the_job_ends(finished: Finished) -> None:
    assert finished.follow.returncode == 0, finished.follow
    events = [json.loads(line)["event"] for line in finished.follow.stdout.splitlines()]
    assert events[0] == "started" and events[-1] == "finished", finished.follow.stdout
    assert events.count("step") == STEPS // 10, finished.follow.stdout


# --------------------------------------------------------------------------------------------
# Reading the finished job.
# --------------------------------------------------------------------------------------------


def test_get_lists_the_job_with_progress_and_throughput(finished: Finished) -> None:
    result = ftj(finished.env, "get", "-n", finished.ns)
    assert result.returncode == 0, result
    print(result.stdout)
    header, *rows = result.stdout.splitlines()
    columns = header.split()
    assert columns[0] == "NAME" and columns[-1] == "AGE", header
    assert {"PHASE", "PROGRESS", "LOSS", "ETA", "TOKENS/S"} <= set(columns), header
    assert [r.split()[:2] for r in rows] == [[BAD, "Failed"], [JOB, "Succeeded"]], rows
    cells = dict(zip(columns, rows[1].split(), strict=True))
    assert cells["PROGRESS"] == f"{STEPS}/{STEPS}" and cells["ETA"] == "0s", rows[1]
    loss, tokens = cells["LOSS"], cells["TOKENS/S"]
    assert float(loss) > 0 and int(tokens) > 0, rows[1]
    one = ftj(finished.env, "get", JOB, "-n", finished.ns, "-o", "yaml")
    assert one.returncode == 0, one
    assert yaml.safe_load(one.stdout)["status"]["phase"] == "Succeeded"


def test_describe_shows_conditions_progress_artifacts_and_events(finished: Finished) -> None:
    result = ftj(finished.env, "describe", JOB, "-n", finished.ns)
    assert result.returncode == 0, result
    text = result.stdout
    print(text)
    sections = [line for line in text.splitlines() if line and not line.startswith(" ")]
    assert [s.split(":")[0] for s in sections if s.endswith(":")] == [
        "Progress",
        "Conditions",
        "Artifacts",
        "Pods",
        "Events",
    ], text
    block = _section(text, "Conditions")
    assert any(line.split()[:3] == ["Succeeded", "True", "Succeeded"] for line in block), text
    assert any(
        "Steps:" in line and f"{STEPS}/{STEPS}" in line for line in _section(text, "Progress")
    )
    manifest = f"s3://{BUCKET}/{finished.ns}/{JOB}/MANIFEST.json"
    assert any(line.split() == ["manifest:", manifest] for line in _section(text, "Artifacts"))
    events = _section(text, "Events")
    assert events[0].split()[:5] == ["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"], text
    assert any(f"FineTuneJob/{JOB}" in line for line in events[1:]), text
    assert result.stderr == "", result.stderr


def _section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"{title}:") + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith(" ")), len(lines))
    return [line.strip() for line in lines[start:end]]


def test_logs_prints_the_trainer_output(finished: Finished) -> None:
    result = ftj(finished.env, "logs", JOB, "-n", finished.ns)
    assert result.returncode == 0, result
    assert result.stdout == finished.follow.stdout
    tail = ftj(finished.env, "logs", JOB, "-n", finished.ns, "--tail", "1")
    assert json.loads(tail.stdout)["event"] == "finished", tail


def test_artifacts_lists_uris_and_downloads_verified_files(
    finished: Finished, tmp_path: Path
) -> None:
    base = f"s3://{BUCKET}/{finished.ns}/{JOB}"
    listed = ftj(finished.env, "artifacts", JOB, "-n", finished.ns)
    assert listed.returncode == 0, listed
    assert [line.split() for line in listed.stdout.splitlines()] == [
        ["adapter", f"{base}/adapter"],
        ["merged", f"{base}/merged"],
        ["metrics", f"{base}/metrics.json"],
        ["lossPlot", f"{base}/loss.png"],
        ["manifest", f"{base}/MANIFEST.json"],
    ]
    target = tmp_path / "result"
    got = ftj(finished.env, "artifacts", JOB, "-n", finished.ns, "--download", str(target))
    print(listed.stdout, got.stderr)
    assert got.returncode == 0, got
    assert f"verified against {target / 'MANIFEST.json'}" in got.stderr, got.stderr
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == [
        "MANIFEST.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "loss.png",
        "merged/model.safetensors",
        "metrics.json",
    ]
    lean = ftj(
        finished.env,
        "artifacts",
        JOB,
        "-n",
        finished.ns,
        "--download",
        str(tmp_path / "lean"),
        "--skip-merged",
    )
    assert lean.returncode == 0, lean
    assert not (tmp_path / "lean" / "merged").exists()
    assert (tmp_path / "lean" / "adapter" / "adapter_model.safetensors").read_bytes() == (
        target / "adapter" / "adapter_model.safetensors"
    ).read_bytes()


def test_a_failed_job_says_why(finished: Finished) -> None:
    # The trainer's termination message, naming the field, file and line.
    reason = "spec.datasets[0].uri: s3://datasets/invalid.jsonl: line 3: missing field 'output'"
    watch = ftj(finished.env, "watch", BAD, "-n", finished.ns)
    assert watch.returncode == 1, watch
    assert watch.stdout.startswith("Failed ")
    assert watch.stderr.startswith(f"FineTuneJob {BAD} failed (InvalidInput): {reason}"), watch
    assert f"ftj describe {BAD}" in watch.stderr
    logs = ftj(finished.env, "logs", BAD, "-n", finished.ns)
    assert logs.returncode == 0, logs
    assert json.loads(logs.stdout.splitlines()[-1])["reason"] == "InvalidInput", logs.stdout
    artifacts = ftj(finished.env, "artifacts", BAD, "-n", finished.ns)
    assert artifacts.returncode == 1, artifacts
    assert artifacts.stderr == (
        f"ftj artifacts: FineTuneJob {BAD} failed before publishing artifacts; "
        f"`ftj describe {BAD}` shows why\n"
    )


# --------------------------------------------------------------------------------------------
# What a user sees when something is wrong.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["get", "describe", "logs", "watch", "artifacts"])
def test_no_such_job(finished: Finished, command: str) -> None:
    result = ftj(finished.env, command, "nope", "-n", finished.ns)
    assert result.returncode == EXIT_NOT_FOUND, result
    assert result.stderr == (
        f"ftj {command}: FineTuneJob nope not found in namespace {finished.ns}; "
        "`ftj get` lists them\n"
    )
    assert result.stdout == ""


def _kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}
                ],
            }
        )
    )
    return path


@pytest.mark.parametrize("args", [["get"], ["describe", JOB], ["watch", JOB]])
def test_no_cluster_reachable(tmp_path: Path, args: list[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    result = ftj(cli_env(_kubeconfig(tmp_path, server)), *args)
    assert result.returncode == EXIT_NO_CLUSTER, result
    assert result.stderr.startswith(f"ftj {args[0]}: no Kubernetes cluster reachable: {server}")
    assert "Connection refused" in result.stderr and "kubectl cluster-info" in result.stderr
    assert "HTTPConnection(" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert time.monotonic() - started < 20


class _Forbidden(BaseHTTPRequestHandler):
    """An API server whose RBAC allows nothing: 403 with a Kubernetes Status for every GET."""

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body = json.dumps(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f'forbidden: User "alice" cannot get path {self.path}',
                "reason": "Forbidden",
                "details": {"group": "finetune.dev", "kind": "finetunejobs"},
                "code": 403,
            }
        ).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def forbidding_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Forbidden)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("args", "verb"),
    [
        (["get"], "list"),
        (["get", JOB], "get"),
        (["describe", JOB], "get"),
        (["logs", JOB], "get"),
        (["artifacts", JOB], "get"),
    ],
)
def test_no_permission(tmp_path: Path, forbidding_server: str, args: list[str], verb: str) -> None:
    result = ftj(cli_env(_kubeconfig(tmp_path, forbidding_server)), *args)
    assert result.returncode == EXIT_FORBIDDEN, result
    assert result.stderr == (
        f"ftj {args[0]}: not allowed to {verb} finetunejobs in namespace ml: ask your cluster "
        f"admin for a Role granting '{verb}' on 'finetunejobs' (apiGroup 'finetune.dev') in "
        "namespace ml\n"
    )
