"""The cluster edge of the ``ftj`` commands that talk to Kubernetes (get, describe, logs, ...).

It loads the user's kubeconfig the way kubectl does (``--kubeconfig``, ``$KUBECONFIG``,
``~/.kube/config``, then the in-cluster service account), and turns the three failures a user
meets first into one line that names the fix, with an exit code of its own:

* no cluster reachable (no kubeconfig, connection refused, DNS, TLS) → :data:`EXIT_NO_CLUSTER`;
* no such FineTuneJob (or the CRD is not installed) → :data:`EXIT_NOT_FOUND`;
* not allowed (HTTP 403 from RBAC) → :data:`EXIT_FORBIDDEN`.

The kubernetes package is imported inside functions, so ``ftj validate`` stays instant.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from finetune_api import GROUP, PLURAL, VERSION

EXIT_FAILED = 1
EXIT_NO_CLUSTER = 3
EXIT_NOT_FOUND = 4
EXIT_FORBIDDEN = 5

T = TypeVar("T")
Obj = dict[str, Any]


class CliError(Exception):
    """A failure shown to the user as one line, with the exit code of ``ftj``."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def reports_errors(
    handler: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """Wrap a command handler: a :class:`CliError` becomes one stderr line and its exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except CliError as err:
            print(f"ftj {args.command}: {err.message}", file=sys.stderr)
            return err.exit_code

    run.__doc__ = handler.__doc__
    return run


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """The connection options every cluster command takes (same names as kubectl's)."""
    parser.add_argument(
        "-n", "--namespace", help="namespace (default: the kubeconfig context's, else default)"
    )
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    parser.add_argument("--context", help="kubeconfig context (default: the current context)")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="timeout of each API request (default 15)",
    )


@dataclass
class Cluster:
    """A connected API client plus the namespace the command works in."""

    api_client: Any
    namespace: str
    timeout: float

    # -- connecting -----------------------------------------------------------------------
    @classmethod
    def connect(cls, args: argparse.Namespace) -> Cluster:
        """Load the kubeconfig (or in-cluster config) named by the command line."""
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        configuration = client.Configuration()
        namespace: str | None = getattr(args, "namespace", None)
        try:
            config.load_kube_config(
                config_file=args.kubeconfig,
                context=args.context,
                client_configuration=configuration,
            )
            if namespace is None:
                _, active = config.list_kube_config_contexts(config_file=args.kubeconfig)
                if args.context:
                    contexts, _ = config.list_kube_config_contexts(config_file=args.kubeconfig)
                    active = next((c for c in contexts if c["name"] == args.context), active)
                namespace = (active or {}).get("context", {}).get("namespace")
        except (ConfigException, FileNotFoundError, OSError, TypeError) as kube_err:
            if args.kubeconfig or args.context:
                raise CliError(
                    f"no Kubernetes cluster reachable: kubeconfig: {kube_err}; "
                    "check --kubeconfig/--context",
                    EXIT_NO_CLUSTER,
                ) from None
            try:
                config.load_incluster_config(client_configuration=configuration)
            except ConfigException:
                raise CliError(
                    "no Kubernetes cluster reachable: no kubeconfig found "
                    "(tried $KUBECONFIG, ~/.kube/config and in-cluster); "
                    "set KUBECONFIG or pass --kubeconfig",
                    EXIT_NO_CLUSTER,
                ) from None
        # One retry, not urllib3's default of three with back-off: a dead cluster should be
        # reported in seconds.
        configuration.retries = 1
        return cls(client.ApiClient(configuration), namespace or "default", args.request_timeout)

    @property
    def server(self) -> str:
        """The API server URL, for error messages."""
        return str(self.api_client.configuration.host)

    # -- calling --------------------------------------------------------------------------
    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        verb: str,
        resource: str,
        name: str | None = None,
        namespace: str | None = None,
        **kwargs: Any,
    ) -> T:
        """Call one API function, translating failures into :class:`CliError`."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        ns = namespace if namespace is not None else self.namespace
        kwargs.setdefault("_request_timeout", self.timeout)
        try:
            return fn(*args, **kwargs)
        except ApiException as err:
            raise self._api_error(
                err, verb=verb, resource=resource, name=name, namespace=ns
            ) from None
        except (HTTPError, OSError) as err:
            raise CliError(
                f"no Kubernetes cluster reachable: {self.server}: {_short(err)}; "
                "check that the cluster is up and your kubeconfig context (kubectl cluster-info)",
                EXIT_NO_CLUSTER,
            ) from None

    def _api_error(
        self, err: Any, *, verb: str, resource: str, name: str | None, namespace: str
    ) -> CliError:
        status = int(getattr(err, "status", 0) or 0)
        where = f"in namespace {namespace}" if namespace else "cluster-wide"
        if status == 403:
            group = GROUP if resource.startswith(PLURAL) else _group_of(resource)
            return CliError(
                f"not allowed to {verb} {resource} {where}: ask your cluster admin for a Role "
                f"granting {verb!r} on {resource!r} (apiGroup {group!r}) {where}",
                EXIT_FORBIDDEN,
            )
        if status == 401:
            return CliError(
                f"not logged in to {self.server}: your credentials were refused; "
                "refresh them (log in again) or pick another --context",
                EXIT_FORBIDDEN,
            )
        if status == 404 and resource.startswith(PLURAL):
            if name is not None and _is_object_not_found(err):
                return CliError(
                    f"FineTuneJob {name} not found in namespace {namespace}; `ftj get` lists them",
                    EXIT_NOT_FOUND,
                )
            return CliError(
                f"the FineTuneJob API ({PLURAL}.{GROUP}) is not installed on {self.server}: "
                "install the operator (helm install finetune-operator charts/finetune-operator)",
                EXIT_NOT_FOUND,
            )
        if status == 404:
            return CliError(
                f"{resource} {name or ''} not found {where}".replace("  ", " "), EXIT_NOT_FOUND
            )
        if status == 0 or status >= 500:
            return CliError(
                f"no Kubernetes cluster reachable: {self.server} answered {status or 'nothing'}: "
                f"{_short(err)}; check the cluster's health (kubectl cluster-info)",
                EXIT_NO_CLUSTER,
            )
        return CliError(f"{verb} {resource} {where} failed: HTTP {status}: {_short(err)}")

    # -- the requests the commands make ---------------------------------------------------
    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api_client)

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    def batch(self) -> Any:
        from kubernetes import client

        return client.BatchV1Api(self.api_client)

    def get_job(self, name: str) -> Obj:
        """One FineTuneJob as a dict (CliError when missing)."""
        result: Obj = self.call(
            self.custom().get_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            verb="get",
            resource=PLURAL,
            name=name,
        )
        return result

    def list_jobs(self, all_namespaces: bool = False) -> list[Obj]:
        """FineTuneJobs of the namespace (or of every namespace)."""
        api = self.custom()
        if all_namespaces:
            result = self.call(
                api.list_cluster_custom_object,
                GROUP,
                VERSION,
                PLURAL,
                verb="list",
                resource=PLURAL,
                namespace="",
            )
        else:
            result = self.call(
                api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                verb="list",
                resource=PLURAL,
            )
        items: list[Obj] = result.get("items", [])
        return items

    def trainer_pods(self, job: Obj) -> list[Obj]:
        """The trainer pods of a FineTuneJob, oldest first (as plain dicts)."""
        selector = trainer_pod_selector(job)
        pods = self.call(
            self.core().list_namespaced_pod,
            self.namespace,
            label_selector=selector,
            verb="list",
            resource="pods",
        )
        items = [self.api_client.sanitize_for_serialization(p) for p in pods.items]
        items.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
        return items

    def events_for(self, kind: str, name: str) -> list[Obj]:
        """Events about one object of the namespace."""
        selector = f"involvedObject.name={name},involvedObject.kind={kind}"
        events = self.call(
            self.core().list_namespaced_event,
            self.namespace,
            field_selector=selector,
            verb="list",
            resource="events",
        )
        return [self.api_client.sanitize_for_serialization(e) for e in events.items]


def trainer_pod_selector(job: Obj) -> str:
    """Label selector of a FineTuneJob's trainer pods (the operator's ``finetune.dev/job``)."""
    from finetune_operator import naming

    return f"{naming.JOB_LABEL}={naming.label_value(job['metadata']['name'])}"


def job_name_of(job: Obj) -> str:
    """Name of the batch/v1 Job running a FineTuneJob."""
    from finetune_operator import naming

    return str(
        (job.get("status") or {}).get("jobName") or naming.resource_name(job["metadata"]["name"])
    )


def rank0(pods: list[Obj]) -> list[Obj]:
    """Pods of rank 0 (completion index 0 of an Indexed Job, or any pod of a plain one)."""
    key = "batch.kubernetes.io/job-completion-index"
    indexed = [p for p in pods if key in (p["metadata"].get("annotations") or {})]
    if not indexed:
        return pods
    return [p for p in indexed if p["metadata"]["annotations"][key] == "0"]


def age(timestamp: str | None, now: dt.datetime | None = None) -> str:
    """kubectl's AGE column: 5s, 3m, 2h, 4d (``<unknown>`` without a timestamp)."""
    if not timestamp:
        return "<unknown>"
    now = now or dt.datetime.now(dt.timezone.utc)
    then = dt.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(rows: list[list[str]]) -> Iterator[str]:
    """Rows as left-aligned columns separated by three spaces, like kubectl's tables."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))] if rows else []
    for row in rows:
        yield "   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()


def _group_of(resource: str) -> str:
    return {"jobs": "batch"}.get(resource.split("/")[0], "")


def _is_object_not_found(err: Any) -> bool:
    """True for "this object is missing", False for "this resource type is unknown"."""
    import json

    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        return False  # "404 page not found": the URL itself (the resource type) is unknown
    details = body.get("details") or {} if isinstance(body, dict) else {}
    return bool(details.get("name"))


def _short(err: BaseException) -> str:
    text = str(getattr(err, "reason", None) or err).strip().splitlines()
    if not text:
        return type(err).__name__
    # urllib3 prefixes the cause with its connection object's repr ("HTTPConnection(host=...,
    # port=...): Failed to establish a new connection: [Errno 111] Connection refused"); the
    # server URL is already in the message, so keep what went wrong.
    line = text[0]
    if "): " in line and line.startswith(("HTTPConnection(", "HTTPSConnection(")):
        line = line.split("): ", 1)[1]
    return line[:200]
