"""The kopf edges: react to FineTuneJobs, their Jobs and pods; everything else is pure code.

* create/resume of a FineTuneJob → :func:`render_objects` + :func:`ensure_objects` (idempotent),
  then the first status write (``jobName``, phase Pending);
* update of ``spec.suspend`` → patch the Job's ``spec.suspend``;
* ``status.gpuHours`` reached ``spec.limits.maxGPUHours`` → suspend the Job (its pods get
  SIGTERM, save a checkpoint and exit), then the job fails with reason BudgetExceeded;
* any event of a labelled Job or pod → recompute the status with :func:`observe_status`;
* every ``FTJ_PROGRESS_POLL_SECONDS``, for each unfinished FineTuneJob → :func:`poll_job`: read
  ``/progress`` of the rank-0 pod, recompute the status (also a periodic resync in case an event
  was missed). One task calls it for every job (:mod:`finetune_operator.poller`), which a
  standby replica under peering pauses (:mod:`finetune_operator.standby`).

Status is always written through the ``/status`` subresource
(https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#status-subresource),
only when it changed, and progress-only changes at most once per
``FTJ_STATUS_MIN_INTERVAL_SECONDS`` per job, sending only what moved
(:mod:`finetune_operator.status_writes`). When the API server is slower than the progress,
progress writes take at most ``runtime.CONCURRENT_PROGRESS_WRITES`` of the client's connections,
so creating new jobs' objects and writing phase changes never wait behind them.

FineTuneJobs, Jobs and pods are kept in kopf in-memory indices fed by the watch streams
(https://kopf.readthedocs.io/en/stable/indexing/), so recomputing a status costs no API read;
an index keeps only the fields the status computation reads (:mod:`finetune_operator.projections`).

Deletion: nothing to do. The ConfigMap, Service and Job carry a controller owner reference and
the garbage collector removes them (and the Job its pods); artifacts in object storage are
never touched. The operator puts no finalizer on a FineTuneJob (no handler needs to run before
it is gone: the poller simply stops seeing a deleted job), so deleting one never waits for the
operator. A ``finetune.dev/finalizer`` left by an older, timer-based release is removed by kopf
on the job's next event.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, cast

import kopf
from finetune_api import FineTuneJob, ManifestError, parse_manifest
from finetune_api.status import TERMINAL_PHASES, FineTuneJobStatus
from pydantic import ValidationError

from finetune_operator import gpu_usage, metrics, naming, projections
from finetune_operator.apply import ensure_objects, suspend_patch
from finetune_operator.errors import ApiError, NotFound, OwnershipConflict
from finetune_operator.events import post_event
from finetune_operator.inventory import Key, is_owned_by, job_pods, object_key, owned_job
from finetune_operator.observe import observe_status
from finetune_operator.progress import fetch_progress, progress_target
from finetune_operator.render import RenderError, render_objects
from finetune_operator.runtime import ProgressReading, Runtime, WrittenStatus
from finetune_operator.settings import OperatorSettings
from finetune_operator.status_writes import progress_only, status_patch

FTJ = ("finetune.dev", "v1alpha1", "finetunejobs")
JOBS = ("batch", "v1", "jobs")
PODS = ("v1", "pods")
LABELLED = {naming.JOB_LABEL: kopf.PRESENT}

# Read once at import: the handlers and the poller share one reading of the environment.
SETTINGS = OperatorSettings.from_env()

Manifest = dict[str, Any]


def runtime(memo: Any) -> Runtime:
    """The process state put into kopf's memo by the startup handler."""
    found = getattr(memo, "runtime", None)
    if not isinstance(found, Runtime):
        raise kopf.TemporaryError("operator runtime not initialized yet", delay=5)
    return found


def _plain(body: Mapping[str, Any]) -> Manifest:
    """A detached copy of a kopf body (kopf reuses and mutates its views)."""
    return copy.deepcopy(dict(body))


def _parse(body: Mapping[str, Any], status: Mapping[str, Any] | None) -> FineTuneJob:
    """The FineTuneJob model of a watched object, with ``status`` as the baseline status."""
    data = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
    try:
        job = parse_manifest(data, f"FineTuneJob {body['metadata'].get('name')}")
    except ManifestError as err:
        # Admission validated it; this only happens with an operator older than the CRD.
        raise kopf.PermanentError(str(err)) from None
    try:
        parsed = FineTuneJobStatus.model_validate(dict(status or {}))
    except ValidationError:
        parsed = FineTuneJobStatus()
    return job.model_copy(update={"status": parsed})


def _key_of(namespace: str | None, name: str) -> Key:
    return object_key(namespace, naming.label_value(name))


def _index(kwargs: Mapping[str, Any], name: str) -> kopf.Index[Key, Manifest]:
    """One of the indices below, as kopf passes it to every handler (keyword = function name)."""
    found = kwargs.get(name)
    if found is None:
        raise kopf.TemporaryError(f"index {name} not available yet", delay=5)
    return cast("kopf.Index[Key, Manifest]", found)


def _first(store: Iterable[Manifest] | None) -> Manifest | None:
    for item in store or ():
        return item
    return None


# --- indices: what the watch streams have seen, by (namespace, finetune.dev/job) --------------


@kopf.index(*FTJ)
def ftj_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, Manifest]:
    """FineTuneJobs by key (only the fields the status computation reads)."""
    return {_key_of(namespace, name): projections.finetunejob_entry(body)}


@kopf.index(*JOBS, labels=LABELLED)
def job_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Manifest]:
    """Jobs created for FineTuneJobs, by key (only the fields the status computation reads)."""
    return {object_key(namespace, labels[naming.JOB_LABEL]): projections.job_entry(body)}


@kopf.index(*PODS, labels=LABELLED)
def pod_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Manifest]:
    """Trainer pods, by key (only the fields the status computation reads)."""
    return {object_key(namespace, labels[naming.JOB_LABEL]): projections.pod_entry(body)}


# --- the status write --------------------------------------------------------------------------


async def refresh_status(
    rt: Runtime,
    key: Key,
    ftj: Manifest,
    k8s_job: Manifest | None,
    pods: list[Manifest],
    logger: kopf.Logger,
    refusal: tuple[str, str] | None = None,
) -> None:
    """Recompute the status of one FineTuneJob and write it if it changed (rate-limited).

    ``refusal`` (reason, message): the Job was not created because the spec can't run here.
    """
    async with rt.lock(key):
        previous = rt.written.get(key)
        baseline = previous.status if previous else ftj.get("status") or {}
        if k8s_job is None and refusal is None and baseline.get("phase") in TERMINAL_PHASES:
            # Finished, and its Job deleted since (by hand, or a TTL): without the Job the
            # status would read "creating the Kubernetes Job"; the final one stands.
            return
        job = _parse(ftj, baseline)
        reading = rt.progress.get(key)
        target = progress_target(pods)
        live = reading.data if reading and target and reading.pod_uid == target.pod_uid else None
        now = datetime.now(timezone.utc)
        update = observe_status(
            job,
            k8s_job,
            pods,
            live,
            now,
            refusal,
            gpu_hour_price=rt.settings.gpu_hour_price,
            currency=rt.settings.gpu_hour_currency,
        )
        if update.stop_job and k8s_job is not None:
            await _stop_for_budget(rt, k8s_job, logger)
        current = (job.status or FineTuneJobStatus()).to_wire()
        wanted = update.status.to_wire()
        patch = status_patch(
            current,
            wanted,
            previous.at if previous else None,
            time.monotonic(),
            rt.settings.status_min_interval_seconds,
        )
        phase, events = update.phase, update.events
        if rt.phases.get(key) != phase:  # a tally over every job: only on a change
            rt.phases[key] = phase
            metrics.set_phase_counts(rt.phases.values())
        if patch is None:
            if previous is not None and current != wanted:  # held back by the rate limit
                rt.held_back[key] = previous.at + rt.settings.status_min_interval_seconds
            return
        rt.held_back.pop(key, None)
        meta = ftj["metadata"]
        write = rt.api.patch(
            ftj["apiVersion"],
            ftj["kind"],
            meta["namespace"],
            meta["name"],
            patch,
            subresource="status",
        )
        if progress_only(current, wanted):
            del job, update, reading, live  # not kept while waiting for a slot (memory)
            async with rt.progress_writes:  # phase changes and creations go first when busy
                await write
        else:
            await write
        rt.written[key] = WrittenStatus(wanted, time.monotonic())
        new_progress = wanted.get("progress") or {}
        if new_progress.get("updatedAt") != (current.get("progress") or {}).get("updatedAt"):
            metrics.record_progress_lag(new_progress.get("updatedAt"), now)
        if current.get("phase") != phase:
            logger.info(
                f"phase {current.get('phase') or '-'} -> {phase}",
                extra={"phase": phase, "previousPhase": current.get("phase")},
            )
        for event in events:
            await post_event(rt.api, ftj, event, logger)


async def _stop_for_budget(rt: Runtime, k8s_job: Manifest, logger: kopf.Logger) -> None:
    """Suspend the Job of a FineTuneJob whose GPU budget is spent.

    Suspending, not deleting: the Job controller sends the pods SIGTERM and waits their
    ``terminationGracePeriodSeconds``, in which the trainer saves and uploads a checkpoint
    (https://kubernetes.io/docs/concepts/workloads/controllers/job/#suspending-a-job).
    """
    meta = k8s_job["metadata"]
    await rt.api.patch(
        "batch/v1",
        "Job",
        meta["namespace"],
        meta["name"],
        {"spec": {"suspend": True}},
    )
    logger.info(
        f"GPU budget spent: suspended Job {meta['name']}", extra={"reason": "BudgetExceeded"}
    )


def _budget_spent(job: FineTuneJob) -> bool:
    return gpu_usage.budget_spent(job, job.status.gpu_hours if job.status else None)


def _current_job(
    rt: Runtime, key: Key, indices: Mapping[str, Any], ftj_uid: str | None
) -> Manifest | None:
    """The FineTuneJob's Job as the Job watch shows it or, until the watch has it, as this
    process created it (``Runtime.unseen_jobs``)."""
    k8s_job = owned_job(_index(indices, "job_index").get(key) or (), ftj_uid)
    if k8s_job is not None:
        rt.unseen_jobs.pop(key, None)
        return k8s_job
    unseen = rt.unseen_jobs.get(key)
    return owned_job((unseen,), ftj_uid) if unseen is not None else None


async def refresh_from_indices(
    rt: Runtime,
    key: Key,
    indices: Mapping[str, Any],
    logger: kopf.Logger,
) -> None:
    """:func:`refresh_status` with the FineTuneJob, Job and pods as the watches last saw them."""
    ftj = _first(_index(indices, "ftj_index").get(key))
    if ftj is None:
        return  # deleted, or not seen yet: its own events will come
    k8s_job = _current_job(rt, key, indices, ftj["metadata"].get("uid"))
    pods = job_pods(_index(indices, "pod_index").get(key) or (), k8s_job)
    await refresh_status(rt, key, ftj, k8s_job, pods, logger)


# --- FineTuneJob lifecycle ---------------------------------------------------------------------


@kopf.on.resume(*FTJ)
@kopf.on.create(*FTJ)
async def ensure_training(
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Create the ConfigMap, Service and Job of a FineTuneJob unless they exist."""
    rt = runtime(memo)
    async with rt.creating:  # bounds the memory of a creation burst (runtime.CONCURRENT_CREATES)
        await _ensure_training(rt, body, logger, kwargs)


async def _ensure_training(
    rt: Runtime, body: kopf.Body, logger: kopf.Logger, kwargs: Mapping[str, Any]
) -> None:
    started = time.monotonic()
    try:
        ftj = _plain(body)
        job = _parse(ftj, ftj.get("status"))
        if job.status is not None and job.status.phase in TERMINAL_PHASES:
            return  # finished: never start training again (e.g. its Job was deleted by hand)
        key = _key_of(body.metadata.namespace, body.metadata.name)
        try:
            objects = render_objects(job, rt.settings)
        except RenderError as err:
            # A spec admission could not judge (e.g. a capability this cluster doesn't allow):
            # the job fails with the reason instead of being retried forever.
            metrics.record_error(err)
            logger.warning(str(err), extra={"reason": err.reason})
            await refresh_status(rt, key, ftj, None, [], logger, (err.reason, str(err)))
            return
        try:
            applied = await ensure_objects(rt.api, objects.in_creation_order())
        except OwnershipConflict as err:
            metrics.record_error(err)
            raise kopf.TemporaryError(str(err), delay=30) from err
        for item in applied:
            if item.outcome == "created":
                logger.info(
                    f"created {item.kind} {item.name}",
                    extra={"object": {"kind": item.kind, "name": item.name}},
                )
        k8s_job = applied[-1].obj
        # A job whose GPU budget is spent stays suspended (refresh_status fails it).
        wanted = job.spec.suspend or _budget_spent(job)
        drift = suspend_patch(wanted, job.spec.queue_name, k8s_job)
        if drift is not None:
            k8s_job = await rt.api.patch(
                "batch/v1",
                "Job",
                k8s_job["metadata"]["namespace"],
                k8s_job["metadata"]["name"],
                drift,
            )
        if (
            owned_job(_index(kwargs, "job_index").get(key) or (), k8s_job["metadata"]["uid"])
            is None
        ):
            rt.unseen_jobs[key] = projections.job_entry(k8s_job)
        pods = job_pods(_index(kwargs, "pod_index").get(key) or (), k8s_job)
        await refresh_status(rt, key, ftj, k8s_job, pods, logger)
    except (ApiError, kopf.PermanentError) as err:
        metrics.record_error(err)
        raise
    finally:
        metrics.RECONCILE_SECONDS.labels(handler="ensure").observe(time.monotonic() - started)


@kopf.on.update(*FTJ, field="spec.suspend")
async def suspend_changed(
    body: kopf.Body, new: Any, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Suspend or resume the Job when ``spec.suspend`` changes."""
    rt = runtime(memo)
    job = _parse(body, body.get("status"))
    if job.status is not None and job.status.phase in TERMINAL_PHASES:
        return
    namespace = body.metadata.namespace or "default"
    name = naming.resource_name(body.metadata.name)
    try:
        k8s_job = await rt.api.get("batch/v1", "Job", namespace, name)
    except NotFound:
        return  # the create/resume handler will create it with the right suspend value
    drift = suspend_patch(bool(new) or _budget_spent(job), job.spec.queue_name, k8s_job)
    if drift is not None:
        await rt.api.patch("batch/v1", "Job", namespace, name, drift)
        logger.info(f"Job {name} suspend={bool(new)}", extra={"suspend": bool(new)})


def _deleted(type: str | None, **_: Any) -> bool:
    return type == "DELETED"


# The filter, not the handler, skips the other events: every status write comes back as a
# MODIFIED event, and a filter costs kopf far less than a handler call.
@kopf.on.event(*FTJ, when=_deleted)
async def ftj_event(
    type: str | None, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    """Forget a deleted FineTuneJob's in-memory state (async: runs on the loop, no thread races)."""
    rt = runtime(memo)
    rt.forget(_key_of(namespace, name))
    metrics.set_phase_counts(rt.phases.values())


async def _recreate_deleted_job(
    rt: Runtime,
    key: Key,
    deleted: Mapping[str, Any],
    logger: kopf.Logger,
    kwargs: Mapping[str, Any],
) -> bool:
    """Create the Job again when it was deleted while its FineTuneJob still trains; True if so.

    Why: the FineTuneJob owns the decision to train, the Job only carries it out, so a Job
    deleted by hand (or by a cluster cleanup) is put back as a Deployment puts back its
    ReplicaSet, and the trainer resumes from its last checkpoint. Without this the status said
    "creating the Kubernetes Job" until the operator restarted. Not when the FineTuneJob has
    finished, is being deleted or is gone (the garbage collector deleting the Job of a deleted
    FineTuneJob; the FineTuneJob's own watch may not have said so yet, hence the LIST).
    """
    entry = _first(_index(kwargs, "ftj_index").get(key))
    if entry is None or (entry.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return False
    namespace, name = key
    current = await rt.api.find(entry["apiVersion"], entry["kind"], namespace, name)
    if current is None or (current.get("metadata") or {}).get("deletionTimestamp"):
        return False
    if not is_owned_by(deleted, current["metadata"].get("uid")):
        return False  # a Job of an earlier FineTuneJob of the same name
    if (current.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return False
    job_name = (deleted.get("metadata") or {}).get("name")
    logger.warning(
        f"Job {job_name} was deleted while the job trains: creating it again (the trainer "
        "resumes from its last checkpoint)",
        extra={"reason": "JobDeleted"},
    )
    async with rt.creating:
        await _ensure_training(rt, kopf.Body(cast("kopf.RawBody", current)), logger, kwargs)
    return True


# --- Jobs, pods and progress → status ----------------------------------------------------------


@kopf.on.event(*JOBS, labels=LABELLED)
@kopf.on.event(*PODS, labels=LABELLED)
async def dependent_changed(
    namespace: str | None,
    labels: kopf.Labels,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """A Job or pod of a FineTuneJob changed: recompute that FineTuneJob's status."""
    started = time.monotonic()
    try:
        key = object_key(namespace, labels[naming.JOB_LABEL])
        rt = runtime(memo)
        if (
            kwargs.get("type") == "DELETED"
            and getattr(kwargs.get("resource"), "plural", "") == "jobs"
        ):
            rt.unseen_jobs.pop(key, None)  # gone: never stand in for it
            if await _recreate_deleted_job(rt, key, kwargs.get("body") or {}, logger, kwargs):
                return
        await refresh_from_indices(rt, key, kwargs, logger)
    except ApiError as err:
        metrics.record_error(err)
        logger.warning(f"status update failed: {err}")
    finally:
        metrics.RECONCILE_SECONDS.labels(handler="observe").observe(time.monotonic() - started)


async def poll_job(
    rt: Runtime, key: Key, indices: Mapping[str, Any], logger: kopf.Logger, wait: float = 0.0
) -> None:
    """Read the rank-0 trainer's /progress and refresh the status (also a periodic resync).

    Called for every unfinished FineTuneJob by :mod:`finetune_operator.poller`, as a long poll
    (``wait`` > 0) that returns when the trainer's progress changes."""
    started = time.monotonic()
    try:
        ftj = _first(_index(indices, "ftj_index").get(key))
        k8s_job = _current_job(rt, key, indices, (ftj or {}).get("metadata", {}).get("uid"))
        target = progress_target(job_pods(_index(indices, "pod_index").get(key) or (), k8s_job))
        if target is not None:
            held = rt.progress.get(key)
            etag = held.etag if held is not None and held.pod_uid == target.pod_uid else None
            waiting = etag is not None and key in rt.held_back
            if waiting:  # a change waits for the rate limit: be back by then
                wait = min(wait, max(0.0, rt.held_back[key] - time.monotonic()))
            # Once the limit has opened, the newest progress is the one already held: write it
            # without another read (at a thousand jobs these reads were a fifth of all GETs).
            if not (waiting and wait <= 0):
                answer = await fetch_progress(
                    rt.session, target, rt.settings.progress_timeout_seconds, etag, wait
                )
                if answer is not None and answer.data is not None:
                    rt.progress[key] = ProgressReading(target.pod_uid, answer.data, answer.etag)
        await refresh_from_indices(rt, key, indices, logger)
    except ApiError as err:
        metrics.record_error(err)
        logger.warning(f"status update failed: {err}")
    finally:
        metrics.RECONCILE_SECONDS.labels(handler="progress").observe(time.monotonic() - started)
