"""The cluster commands' pure parts (tables, sparkline, describe) and their error lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from finetune_cli import cmd_describe, cmd_get, cmd_watch
from finetune_cli.cluster import EXIT_FORBIDDEN, EXIT_NO_CLUSTER, EXIT_NOT_FOUND, CliError, Cluster
from finetune_cli.main import main

pytestmark = pytest.mark.unit

JOB: dict[str, Any] = {
    "metadata": {
        "name": "demo",
        "namespace": "ml-team",
        "creationTimestamp": "2025-01-01T00:00:00Z",
    },
    "spec": {
        "model": {"uri": "s3://models/m"},
        "datasets": [{"uri": "s3://d/x.jsonl"}],
        "output": {"uri": "s3://out/demo"},
    },
    "status": {
        "phase": "Failed",
        "jobName": "ftj-demo",
        "progress": {
            "summary": "120/500 (24%)",
            "percent": 24.0,
            "loss": 1.23456,
            "tokensPerSecond": 5120.4,
            "eta": "9m",
            "step": 120,
        },
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "OOMKilled",
                "message": "reduce batchSize",
                "lastTransitionTime": "2025-01-01T00:05:00Z",
            }
        ],
        "artifacts": {"adapter": "s3://out/demo/adapter"},
    },
}


def test_get_row_shows_tokens_per_second() -> None:
    assert cmd_get.row(JOB)[:6] == ["demo", "Failed", "120/500 (24%)", "1.2346", "9m", "5120"]


def test_sparkline_scales_between_min_and_max() -> None:
    assert cmd_watch.sparkline([3.0, 2.0, 1.0]) == "█▅▁"
    assert cmd_watch.sparkline([1.0, 1.0]) == "▅▅"
    assert cmd_watch.sparkline([]) == ""


def test_loss_history_counts_each_step_once() -> None:
    history = cmd_watch.LossHistory()
    for _ in range(3):
        history.add(JOB)
    assert history.values == [1.23456]


def test_watch_line_and_failure_message() -> None:
    line = cmd_watch.status_line(JOB, [2.0, 1.0])
    assert "[######" in line and "loss 1.2346" in line and "█▁" in line
    assert "OOMKilled" in cmd_watch.final_message(JOB)


def test_describe_shows_conditions_progress_artifacts_and_events() -> None:
    events = [
        {
            "type": "Warning",
            "reason": "OOMKilled",
            "message": "killed",
            "involvedObject": {"kind": "Pod", "name": "ftj-demo-x"},
            "lastTimestamp": "2025-01-01T00:05:00Z",
        }
    ]
    text = cmd_describe.describe(JOB, [], events)
    for fragment in (
        "Phase:",
        "OOMKilled",
        "120/500 (24%)",
        "s3://out/demo/adapter",
        "Pod/ftj-demo-x",
    ):
        assert fragment in text


def _fail(status: int, body: dict[str, Any] | str) -> Any:
    def fn(*_: Any, **__: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        err = ApiException(status=status, reason="x")
        err.body = body if isinstance(body, str) else json.dumps(body)
        raise err

    return fn


@pytest.mark.parametrize(
    "status,body,code,fragment",
    [
        (
            404,
            {"reason": "NotFound", "details": {"name": "demo"}},
            EXIT_NOT_FOUND,
            "FineTuneJob demo not found in namespace ml-team; `ftj get` lists them",
        ),
        (404, "404 page not found", EXIT_NOT_FOUND, "is not installed"),
        (
            403,
            {"reason": "Forbidden"},
            EXIT_FORBIDDEN,
            "not allowed to get finetunejobs in namespace ml-team: ask",
        ),
    ],
)
def test_api_errors_become_one_line(status: int, body: Any, code: int, fragment: str) -> None:
    cluster = Cluster(
        api_client=type("C", (), {"configuration": type("K", (), {"host": "h"})()})(),
        namespace="ml-team",
        timeout=1,
    )
    with pytest.raises(CliError) as caught:
        cluster.call(_fail(status, body), verb="get", resource="finetunejobs", name="demo")
    assert caught.value.exit_code == code and fragment in caught.value.message


def test_unreachable_cluster_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "users": [{"name": "u", "user": {}}],
            }
        )
    )
    code = main(["get", "--kubeconfig", str(kubeconfig), "--request-timeout", "2"])
    err = capsys.readouterr().err
    assert code == EXIT_NO_CLUSTER
    assert err.startswith("ftj get: no Kubernetes cluster reachable: ") and err.count("\n") == 1


def test_missing_kubeconfig_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["describe", "x", "--kubeconfig", str(tmp_path / "absent")])
    assert code == EXIT_NO_CLUSTER
    assert "no Kubernetes cluster reachable" in capsys.readouterr().err
