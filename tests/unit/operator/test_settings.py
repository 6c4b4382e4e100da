"""Settings from environment variables."""

from __future__ import annotations

import pytest
from finetune_operator.settings import ENV_DOCS, OperatorSettings, SettingsError

pytestmark = pytest.mark.unit


def test_defaults() -> None:
    s = OperatorSettings.from_env({})
    assert s.trainer_image == "ghcr.io/finetune-dev/finetune-trainer:0.1.0"
    assert s.watch_namespaces == ()
    assert s.progress_poll_seconds == 10.0 and s.status_min_interval_seconds == 10.0
    assert s.metrics_port == 9090 and s.peering is None and s.trainer_command == ()


def test_every_variable_read() -> None:
    env = {
        "FTJ_TRAINER_IMAGE": "reg/trainer:1",
        "FTJ_GPU_RESOURCE_NAME": "amd.com/gpu",
        "FTJ_S3_ENDPOINT": "http://moto:5000",
        "FTJ_WATCH_NAMESPACES": " a, b ,,",
        "FTJ_PROGRESS_POLL_SECONDS": "2",
        "FTJ_STATUS_MIN_INTERVAL_SECONDS": "0",
        "FTJ_METRICS_PORT": "0",
        "FTJ_PEERING": "finetune",
        "FTJ_PEERING_PRIORITY": "7",
        "FTJ_TRAINER_COMMAND": "python -m finetune_trainer --x 'a b'",
        "FTJ_SCRATCH_STORAGE_CLASS": "nvme",
        "FTJ_LIVENESS_ENDPOINT": "",
    }
    s = OperatorSettings.from_env(env)
    assert s.watch_namespaces == ("a", "b")
    assert s.trainer_command == ("python", "-m", "finetune_trainer", "--x", "a b")
    assert (s.gpu_resource_name, s.s3_endpoint, s.scratch_storage_class) == (
        "amd.com/gpu",
        "http://moto:5000",
        "nvme",
    )
    assert (s.progress_poll_seconds, s.status_min_interval_seconds, s.metrics_port) == (2.0, 0.0, 0)
    assert (s.peering, s.peering_priority, s.liveness_endpoint) == ("finetune", 7, None)
    assert set(env) <= set(ENV_DOCS)


def test_replicas_get_distinct_priorities() -> None:
    a = OperatorSettings.from_env({"POD_NAME": "finetune-operator-7d9f-abcde"})
    b = OperatorSettings.from_env({"POD_NAME": "finetune-operator-7d9f-fghij"})
    assert a.peering_priority != b.peering_priority


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FTJ_PROGRESS_POLL_SECONDS", "soon"),
        ("FTJ_METRICS_PORT", "-1"),
        ("FTJ_S3_ENDPOINT", "moto:5000"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        OperatorSettings.from_env({name: value})
