"""One MLflow run per FineTuneJob, sent from a background thread that never holds training up.

Training only appends to in-memory queues (:meth:`MlflowRun.log_metrics` and friends); a
daemon thread sends what is queued every few seconds. A tracking server that is down, slow or
refusing costs the run nothing: the values stay queued, the thread retries with backoff, and
:attr:`MlflowRun.report` says what is wrong (the progress snapshot carries it to the operator,
which shows the ``Tracking`` condition and a Warning Event). When the server is back the queue
drains; at the end :meth:`MlflowRun.finish` tries for a bounded time, then gives up and says how
many values were not sent. The job succeeds either way.

The run is found again by the job's uid tag: a restarted pod continues the same run, and the
history it replays from its checkpoint is sent only for steps the run does not have yet.
Credentials are the MLflow client's own variables (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``
or ``_TOKEN``, from the Secret the spec names); they are never logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("finetune_trainer")

# One attempt per request, and a short timeout: this thread retries on its own schedule, and the
# client's default (7 retries with backoff, 120 s timeouts) would hide an outage for minutes.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
SEND_INTERVAL_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 30.0
FINAL_FLUSH_SECONDS = 20.0  # how long the end of the run waits for a server that is down
UID_TAG = "finetune.dev/uid"
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limits
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
MESSAGE_LIMIT = 400


@dataclass(frozen=True)
class RunTarget:
    """Where the run goes and what identifies it."""

    tracking_uri: str
    experiment: str
    run_name: str
    uid: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Queue:
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(
        default_factory=list
    )  # name, value, ms, step
    replayed: list[tuple[str, float, int, int]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def size(self) -> int:
        return (
            len(self.params)
            + len(self.tags)
            + len(self.metrics)
            + len(self.replayed)
            + len(self.files)
        )


def _client(tracking_uri: str) -> Any:
    for name, value in CLIENT_ENV.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri)


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _refused(err: BaseException) -> bool:
    """The server answered and said no (4xx: credentials, permissions, a bad request)."""
    code = getattr(err, "get_http_status_code", None)
    try:
        status = int(code()) if callable(code) else 0
    except (TypeError, ValueError):
        status = 0
    return 400 <= status < 500


class MlflowRun:
    """The job's MLflow run: queue values from the training loop, sent in the background.

    ``client_factory`` makes the MLflow client (tests may pass one; the default reads the
    credentials from the environment).
    """

    def __init__(
        self, target: RunTarget, client_factory: Callable[[str], Any] | None = None
    ) -> None:
        self.target = target
        self._client_factory = client_factory or _client
        self._client: Any = None
        self._queue = _Queue()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._send_lock = threading.Lock()  # one sender at a time (the thread, or finish)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._continued = False  # the run existed: a restarted pod
        self._steps_sent: dict[str, int] = {}  # a continued run's last step per metric
        self._failures = 0
        self._failing_since: str | None = None
        self.sent = 0
        self.report: dict[str, Any] = {
            "ok": True,
            "reason": "TrackingStarting",
            "message": f"sending the run to MLflow at {target.tracking_uri}",
        }

    # -- what the training loop calls (never blocks on the network) ---------------------------

    def log_params(self, params: Mapping[str, str]) -> None:
        """Queue run parameters (logged once; MLflow refuses a changed value)."""
        with self._lock:
            for key, value in params.items():
                self._queue.params[key[:250]] = str(value)[:MAX_PARAM_VALUE]

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Queue run tags (they may change later)."""
        with self._lock:
            self._queue.tags.update({k[:250]: str(v)[:MAX_PARAM_VALUE] for k, v in tags.items()})

    def log_metrics(self, step: int, values: Mapping[str, float], replayed: bool = False) -> None:
        """Queue one value per metric at ``step``. ``replayed``: history restored from a
        checkpoint, sent only for steps a continued run does not have."""
        stamp = int(time.time() * 1000)
        rows = [(name, float(v), stamp, int(step)) for name, v in values.items()]
        with self._lock:
            (self._queue.replayed if replayed else self._queue.metrics).extend(rows)

    def log_artifact(self, path: Path) -> None:
        """Queue a file to upload into the run's artifacts."""
        with self._lock:
            self._queue.files.append(path)

    def pending(self) -> int:
        """Values, parameters, tags and files not sent yet."""
        with self._lock:
            return self._queue.size()

    # -- the sender -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background sender."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ftj-mlflow", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._send_all()
            wait = SEND_INTERVAL_SECONDS
            if self._failures:
                wait = min(MAX_BACKOFF_SECONDS, SEND_INTERVAL_SECONDS * 2**self._failures)
            self._wake.wait(wait)
            self._wake.clear()

    def _send_all(self) -> bool:
        """Send everything queued; True when the queue is empty. Failures are recorded in
        :attr:`report`, never raised."""
        with self._send_lock:
            try:
                self._attach()
                self._send_queued()
            except Exception as err:  # noqa: BLE001 - any failure of the server or the network
                self._failed(err)
                return False
            if self._failures or self.report["reason"] == "TrackingStarting":
                if self._failures:
                    log.info("MLflow reachable again: queued values sent")
                self._failures, self._failing_since = 0, None
            self.report = {
                "ok": True,
                "reason": "Tracked",
                "message": (
                    f"MLflow run {self.target.run_name!r} ({self.run_id}) in experiment "
                    f"{self.target.experiment!r} at {self.target.tracking_uri}: "
                    f"{self.sent} values sent"
                ),
            }
            return True

    def _failed(self, err: BaseException) -> None:
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            log.warning(
                "MLflow at %s: %s (training goes on)", self.target.tracking_uri, _short(err)
            )
        refused = _refused(err)
        what = "refused a request" if refused else "is unreachable"
        self.report = {
            "ok": False,
            "reason": "TrackingRefused" if refused else "TrackingServerUnreachable",
            "message": (
                f"MLflow at {self.target.tracking_uri} {what} since {self._failing_since} "
                f"({_short(err)}); training goes on, {self.pending()} values wait and are sent "
                "when it answers again or at the end"
            ),
        }

    def _attach(self) -> None:
        """Find the job's run (a restarted pod continues it) or create it."""
        if self.run_id is not None:
            return
        if self._client is None:
            self._client = self._client_factory(self.target.tracking_uri)
        client = self._client
        experiment = client.get_experiment_by_name(self.target.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(self.target.experiment)
        )
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`{UID_TAG}` = '{self.target.uid}'", max_results=1
        )
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            self._continued = True
            log.info("MLflow: continuing run %s", run_id)
        else:
            tags = {UID_TAG: self.target.uid, **self.target.tags}
            run_id = client.create_run(
                experiment_id, run_name=self.target.run_name, tags=tags
            ).info.run_id
            log.info("MLflow: run %s in experiment %r", run_id, self.target.experiment)
        self.experiment_id, self.run_id = experiment_id, run_id

    def _send_queued(self) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client, run_id = self._client, self.run_id
        with self._lock:
            replayed_keys = {row[0] for row in self._queue.replayed}
        for key in replayed_keys - set(self._steps_sent):
            history = client.get_metric_history(run_id, key) if self._continued else []
            self._steps_sent[key] = max((m.step for m in history), default=-1)
        with self._lock:
            params = dict(self._queue.params)
            tags = dict(self._queue.tags)
            replayed, self._queue.replayed = self._queue.replayed, []
            self._queue.metrics[:0] = [
                row for row in replayed if row[3] > self._steps_sent.get(row[0], -1)
            ]
        items = list(params.items())
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            chunk = items[i : i + MAX_PARAMS_PER_BATCH]
            client.log_batch(run_id, params=[Param(k, v) for k, v in chunk])
            with self._lock:
                for key, _ in chunk:
                    self._queue.params.pop(key, None)
            self.sent += len(chunk)
        if tags:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            with self._lock:
                for key, value in tags.items():
                    if self._queue.tags.get(key) == value:
                        del self._queue.tags[key]
            self.sent += len(tags)
        while True:
            with self._lock:
                rows = self._queue.metrics[:MAX_METRICS_PER_BATCH]
            if not rows:
                break
            client.log_batch(run_id, metrics=[Metric(*row) for row in rows])
            with self._lock:
                del self._queue.metrics[: len(rows)]
            self.sent += len(rows)
        while True:
            with self._lock:
                path = self._queue.files[0] if self._queue.files else None
            if path is None:
                break
            client.log_artifact(run_id, str(path))
            with self._lock:
                self._queue.files.pop(0)
            self.sent += 1

    # -- the end ------------------------------------------------------------------------------

    def finish(
        self,
        register: tuple[str, str] | None = None,
        timeout: float = FINAL_FLUSH_SECONDS,
    ) -> dict[str, Any]:
        """Stop the sender, send what is left (for at most ``timeout`` seconds), register
        ``(model name, source URI)`` as a new model version, end the run; the final report."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=MAX_BACKOFF_SECONDS + 15)
        deadline = time.monotonic() + timeout
        while not self._send_all() and time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        left = self.pending()
        if left or self.run_id is None:
            self.report = {
                "ok": False,
                "reason": "TrackingIncomplete",
                "message": (
                    f"MLflow at {self.target.tracking_uri}: {left} values could not be sent "
                    f"before the end of the run ({self.report['message']})"
                ),
            }
            return self.report
        try:
            version = self._register(register) if register else None
            self._client.set_terminated(self.run_id, "FINISHED")
        except Exception as err:  # noqa: BLE001
            self.report = {
                "ok": False,
                "reason": "ModelNotRegistered" if register else "TrackingIncomplete",
                "message": f"MLflow run {self.run_id}: {_short(err)}",
            }
            return self.report
        if register is not None:
            self.report["message"] += f"; registered {register[0]!r} version {version}"
        return self.report

    def _register(self, register: tuple[str, str]) -> str:
        """Create the registered model if needed, then a version pointing at ``source``."""
        name, source = register
        client = self._client
        try:
            client.create_registered_model(name)
        except Exception as err:  # noqa: BLE001
            if "RESOURCE_ALREADY_EXISTS" not in str(err) and "already exists" not in str(err):
                raise
        version = client.create_model_version(
            name,
            source=source,
            run_id=self.run_id,
            tags={UID_TAG: self.target.uid},
            await_creation_for=30,
        )
        log.info("MLflow: registered %s version %s (%s)", name, version.version, source)
        return str(version.version)
