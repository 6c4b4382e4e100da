"""The status write of a running job as the handlers make it, against a recording API.

What a cluster sees: no PATCH when nothing changed; a new step sends only what moved; when
every progress-write slot is busy (the API server is slow) a progress write waits for one, and
a phase change does not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest
from finetune_operator import handlers, naming, projections
from finetune_operator.handlers import refresh_status
from finetune_operator.observe import observe_status
from finetune_operator.runtime import ProgressReading, Runtime
from finetune_operator.settings import OperatorSettings

from .fixtures import ftj, job_condition, k8s_job, manifest, pod
from .test_observe import NOW, PROGRESS

pytestmark = pytest.mark.unit

KEY = ("ml", "demo")
LOG = logging.getLogger("test")


class RecordingApi:
    """Records PATCHes and created objects (Events); answers like the API server."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.created.append(obj)
        return obj

    async def find(self, *args: Any) -> dict[str, Any] | None:
        return None  # no such FineTuneJob on the server (a deleted Job is not created again)

    async def patch(self, *args: Any, subresource: str | None = None) -> dict[str, Any]:
        assert subresource == "status"
        self.patches.append(args[-1])
        return {}


def training_job() -> tuple[Runtime, RecordingApi, dict[str, Any], dict[str, Any], list[Any]]:
    """A job at step 120 whose status already says so (as the API server has it). No GPUs: its
    GPU-hours do not move with the clock."""
    api = RecordingApi()
    settings = OperatorSettings(status_min_interval_seconds=0.0)
    rt = Runtime(settings=settings, api=api, session=None)  # type: ignore[arg-type]
    job, pods = k8s_job(), [pod()]
    cpu = {"resources": {"gpus": 0}}
    status = observe_status(ftj(**cpu), job, pods, PROGRESS, NOW).status.to_wire()
    body = {**manifest(**cpu), "status": status}
    rt.progress[KEY] = ProgressReading(pods[0]["metadata"]["uid"], dict(PROGRESS))
    return rt, api, body, job, pods


def step(rt: Runtime, pods: list[Any], number: int) -> None:
    data = {**PROGRESS, "step": number, "summary": f"{number}/500"}
    rt.progress[KEY] = ProgressReading(pods[0]["metadata"]["uid"], data, f'"{number}"')


def dependent_event(
    rt: Runtime, plural: str, type_: str, indices: dict[str, Any], body: Any = None
) -> None:
    """Run the handler kopf calls for an event of a Job or pod of the FineTuneJob ``KEY``."""
    asyncio.run(
        handlers.dependent_changed(
            namespace=KEY[0], labels={naming.JOB_LABEL: KEY[1]}, memo=SimpleNamespace(runtime=rt),
            logger=LOG, type=type_, resource=SimpleNamespace(plural=plural), body=body or {},
            **indices,
        )
    )  # fmt: skip


def test_no_patch_when_nothing_changed_and_a_step_sends_only_what_moved() -> None:
    rt, api, body, job, pods = training_job()
    asyncio.run(refresh_status(rt, KEY, body, job, pods, LOG))  # type: ignore[arg-type]
    assert api.patches == []

    step(rt, pods, 121)
    asyncio.run(refresh_status(rt, KEY, body, job, pods, LOG))  # type: ignore[arg-type]
    assert len(api.patches) == 1
    sent = api.patches[0]["status"]
    assert sent["progress"] == {"step": 121, "summary": "121/500"}
    assert "phase" not in sent and "jobName" not in sent

    asyncio.run(refresh_status(rt, KEY, body, job, pods, LOG))  # type: ignore[arg-type]
    assert len(api.patches) == 1  # the same step again: nothing to write


def test_a_progress_write_waits_for_a_free_slot() -> None:
    rt, api, body, job, pods = training_job()

    async def with_slots_taken() -> None:
        rt.progress_writes = asyncio.Semaphore(1)
        await rt.progress_writes.acquire()
        step(rt, pods, 121)
        waiting = asyncio.create_task(refresh_status(rt, KEY, body, job, pods, LOG))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert api.patches == []  # every slot busy: the write waits
        rt.progress_writes.release()
        await waiting

    asyncio.run(with_slots_taken())
    assert [p["status"]["progress"]["step"] for p in api.patches] == [121]


def test_a_phase_change_is_written_even_when_every_slot_is_busy() -> None:
    rt, api, body, job, pods = training_job()
    suspended = k8s_job(suspend=True)

    async def with_slots_taken() -> None:
        rt.progress_writes = asyncio.Semaphore(1)
        async with rt.progress_writes:
            await refresh_status(rt, KEY, body, suspended, [], LOG)  # type: ignore[arg-type]

    asyncio.run(with_slots_taken())
    assert len(api.patches) == 1 and api.patches[0]["status"]["phase"] == "Pending"
    # ... and posted as an Event on the FineTuneJob (what `kubectl describe ftj` lists).
    assert [(e["kind"], e["reason"], e["type"]) for e in api.created] == [
        ("Event", "Resuming", "Normal")
    ]
    about = api.created[0]["involvedObject"]
    assert (about["kind"], about["name"], about["namespace"]) == (
        "FineTuneJob",
        body["metadata"]["name"],
        body["metadata"]["namespace"],
    )


def test_a_step_held_back_by_the_rate_limit_shortens_the_next_long_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a 10 s rate limit a second step within 10 s is not written; the job's next long
    poll must then return when the limit opens, not after its whole 30 s wait."""
    rt, api, body, job, pods = training_job()
    rt.settings = OperatorSettings(status_min_interval_seconds=10.0)
    step(rt, pods, 121)
    asyncio.run(refresh_status(rt, KEY, body, job, pods, LOG))  # type: ignore[arg-type]
    assert len(api.patches) == 1 and KEY not in rt.held_back
    step(rt, pods, 122)
    asyncio.run(refresh_status(rt, KEY, body, job, pods, LOG))  # type: ignore[arg-type]
    assert len(api.patches) == 1  # rate-limited
    opens_in = rt.held_back[KEY] - time.monotonic()
    assert 0 < opens_in <= 10.0

    waits: list[float] = []

    async def fake_fetch(*args: Any) -> None:
        waits.append(args[-1])  # the wait asked of the trainer
        return None

    monkeypatch.setattr(handlers, "fetch_progress", fake_fetch)
    indices = {
        "ftj_index": {KEY: [body]},
        "job_index": {KEY: [job]},
        "pod_index": {KEY: pods},
    }
    asyncio.run(handlers.poll_job(rt, KEY, indices, LOG, wait=30.0))  # type: ignore[arg-type]
    assert waits and waits[0] <= opens_in

    # Once the limit has opened the next poll writes the held-back step without reading the
    # trainer again (the newest progress is the one held), and the mark is gone.
    rt.held_back[KEY] = time.monotonic() - 0.1
    rt.settings = OperatorSettings(status_min_interval_seconds=0.0)
    asyncio.run(handlers.poll_job(rt, KEY, indices, LOG, wait=30.0))  # type: ignore[arg-type]
    assert len(waits) == 1  # no second read
    assert [p["status"]["progress"]["step"] for p in api.patches] == [121, 122]
    assert KEY not in rt.held_back


def test_a_job_created_here_is_not_reported_as_being_created_until_the_watch_shows_it() -> None:
    """Between creating a Job and its watch event, a pod event or a poll must not turn "waiting
    for pods of Job ..." back into "creating the Kubernetes Job" (a reason going backwards in
    `kubectl get ftj`, and a wasted write). A Job deleted after that is no longer stood in for.
    """
    api = RecordingApi()
    rt = Runtime(settings=OperatorSettings(), api=api, session=None)  # type: ignore[arg-type]
    job = k8s_job()
    created = observe_status(ftj(), job, [], None, NOW).status.to_wire()
    assert created["conditions"][0]["reason"] == "JobCreated"
    body = {**manifest(), "status": created}
    rt.unseen_jobs[KEY] = projections.job_entry(job)  # as the create handler leaves it
    unwatched = {"ftj_index": {KEY: [body]}, "job_index": {}, "pod_index": {}}
    dependent_event(rt, "pods", "ADDED", unwatched)
    asyncio.run(handlers.refresh_from_indices(rt, KEY, unwatched, LOG))  # type: ignore[arg-type]
    assert api.patches == []  # still "waiting for pods of Job ftj-demo"

    watched = {**unwatched, "job_index": {KEY: [job]}}
    asyncio.run(handlers.refresh_from_indices(rt, KEY, watched, LOG))  # type: ignore[arg-type]
    assert KEY not in rt.unseen_jobs and api.patches == []  # the watch has it now

    rt.unseen_jobs[KEY] = projections.job_entry(job)

    dependent_event(rt, "jobs", "DELETED", unwatched)
    assert KEY not in rt.unseen_jobs
    assert [p["status"]["conditions"][0]["reason"] for p in api.patches] == ["Creating"]


@pytest.mark.parametrize(
    ("found", "recreated"),
    [
        ("training", True),  # deleted by hand: created again
        ("gone", False),  # the garbage collector after the FineTuneJob was deleted
        ("deleting", False),  # the FineTuneJob is being deleted (foreground)
        ("succeeded", False),  # finished: never train again
        ("renamed", False),  # a new FineTuneJob of the same name owns nothing of this Job
    ],
)
def test_a_deleted_job_is_created_again_only_while_its_finetunejob_trains(
    found: str, recreated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = manifest()
    live["metadata"]["uid"] = k8s_job()["metadata"]["ownerReferences"][0]["uid"]
    if found == "deleting":
        live["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    if found == "succeeded":
        live["status"] = {"phase": "Succeeded"}
    if found == "renamed":
        live["metadata"]["uid"] = "another-uid"

    class FindingApi(RecordingApi):
        async def find(self, *args: Any) -> dict[str, Any] | None:
            return None if found == "gone" else live

    api = FindingApi()
    rt = Runtime(settings=OperatorSettings(), api=api, session=None)  # type: ignore[arg-type]
    ensured: list[dict[str, Any]] = []

    async def ensure(rt: Runtime, body: Any, logger: Any, kwargs: Any) -> None:
        ensured.append(dict(body))

    monkeypatch.setattr(handlers, "_ensure_training", ensure)
    indices = {"ftj_index": {KEY: [manifest()]}, "job_index": {}, "pod_index": {}}
    dependent_event(rt, "jobs", "DELETED", indices, k8s_job())
    expected = [live["metadata"]["uid"]] if recreated else []
    assert [b["metadata"]["uid"] for b in ensured] == expected


def test_a_finished_job_keeps_its_status_when_its_job_is_deleted() -> None:
    """`kubectl delete job` (or a TTL) after the FineTuneJob succeeded: the status stays
    Succeeded with its artifacts, not "Pending: creating the Kubernetes Job"."""
    api = RecordingApi()
    rt = Runtime(settings=OperatorSettings(), api=api, session=None)  # type: ignore[arg-type]
    done = k8s_job(job_condition("Complete", "Completed"))
    final = observe_status(ftj(), done, [], None, NOW).status.to_wire()
    assert final["phase"] == "Succeeded"
    body = {**manifest(), "status": final}
    gone = {"ftj_index": {KEY: [body]}, "job_index": {}, "pod_index": {}}

    dependent_event(rt, "jobs", "DELETED", gone, done)
    asyncio.run(handlers.refresh_from_indices(rt, KEY, gone, LOG))  # type: ignore[arg-type]
    assert api.patches == []
