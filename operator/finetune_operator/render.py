"""FineTuneJob → the Kubernetes objects that run it. Pure: no API calls, no clock, no randomness.

One FineTuneJob becomes

* a ConfigMap holding the job as JSON (``job.json``), mounted at ``/etc/finetune``: the trainer
  reads the same spec the user wrote (``docs/internals.md``);
* a ``batch/v1`` Job running the trainer image; for ``nodes > 1`` an *Indexed* Job
  (``completions = parallelism = nodes``) so each pod knows its node rank from
  ``JOB_COMPLETION_INDEX`` (https://kubernetes.io/docs/concepts/workloads/controllers/job/#completion-mode);
* for ``nodes > 1`` a headless Service named like the pods' ``subdomain``, so pod 0 resolves as
  ``<job>-0.<service>`` for the torchrun rendezvous
  (https://kubernetes.io/docs/concepts/services-networking/dns-pod-service/#pod-s-hostname-and-subdomain-fields).

Every object has a deterministic name (see :mod:`finetune_operator.naming`) and a controller
owner reference to the FineTuneJob, so deleting the FineTuneJob garbage-collects them
(https://kubernetes.io/docs/concepts/architecture/garbage-collection/#owners-dependents).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from finetune_api import FineTuneJob, contract
from finetune_api.pod import PodOverrides

from finetune_operator import naming
from finetune_operator.grace import termination_grace_seconds
from finetune_operator.settings import API_DEFAULT_GPU_RESOURCE, OperatorSettings

Manifest = dict[str, Any]

RUN_AS_USER = 1000
# How long a multi-node pod waits for pod 0's rendezvous store and for the others to join:
# as long as a rank waits for a slow peer in training (the Trainer's ddp_timeout, 30 min).
RENDEZVOUS_TIMEOUT_SECONDS = 1800


class RenderError(ValueError):
    """The FineTuneJob can't be rendered (e.g. it has no uid yet)."""

    reason = "RenderFailed"


class CapabilityNotAllowed(RenderError):
    """``spec.pod.capabilities`` asks for a capability the operator's settings don't allow.

    Which capabilities trainer pods may add is the cluster operator's decision (the chart's
    ``trainer.allowedCapabilities``), not the job author's, so admission can't decide it.
    """

    reason = "CapabilityNotAllowed"


@dataclass(frozen=True)
class RenderedObjects:
    """The objects of one FineTuneJob, in the order they are created."""

    config_map: Manifest
    job: Manifest
    service: Manifest | None = None

    def in_creation_order(self) -> list[Manifest]:
        """ConfigMap and Service before the Job, so its pods never wait for them."""
        return [self.config_map, *([self.service] if self.service else []), self.job]


def owner_reference(job: FineTuneJob) -> Manifest:
    """Controller reference: garbage collection removes the objects with the FineTuneJob."""
    if not job.metadata.uid:
        raise RenderError(f"FineTuneJob {job.metadata.name!r} has no metadata.uid")
    return {
        "apiVersion": job.api_version,
        "kind": job.kind,
        "name": job.metadata.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: FineTuneJob, component: str) -> Manifest:
    return {
        "name": naming.resource_name(job.metadata.name),
        "namespace": job.metadata.namespace or "default",
        "labels": naming.labels(job.metadata.name, component),
        "ownerReferences": [owner_reference(job)],
    }


def gpu_resource_name(job: FineTuneJob, settings: OperatorSettings) -> str:
    """The spec's GPU resource; the cluster default replaces the API default ``nvidia.com/gpu``.

    The CRD defaults ``gpuResourceName`` on admission, so "not set" can't be told from "set to
    the default"; an operator configured for e.g. ``amd.com/gpu`` overrides only the default.
    """
    name = job.spec.resources.gpu_resource_name
    return settings.gpu_resource_name if name == API_DEFAULT_GPU_RESOURCE else name


def trainer_manifest(job: FineTuneJob, settings: OperatorSettings) -> Manifest:
    """The FineTuneJob as the trainer reads it: identity + spec, cluster defaults filled in."""
    wire = job.to_wire()
    spec = wire["spec"]
    if settings.s3_endpoint:
        s3 = spec.setdefault("storage", {}).setdefault("s3", {})
        s3.setdefault("endpoint", settings.s3_endpoint)
    meta = job.metadata
    return {
        "apiVersion": wire["apiVersion"],
        "kind": wire["kind"],
        "metadata": {
            k: v
            for k, v in {
                "name": meta.name,
                "namespace": meta.namespace or "default",
                "uid": meta.uid,
                "generation": meta.generation,
            }.items()
            if v is not None
        },
        "spec": spec,
    }


def render_config_map(job: FineTuneJob, settings: OperatorSettings) -> Manifest:
    """ConfigMap with ``job.json``; immutable, since the spec it holds can't change either."""
    body = json.dumps(trainer_manifest(job, settings), indent=2, sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, "config"),
        "immutable": True,
        "data": {contract.MANIFEST_KEY: body},
    }


def render_service(job: FineTuneJob) -> Manifest:
    """Headless Service for the torchrun rendezvous of a multi-node job.

    ``publishNotReadyAddresses`` makes pod 0 resolvable before any pod is Ready: rendezvous
    happens before training starts.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, "rendezvous"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": naming.selector_labels(job.metadata.name),
            "ports": [
                {
                    "name": "rendezvous",
                    "port": contract.RENDEZVOUS_PORT,
                    "targetPort": contract.RENDEZVOUS_PORT,
                    "protocol": "TCP",
                }
            ],
        },
    }


def _command(job: FineTuneJob, settings: OperatorSettings) -> list[str]:
    if settings.trainer_command:
        return list(settings.trainer_command)
    res = job.spec.resources
    if res.gpus <= 1 and res.nodes <= 1:
        return ["python", "-m", "finetune_trainer"]
    if res.nodes <= 1:
        return ["torchrun", *contract.standalone_torchrun_args(res.gpus)]
    name = naming.resource_name(job.metadata.name)
    # Pod 0 of the Indexed Job is <job>-0.<service> (the Service name is the pods' subdomain).
    endpoint = f"{name}-0.{name}:{contract.RENDEZVOUS_PORT}"
    # The pods of one Job start minutes apart (scheduling, node scale-up, image pulls), and
    # <job>-0 does not resolve until pod 0 has an IP. torchrun's defaults give a pod 60 s
    # (read_timeout) to reach pod 0's store and 600 s (join_timeout) for all pods to join;
    # past them torchrun exits 1 and the early pods fail, using up their retries.
    timeout = RENDEZVOUS_TIMEOUT_SECONDS
    return [
        "torchrun",
        f"--nproc-per-node={res.gpus}",
        f"--nnodes={res.nodes}",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={job.metadata.uid}",
        f"--rdzv-conf=join_timeout={timeout},read_timeout={timeout}",
        "-m",
        "finetune_trainer",
    ]


def _env(job: FineTuneJob) -> list[Manifest]:
    has_claim = job.spec.resources.model_cache_claim is not None
    cache = contract.CACHE_DIR if has_claim else f"{contract.SCRATCH_DIR}/cache"
    trainer = contract.TrainerEnvironment(
        manifest=contract.MANIFEST_PATH,
        workdir=contract.SCRATCH_DIR,
        cache_dir=cache,
        progress_host=contract.PROGRESS_HOST,
        progress_port=contract.PROGRESS_PORT,
        termination_log=contract.TERMINATION_LOG,
    )
    env: list[Manifest] = [
        *({"name": name, "value": value} for name, value in trainer.to_env().items()),
        # The root filesystem is read-only: every tool's home and caches go to writable volumes.
        {"name": "HOME", "value": contract.TMP_DIR},
        {"name": "HF_HOME", "value": f"{cache}/huggingface"},
        {"name": "TRITON_CACHE_DIR", "value": f"{contract.TMP_DIR}/triton"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if job.spec.resources.nodes > 1:
        # The Job controller injects it too; declaring it makes $(JOB_COMPLETION_INDEX) in the
        # command expand even where the variable would be added after expansion.
        env.append(
            {
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {
                    "fieldRef": {
                        "fieldPath": f"metadata.annotations['{naming.COMPLETION_INDEX_ANNOTATION}']"
                    }
                },
            }
        )
    s3 = job.spec.storage.s3
    if s3 is not None and s3.credentials_secret is not None:
        ref = s3.credentials_secret
        # Only references: the values stay in the Secret and never pass through the operator.
        # Without them boto3's default chain finds the pod's web identity or instance role.
        for var, key in (
            ("AWS_ACCESS_KEY_ID", ref.access_key_id_key),
            ("AWS_SECRET_ACCESS_KEY", ref.secret_access_key_key),
        ):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key}}})
    hub = job.spec.storage.hf
    if hub is not None and hub.token_secret is not None:
        token = hub.token_secret
        # huggingface_hub reads HF_TOKEN for gated and private repositories.
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}},
            }
        )
    mlflow = job.spec.tracking.mlflow
    if mlflow is not None and mlflow.credentials_secret is not None:
        secret = mlflow.credentials_secret
        # The MLflow client reads these; optional, so a Secret holding either a user name and a
        # password or a token works (a missing key would keep the pod from starting).
        for var, key in (
            ("MLFLOW_TRACKING_USERNAME", secret.username_key),
            ("MLFLOW_TRACKING_PASSWORD", secret.password_key),
            ("MLFLOW_TRACKING_TOKEN", secret.token_key),
        ):
            key_ref = {"name": secret.name, "key": key, "optional": True}
            env.append({"name": var, "valueFrom": {"secretKeyRef": key_ref}})
    # The spec's own variables come last; admission refuses the names above (rules.py).
    env.extend(var.to_wire() for var in _pod(job).env)
    return env


def _pod(job: FineTuneJob) -> PodOverrides:
    return job.spec.pod or PodOverrides()


def _resources(job: FineTuneJob, settings: OperatorSettings) -> Manifest:
    res = job.spec.resources
    amounts: dict[str, Any] = {}
    if res.cpu is not None:
        amounts["cpu"] = str(res.cpu)
    if res.memory is not None:
        amounts["memory"] = str(res.memory)
    if res.gpus > 0:
        amounts[gpu_resource_name(job, settings)] = str(res.gpus)
    for name, amount in _pod(job).extra_resources.items():
        # cpu, memory and the spec's GPU resource are refused at admission; the cluster's
        # GPU resource name (settings) could still collide, and spec.resources.gpus wins.
        amounts.setdefault(name, str(amount))
    # Requests = limits: extended resources (GPUs) require it, and Guaranteed QoS keeps a
    # long training run last in line for node-pressure eviction.
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def _volumes(job: FineTuneJob, settings: OperatorSettings) -> tuple[list[Manifest], list[Manifest]]:
    res = job.spec.resources
    name = naming.resource_name(job.metadata.name)
    scratch: Manifest
    if settings.scratch_storage_class:
        # Generic ephemeral volume: a PVC that lives and dies with the pod.
        # https://kubernetes.io/docs/concepts/storage/ephemeral-volumes/#generic-ephemeral-volumes
        scratch = {
            "name": "scratch",
            "ephemeral": {
                "volumeClaimTemplate": {
                    "metadata": {"labels": naming.labels(job.metadata.name, "scratch")},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": settings.scratch_storage_class,
                        "resources": {"requests": {"storage": str(res.scratch_size)}},
                    },
                }
            },
        }
    else:
        scratch = {"name": "scratch", "emptyDir": {"sizeLimit": str(res.scratch_size)}}
    volumes: list[Manifest] = [
        {"name": "job-config", "configMap": {"name": name, "defaultMode": 0o444}},
        scratch,
        {"name": "tmp", "emptyDir": {}},
        # PyTorch DataLoader workers and NCCL share memory through /dev/shm; the container
        # runtime's default is 64 MiB, far too small.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[Manifest] = [
        {"name": "job-config", "mountPath": contract.CONFIG_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": contract.SCRATCH_DIR},
        {"name": "tmp", "mountPath": contract.TMP_DIR},
        {"name": "dshm", "mountPath": contract.SHM_DIR},
    ]
    if res.model_cache_claim:
        volumes.append(
            {"name": "model-cache", "persistentVolumeClaim": {"claimName": res.model_cache_claim}}
        )
        mounts.append({"name": "model-cache", "mountPath": contract.CACHE_DIR})
    # The spec's volumes after the operator's; their names and paths can't collide (rules.py).
    pod = _pod(job)
    volumes.extend(v.to_wire() for v in pod.volumes)
    mounts.extend(m.to_wire() for m in pod.volume_mounts)
    return volumes, mounts


def _tolerations(job: FineTuneJob, settings: OperatorSettings) -> list[Manifest]:
    res = job.spec.resources
    tolerations = [t.to_wire() for t in res.tolerations]
    if res.gpus > 0:
        # GPU nodes are commonly tainted with the resource name (as the NVIDIA GPU operator and
        # the ExtendedResourceToleration admission plugin do).
        key = gpu_resource_name(job, settings)
        default = {"key": key, "operator": "Exists", "effect": "NoSchedule"}
        if default not in tolerations:
            tolerations.insert(0, default)
    return tolerations


def pod_security_context() -> Manifest:
    """Pod-level half of the restricted profile: non-root user 1000, RuntimeDefault seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(add: list[str] | None = None) -> Manifest:
    """The "restricted" Pod Security Standard, plus a read-only root filesystem.

    ``add``: capabilities the spec asks for and the settings allow (e.g. IPC_LOCK for RDMA).
    https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted
    """
    capabilities: Manifest = {"drop": ["ALL"]}
    if add:
        capabilities["add"] = list(add)
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": capabilities,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def allowed_capabilities(job: FineTuneJob, settings: OperatorSettings) -> list[str]:
    """``spec.pod.capabilities``, each checked against the settings' allowed list."""
    wanted = _pod(job).capabilities
    refused = [c for c in wanted if c not in settings.allowed_capabilities]
    if refused:
        allowed = ", ".join(settings.allowed_capabilities) or "none"
        raise CapabilityNotAllowed(
            f"spec.pod.capabilities: {', '.join(refused)} not allowed by this operator's "
            f"settings (allowed: {allowed}); remove it from the spec, or ask the cluster's "
            "administrators to add it to the chart's trainer.allowedCapabilities "
            "(FTJ_ALLOWED_CAPABILITIES)"
        )
    return list(wanted)


def pod_failure_policy() -> Manifest:
    """Fail at once on InvalidInput (and OutOfMemory with no plan left); don't count
    preemptions, evictions and SIGTERM stops (exit 143) as failures.

    Pods disrupted by preemption, eviction or node drain get the ``DisruptionTarget``
    condition; ``Ignore`` recreates them without using up ``backoffLimit`` (or, with several
    nodes, ``backoffLimitPerIndex``: :func:`retry_limits`)
    (https://kubernetes.io/docs/tasks/job/pod-failure-policy/). Requires ``restartPolicy: Never``.
    """
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": contract.CONTAINER_NAME,
                    "operator": "In",
                    "values": [contract.EXIT_INVALID_INPUT],
                },
            },
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            {
                # Stopped by SIGTERM after saving a checkpoint (a deleted pod, a suspended
                # Job): the next pod resumes from it, at no cost to the retries.
                "action": "Ignore",
                "onExitCodes": {
                    "containerName": contract.CONTAINER_NAME,
                    "operator": "In",
                    "values": [contract.EXIT_STOPPED],
                },
            },
        ]
    }


def retry_limits(job: FineTuneJob) -> Manifest:
    """How many failed pods the Job tolerates: ``spec.backoffLimit`` in all, or per node.

    One node's pod failing breaks the torchrun rendezvous, so its peers fail with it and the
    Job starts every index again. Counted in one ``backoffLimit``, a job of N nodes would use
    up its retries N times as fast as a single-node job. So for ``nodes > 1`` the Indexed Job
    counts failures per index instead (``backoffLimitPerIndex``, GA in Kubernetes 1.33;
    ``backoffLimit`` then defaults to 2147483647 and is left out) and fails as soon as one
    index has used up its retries (``maxFailedIndexes: 0``): training can't finish without
    every node. The Job lists that index in ``status.failedIndexes``, which names the node in
    the FineTuneJob's reason (``observe``). The pod failure policy's ``FailJob`` and
    ``Ignore`` rules apply unchanged.
    https://kubernetes.io/docs/concepts/workloads/controllers/job/#backoff-limit-per-index
    """
    if job.spec.resources.nodes > 1:
        return {"backoffLimitPerIndex": job.spec.backoff_limit, "maxFailedIndexes": 0}
    return {"backoffLimit": job.spec.backoff_limit}


def _pod_metadata(job: FineTuneJob) -> Manifest:
    """The pods' labels and annotations: the spec's beside the operator's (never over them)."""
    pod = _pod(job)
    labels = {**pod.labels, **naming.labels(job.metadata.name, "trainer")}
    metadata: Manifest = {"labels": labels}
    if pod.annotations:
        metadata["annotations"] = dict(pod.annotations)
    return metadata


def render_job(job: FineTuneJob, settings: OperatorSettings) -> Manifest:
    """The batch/v1 Job running the trainer (Indexed with ``nodes > 1``)."""
    spec = job.spec
    res = spec.resources
    name = naming.resource_name(job.metadata.name)
    volumes, mounts = _volumes(job, settings)
    pod = _pod(job)
    container: Manifest = {
        "name": contract.CONTAINER_NAME,
        "image": res.image or settings.trainer_image,
        "imagePullPolicy": settings.trainer_image_pull_policy,
        "command": _command(job, settings),
        "env": _env(job),
        "ports": [
            {
                "name": contract.PROGRESS_PORT_NAME,
                "containerPort": contract.PROGRESS_PORT,
                "protocol": "TCP",
            }
        ],
        "volumeMounts": mounts,
        "securityContext": container_security_context(allowed_capabilities(job, settings)),
        "terminationMessagePath": contract.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if res.nodes > 1:
        container["ports"].append(
            {"name": "rendezvous", "containerPort": contract.RENDEZVOUS_PORT, "protocol": "TCP"}
        )
    if pod.env_from:
        container["envFrom"] = [source.to_wire() for source in pod.env_from]
    resources = _resources(job, settings)
    if resources:
        container["resources"] = resources
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        # SIGTERM to SIGKILL: the trainer's last step, checkpoint and upload (grace.py).
        "terminationGracePeriodSeconds": termination_grace_seconds(job),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    tolerations = _tolerations(job, settings)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.affinity:
        pod_spec["affinity"] = copy.deepcopy(res.affinity)
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name
    if pod.service_account_name:
        pod_spec["serviceAccountName"] = pod.service_account_name
    if pod.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [ref.to_wire() for ref in pod.image_pull_secrets]
    if res.nodes > 1:
        pod_spec["subdomain"] = name
    metadata = _metadata(job, "trainer")
    if spec.queue_name:
        metadata["labels"][naming.QUEUE_LABEL] = spec.queue_name
    job_spec: Manifest = {
        **retry_limits(job),
        "completions": res.nodes,
        "parallelism": res.nodes,
        "completionMode": "Indexed" if res.nodes > 1 else "NonIndexed",
        "podFailurePolicy": pod_failure_policy(),
        # Kueue admits a Job by unsuspending it, so a queued Job must start suspended
        # (https://kueue.sigs.k8s.io/docs/tasks/run/jobs/).
        "suspend": bool(spec.suspend or spec.queue_name),
        "template": {"metadata": _pod_metadata(job), "spec": pod_spec},
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def render_objects(job: FineTuneJob, settings: OperatorSettings) -> RenderedObjects:
    """All objects of one FineTuneJob: ConfigMap, Job and (``nodes > 1``) headless Service."""
    return RenderedObjects(
        config_map=render_config_map(job, settings),
        job=render_job(job, settings),
        service=render_service(job) if job.spec.resources.nodes > 1 else None,
    )
