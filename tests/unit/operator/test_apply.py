"""Idempotent creation against a fake API that behaves like the API server on names."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from finetune_operator.apply import ensure_objects, suspend_patch
from finetune_operator.errors import AlreadyExists, NotFound, OwnershipConflict
from finetune_operator.render import render_objects
from finetune_operator.settings import OperatorSettings

from .fixtures import ftj

pytestmark = pytest.mark.unit

Obj = dict[str, Any]


class FakeApi:
    """Names are unique per kind and namespace; create of a taken name answers 409."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.calls: list[str] = []
        self.crash_after = crash_after

    async def create(self, obj: Obj) -> Obj:
        self.calls.append(f"create {obj['kind']}")
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.objects:
            raise AlreadyExists(
                409, f"{obj['kind']} {key[2]} already exists", api_reason="AlreadyExists"
            )
        if self.crash_after is not None and len(self.objects) >= self.crash_after:
            raise ConnectionError("operator crashed")
        stored = copy.deepcopy(obj)
        stored["metadata"]["uid"] = f"uid-{len(self.objects)}"
        self.objects[key] = stored
        return copy.deepcopy(stored)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj:
        self.calls.append(f"get {kind}")
        try:
            return copy.deepcopy(self.objects[(kind, namespace, name)])
        except KeyError:
            raise NotFound(404, f"{kind} {name} not found") from None


def objects(**spec: Any) -> list[Obj]:
    return render_objects(ftj(**spec), OperatorSettings()).in_creation_order()


def test_first_run_creates_everything_in_order() -> None:
    api = FakeApi()
    applied = asyncio.run(ensure_objects(api, objects(resources={"gpus": 8, "nodes": 2})))
    assert [(a.kind, a.outcome) for a in applied] == [
        ("ConfigMap", "created"),
        ("Service", "created"),
        ("Job", "created"),
    ]
    assert api.calls == ["create ConfigMap", "create Service", "create Job"]


def test_second_run_reads_and_keeps_what_exists() -> None:
    api = FakeApi()
    asyncio.run(ensure_objects(api, objects()))
    api.calls.clear()
    applied = asyncio.run(ensure_objects(api, objects()))
    assert [a.outcome for a in applied] == ["existing", "existing"]
    assert api.calls == ["create ConfigMap", "get ConfigMap", "create Job", "get Job"]
    assert applied[-1].obj["metadata"]["uid"] == "uid-1"  # the Job that was there
    assert len([k for k in api.objects if k[0] == "Job"]) == 1


@pytest.mark.parametrize("crash_after", [0, 1, 2])
def test_crash_between_any_two_calls_ends_with_exactly_one_job(crash_after: int) -> None:
    api = FakeApi(crash_after=crash_after)
    wanted = objects(resources={"gpus": 8, "nodes": 2})
    with pytest.raises(ConnectionError):
        asyncio.run(ensure_objects(api, wanted))
    api.crash_after = None  # the operator restarts; kopf retries the handler
    asyncio.run(ensure_objects(api, wanted))
    asyncio.run(ensure_objects(api, wanted))
    kinds = sorted(k[0] for k in api.objects)
    assert kinds == ["ConfigMap", "Job", "Service"]


def test_an_object_owned_by_another_ftj_is_not_adopted() -> None:
    api = FakeApi()
    asyncio.run(ensure_objects(api, objects()))
    newer = objects()
    for obj in newer:
        obj["metadata"]["ownerReferences"][0]["uid"] = "uid-of-a-recreated-ftj"
    with pytest.raises(OwnershipConflict, match="not owned by this FineTuneJob"):
        asyncio.run(ensure_objects(api, newer))


@pytest.mark.parametrize(
    ("spec_suspend", "queue", "job_suspended", "patch"),
    [
        (True, None, False, {"spec": {"suspend": True}}),
        (False, None, True, {"spec": {"suspend": False}}),
        (True, None, True, None),
        (False, None, False, None),
        (False, "gpu-queue", True, None),  # Kueue admits, not us
        (True, "gpu-queue", False, {"spec": {"suspend": True}}),
    ],
)
def test_suspend_patch(
    spec_suspend: bool, queue: str | None, job_suspended: bool, patch: Obj | None
) -> None:
    assert suspend_patch(spec_suspend, queue, {"spec": {"suspend": job_suspended}}) == patch
