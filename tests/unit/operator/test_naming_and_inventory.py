"""Names, labels, and which objects belong to a FineTuneJob."""

from __future__ import annotations

import re

import pytest
from finetune_operator.inventory import job_pods, owned_job
from finetune_operator.naming import label_value, resource_name
from finetune_operator.progress import progress_target

from .fixtures import UID, k8s_job, pod

pytestmark = pytest.mark.unit
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize(
    "name", ["demo", "a" * 53, "a" * 60, "x" * 253, "my.job.v2", "1-starts-with-digit"]
)
def test_resource_names_are_short_dns_labels(name: str) -> None:
    out = resource_name(name)
    assert DNS_1035.match(out) and len(out) <= 56
    assert len(label_value(name)) <= 63


def test_cut_names_do_not_collide() -> None:
    assert resource_name("a" * 60 + "1") != resource_name("a" * 60 + "2")
    assert resource_name("my.job") != resource_name("my-job")


def test_objects_of_an_older_ftj_are_ignored() -> None:
    mine = k8s_job()
    stale = k8s_job()
    stale["metadata"]["ownerReferences"][0]["uid"] = "old-uid"
    stale["metadata"]["uid"] = "old-job"
    assert owned_job([stale, mine], UID) is not None
    assert owned_job([stale], UID) is None
    assert [p["metadata"]["name"] for p in job_pods([pod("a"), pod("b")], mine)] == ["a", "b"]
    assert job_pods([pod("a")], stale) == []


def test_progress_target_is_the_running_rank0_pod() -> None:
    pods = [
        pod("rank1", index="1", ip="10.0.0.2"),
        pod("rank0-old", "Failed", index="0", ip="10.0.0.3"),
        pod("rank0", index="0", ip="10.0.0.4", created="2025-06-01T10:05:00Z"),
    ]
    target = progress_target(pods)
    assert target is not None and target.pod_name == "rank0"
    assert target.url == "http://10.0.0.4:8080/progress"
    assert progress_target([pod(ip="fd00::7")]).url == "http://[fd00::7]:8080/progress"  # type: ignore[union-attr]
    assert progress_target([pod(phase="Pending")]) is None
