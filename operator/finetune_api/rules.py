"""Cross-field rules, declared once and enforced twice.

Each rule carries a CEL expression (it becomes an ``x-kubernetes-validations`` entry of the
CRD, so the API server refuses a bad object at admission) and a Python predicate over the
same object (so ``ftj validate`` and the trainer refuse it with the *same message* before
anything reaches a cluster). The apiserver test tier runs one table of bad manifests through
both and checks that each names the same field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune_api import contract


@dataclass(frozen=True)
class CrossFieldRule:
    """One invariant over an object of the spec.

    ``cel`` is evaluated by the API server with ``self`` bound to the object; ``holds`` is the
    Python twin over the parsed model. ``transition`` rules compare with ``oldSelf`` and only
    exist on the server (an update has no client-side twin). ``cluster_only`` rules hold for
    jobs the operator runs in pods (the API server always checks them); ``ftj run`` on one
    machine skips them (:func:`finetune_api.parse_manifest` with ``cluster=False``).
    """

    cel: str
    message: str
    holds: Callable[[Any], bool] | None = None
    transition: bool = False
    cluster_only: bool = False

    def as_openapi(self) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry for this rule."""
        return {"rule": self.cel, "message": self.message}


EXACTLY_ONE_DURATION = CrossFieldRule(
    cel="has(self.epochs) != has(self.maxSteps)",
    message=(
        "set exactly one of spec.training.epochs or spec.training.maxSteps "
        "(for example epochs: 3, or maxSteps: 500)"
    ),
    holds=lambda t: (t.epochs is None) != (t.max_steps is None),
)

SPLITS_LEAVE_TRAINING_DATA = CrossFieldRule(
    cel="self.validationSplit + self.testSplit < 1.0",
    message=(
        "spec.training.validationSplit + spec.training.testSplit must be less than 1 "
        "so that some data is left for training"
    ),
    holds=lambda t: t.validation_split + t.test_split < 1.0,
)

QUANTIZATION_ONLY_WITH_QLORA = CrossFieldRule(
    cel="!has(self.quantization) || self.type == 'qlora'",
    message=(
        "spec.method.quantization is only allowed with spec.method.type: qlora "
        "(remove quantization, or set type: qlora)"
    ),
    holds=lambda m: m.quantization is None or m.type == "qlora",
)

MULTI_NODE_NEEDS_GPUS = CrossFieldRule(
    cel="self.nodes <= 1 || self.gpus >= 1",
    message="spec.resources.nodes > 1 needs spec.resources.gpus >= 1 (GPUs per node)",
    holds=lambda r: r.nodes <= 1 or r.gpus >= 1,
)

QUANTIZATION_FORMAT_MATCHES_BITS = CrossFieldRule(
    cel="!has(self.format) || (self.format == 'nf4') == (!has(self.bits) || self.bits == 4)",
    message=(
        "spec.method.quantization.format: nf4 goes with bits: 4, float8 and int8 with bits: 8 "
        "(or leave format out: nf4 for 4 bits, float8 for 8 bits)"
    ),
    holds=lambda q: q.format is None or (q.format == "nf4") == (q.bits == 4),
)


QLORA_NEEDS_GPU = CrossFieldRule(
    cel=(
        "self.method.type != 'qlora' || self.resources.gpus >= 1 || "
        "(has(self.method.quantization) && has(self.method.quantization.bits) && "
        "self.method.quantization.bits == 8 && "
        "(!has(self.method.quantization.format) || self.method.quantization.format == 'float8'))"
    ),
    message=(
        "spec.method.type: qlora needs spec.resources.gpus >= 1 for bitsandbytes formats "
        "(nf4, int8 run on GPUs only; use type: lora, or quantization bits: 8 with format: "
        "float8, on CPUs)"
    ),
    holds=lambda s: s.method.type != "qlora" or s.resources.gpus >= 1 or s.method.float8_base,
)

OUTPUT_DIFFERS_FROM_MODEL = CrossFieldRule(
    cel="self.output.uri != self.model.uri",
    message=(
        "spec.output.uri must differ from spec.model.uri: "
        "publishing into the base model's location would overwrite it"
    ),
    holds=lambda s: s.output.uri != s.model.uri,
)

REGISTERED_MERGED_NEEDS_MERGE = CrossFieldRule(
    cel=(
        "!has(self.tracking) || !has(self.tracking.mlflow) || "
        "!has(self.tracking.mlflow.registeredModel) || "
        "self.tracking.mlflow.registeredModel.artifact != 'merged' || self.output.merge"
    ),
    message=(
        "spec.tracking.mlflow.registeredModel.artifact: merged needs spec.output.merge: true "
        "(or register the adapter: artifact: adapter)"
    ),
    holds=lambda s: (
        s.tracking.mlflow is None
        or s.tracking.mlflow.registered_model is None
        or s.tracking.mlflow.registered_model.artifact != "merged"
        or s.output.merge
    ),
)

# Fields of the spec that may change after creation. Everything else is frozen because a
# running trainer already read it: changing it would make status describe a run that never was.
MUTABLE_SPEC_FIELDS = frozenset({"suspend"})

IMMUTABLE_SPEC_MESSAGE = (
    "spec is immutable after creation except spec.suspend: "
    "delete and re-create the FineTuneJob (or create one with a new name) to change it"
)


def immutable_except(fields: list[str]) -> CrossFieldRule:
    """A transition rule freezing every listed spec field (present or absent) after creation."""
    clauses = [
        f"(has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f}))"
        for f in fields
    ]
    return CrossFieldRule(cel=" && ".join(clauses), message=IMMUTABLE_SPEC_MESSAGE, transition=True)


# --- pod overrides (spec.pod) -------------------------------------------------------------------
# What the operator sets on every trainer pod and a spec may therefore not set again. The
# renderer (finetune_operator.render) writes these; tests/unit/operator/test_pod_overrides.py
# checks that each name it renders is one refused here.

# Environment variables the operator sets besides the contract's FTJ_* ones: the read-only root
# filesystem moves every tool's home and caches to writable volumes.
OPERATOR_ENV_NAMES = (
    "HOME",
    "HF_HOME",
    "TRITON_CACHE_DIR",
    "PYTHONUNBUFFERED",
    "JOB_COMPLETION_INDEX",
)
# Credentials come only from Secret references of their own spec fields, never as env values.
CREDENTIAL_ENV_NAMES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "HF_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
OPERATOR_VOLUME_NAMES = ("job-config", "scratch", "tmp", "dshm", "model-cache")
OPERATOR_MOUNT_PATHS = (
    contract.CONFIG_DIR,
    contract.SCRATCH_DIR,
    contract.TMP_DIR,
    contract.SHM_DIR,
    contract.CACHE_DIR,
)
# Label and annotation keys of the operator (app.kubernetes.io/*, finetune.dev/job) and of the
# Job controller (batch.kubernetes.io/*, job-name, controller-uid): it selects pods by them.
OPERATOR_LABEL_PREFIXES = ("app.kubernetes.io/", "finetune.dev/", "batch.kubernetes.io/")
OPERATOR_LABEL_KEYS = ("job-name", "controller-uid")
OPERATOR_ANNOTATION_PREFIXES = ("finetune.dev/", "batch.kubernetes.io/")
# Compute that has its own spec field.
OWNED_RESOURCE_NAMES = ("cpu", "memory")


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _prefixed_cel(key: str, prefixes: tuple[str, ...]) -> str:
    return " || ".join(f"{key}.startsWith('{p}')" for p in prefixes)


def _owned_pod_field(field: str, fix: str) -> CrossFieldRule:
    return CrossFieldRule(
        cel=f"!has(self.{field})",
        message=f"spec.pod.{field} is set by the operator: {fix}",
    )


# Parts of a pod spec a user might reach for that the operator owns. They are declared in the
# CRD (as free-form) only so that the API server can refuse them with these messages.
OWNED_POD_FIELDS: dict[str, CrossFieldRule] = {
    "command": _owned_pod_field(
        "command",
        "it runs python -m finetune_trainer (torchrun for several GPUs or nodes); the chart's "
        "trainer settings (FTJ_TRAINER_COMMAND) replace it for the whole cluster",
    ),
    "args": _owned_pod_field(
        "args", "the trainer reads its job from the mounted spec; change the spec instead"
    ),
    "ports": _owned_pod_field(
        "ports", "the progress port and the torchrun rendezvous port are the operator's"
    ),
    "securityContext": _owned_pod_field(
        "securityContext",
        "trainer pods run under the restricted Pod Security profile (non-root, read-only root, "
        "no privilege escalation); add a capability with spec.pod.capabilities where the "
        "operator's settings allow it",
    ),
    "image": _owned_pod_field("image", "set the trainer image with spec.resources.image"),
    "resources": _owned_pod_field(
        "resources",
        "set cpu, memory and GPUs in spec.resources and other devices in spec.pod.extraResources",
    ),
    "containers": _owned_pod_field(
        "containers", "the pod runs one trainer container; shape it with the spec.pod fields"
    ),
    "initContainers": _owned_pod_field(
        "initContainers", "the pod runs one trainer container; shape it with the spec.pod fields"
    ),
    "restartPolicy": _owned_pod_field(
        "restartPolicy",
        "it is Never, as the Job's podFailurePolicy requires; retries are spec.backoffLimit",
    ),
    "nodeSelector": _owned_pod_field("nodeSelector", "use spec.resources.nodeSelector"),
    "tolerations": _owned_pod_field("tolerations", "use spec.resources.tolerations"),
    "affinity": _owned_pod_field("affinity", "use spec.resources.affinity"),
    "priorityClassName": _owned_pod_field(
        "priorityClassName", "use spec.resources.priorityClassName"
    ),
    "automountServiceAccountToken": _owned_pod_field(
        "automountServiceAccountToken",
        "the trainer never calls the Kubernetes API; web identity (IRSA, EKS Pod Identity, "
        "workload identity) mounts its own token for spec.pod.serviceAccountName",
    ),
}

ENV_NOT_OPERATORS = CrossFieldRule(
    cel=(
        "!has(self.env) || self.env.all(e, !e.name.startsWith('FTJ_') && "
        f"!(e.name in {_cel_list(OPERATOR_ENV_NAMES)}))"
    ),
    message=(
        "spec.pod.env: FTJ_* and " + ", ".join(OPERATOR_ENV_NAMES) + " are set by the operator "
        "(docs/internals.md); give the variable another name"
    ),
    holds=lambda p: all(
        not e.name.startswith("FTJ_") and e.name not in OPERATOR_ENV_NAMES for e in p.env
    ),
)

ENV_NOT_CREDENTIALS = CrossFieldRule(
    cel=f"!has(self.env) || self.env.all(e, !(e.name in {_cel_list(CREDENTIAL_ENV_NAMES)}))",
    message=(
        "spec.pod.env: " + ", ".join(CREDENTIAL_ENV_NAMES) + " come from Secret references: "
        "set spec.storage.s3.credentialsSecret, spec.storage.hf.tokenSecret or "
        "spec.tracking.mlflow.credentialsSecret (or, for S3, nothing: the pod's service "
        "account identity is used)"
    ),
    holds=lambda p: all(e.name not in CREDENTIAL_ENV_NAMES for e in p.env),
)

ENV_VALUE_OR_VALUE_FROM = CrossFieldRule(
    cel="!(has(self.value) && has(self.valueFrom))",
    message="spec.pod.env[]: set value or valueFrom, not both",
    holds=lambda e: e.value is None or e.value_from is None,
)

VOLUME_NAMES_ARE_NOT_OPERATORS = CrossFieldRule(
    cel=(
        "!has(self.volumes) || "
        f"self.volumes.all(v, !(v.name in {_cel_list(OPERATOR_VOLUME_NAMES)}))"
    ),
    message=(
        "spec.pod.volumes[].name: " + ", ".join(OPERATOR_VOLUME_NAMES) + " are the operator's "
        "volumes; give the volume another name"
    ),
    holds=lambda p: all(v.name not in OPERATOR_VOLUME_NAMES for v in p.volumes),
)

VOLUME_NAMES_ARE_UNIQUE = CrossFieldRule(
    cel=(
        "!has(self.volumes) || "
        "self.volumes.all(v, self.volumes.filter(w, w.name == v.name).size() == 1)"
    ),
    message="spec.pod.volumes[].name: each volume needs a name of its own",
    holds=lambda p: len({v.name for v in p.volumes}) == len(p.volumes),
)

MOUNTS_NAME_A_VOLUME = CrossFieldRule(
    cel=(
        "!has(self.volumeMounts) || self.volumeMounts.all(m, "
        "has(self.volumes) && self.volumes.exists(v, v.name == m.name))"
    ),
    message="spec.pod.volumeMounts[].name must be the name of a volume in spec.pod.volumes",
    holds=lambda p: all(any(v.name == m.name for v in p.volumes) for m in p.volume_mounts),
)

MOUNT_PATHS_ARE_NOT_OPERATORS = CrossFieldRule(
    cel=(
        "!has(self.volumeMounts) || self.volumeMounts.all(m, "
        f"!(m.mountPath in {_cel_list(OPERATOR_MOUNT_PATHS)}) && "
        f"!m.mountPath.startsWith('{contract.CONFIG_DIR}/'))"
    ),
    message=(
        "spec.pod.volumeMounts[].mountPath: " + ", ".join(OPERATOR_MOUNT_PATHS) + " are the "
        "operator's mounts (the job's spec, scratch, temp, shared memory, the model cache of "
        "spec.resources.modelCacheClaim); mount the volume somewhere else, e.g. /data"
    ),
    holds=lambda p: all(
        m.mount_path not in OPERATOR_MOUNT_PATHS
        and not m.mount_path.startswith(contract.CONFIG_DIR + "/")
        for m in p.volume_mounts
    ),
)

LABELS_ARE_NOT_OPERATORS = CrossFieldRule(
    cel=(
        "!has(self.labels) || self.labels.all(k, "
        f"!({_prefixed_cel('k', OPERATOR_LABEL_PREFIXES)}) && "
        f"!(k in {_cel_list(OPERATOR_LABEL_KEYS)}))"
    ),
    message=(
        "spec.pod.labels: keys under "
        + ", ".join(OPERATOR_LABEL_PREFIXES)
        + " and "
        + ", ".join(OPERATOR_LABEL_KEYS)
        + " are set by the operator and the Job controller, "
        "which select the pods by them; use a key of your own"
    ),
    holds=lambda p: all(
        not k.startswith(OPERATOR_LABEL_PREFIXES) and k not in OPERATOR_LABEL_KEYS for k in p.labels
    ),
)

ANNOTATIONS_ARE_NOT_OPERATORS = CrossFieldRule(
    cel=(
        "!has(self.annotations) || self.annotations.all(k, "
        f"!({_prefixed_cel('k', OPERATOR_ANNOTATION_PREFIXES)}))"
    ),
    message=(
        "spec.pod.annotations: keys under " + ", ".join(OPERATOR_ANNOTATION_PREFIXES) + " are "
        "set by the operator and the Job controller; use a key of your own"
    ),
    holds=lambda p: all(not k.startswith(OPERATOR_ANNOTATION_PREFIXES) for k in p.annotations),
)

EXTRA_RESOURCES_ARE_NOT_COMPUTE = CrossFieldRule(
    cel=(
        "!has(self.extraResources) || "
        f"self.extraResources.all(k, !(k in {_cel_list(OWNED_RESOURCE_NAMES)}))"
    ),
    message=(
        "spec.pod.extraResources: cpu and memory are spec.resources.cpu and "
        "spec.resources.memory; list other devices here (rdma/..., hugepages-2Mi)"
    ),
    holds=lambda p: all(k not in OWNED_RESOURCE_NAMES for k in p.extra_resources),
)

EXTRA_RESOURCES_ARE_NOT_GPUS = CrossFieldRule(
    cel=(
        "!has(self.pod) || !has(self.pod.extraResources) || "
        "!(self.resources.gpuResourceName in self.pod.extraResources)"
    ),
    message=(
        "spec.pod.extraResources: the GPUs (spec.resources.gpuResourceName) are "
        "spec.resources.gpus; list other devices here"
    ),
    holds=lambda s: s.pod is None or s.resources.gpu_resource_name not in s.pod.extra_resources,
)

HUGEPAGES_NEED_MEMORY = CrossFieldRule(
    cel=(
        "!has(self.pod) || !has(self.pod.extraResources) || "
        "!self.pod.extraResources.exists(k, k.startsWith('hugepages-')) || "
        "has(self.resources.memory) || has(self.resources.cpu)"
    ),
    message=(
        "spec.pod.extraResources: hugepages need spec.resources.memory or spec.resources.cpu "
        "too (Kubernetes refuses huge pages without a cpu or memory request)"
    ),
    holds=lambda s: (
        s.pod is None
        or not any(k.startswith("hugepages-") for k in s.pod.extra_resources)
        or s.resources.memory is not None
        or s.resources.cpu is not None
    ),
)


# --- durable outputs: local paths of a cluster job must be on a volume the pod mounts ----------


def local_path(uri: str) -> str | None:
    """The path of a local URI (``file://`` or a plain path); None for ``s3://`` and ``hf://``."""
    if uri.startswith(("s3://", "hf://")):
        return None
    return uri.removeprefix("file://")


def volume_holds(spec: Any, uri: str, *, durable: bool) -> bool:
    """Whether a pod of ``spec`` finds ``uri`` on a mounted volume (always true for s3/hf).

    A cluster job's local path must be absolute and below the mountPath of one of
    ``spec.pod.volumeMounts`` (of a writable PersistentVolumeClaim when ``durable``), or below
    the model cache that ``spec.resources.modelCacheClaim`` mounts. The Python twin of
    :func:`_volume_holds_cel`.
    """
    path = local_path(uri)
    if path is None:
        return True
    if "/../" in path + "/":
        return False

    def under(root: str) -> bool:
        return path == root or path.startswith(root + "/")

    if spec.resources.model_cache_claim is not None and under(contract.CACHE_DIR):
        return True
    pod = spec.pod
    if pod is None:
        return False
    for mount in pod.volume_mounts:
        if not under(mount.mount_path):
            continue
        for volume in pod.volumes:
            if volume.name != mount.name:
                continue
            if not durable:
                return True
            claim = volume.persistent_volume_claim
            if not mount.read_only and claim is not None and not claim.read_only:
                return True
    return False


def _volume_holds_cel(uri: str, *, durable: bool) -> str:
    """CEL over the spec (``self``): the URI expression ``uri`` is s3/hf or on a mounted volume."""
    path = f"({uri}.startsWith('file://') ? {uri}.substring(7) : {uri})"

    def under(root: str) -> str:
        return f"({path} == {root} || {path}.startsWith({root} + '/'))"

    cache = f"(has(self.resources.modelCacheClaim) && {under(repr(contract.CACHE_DIR))})"
    writable = "(!has(m.readOnly) || !m.readOnly) && " if durable else ""
    source = (
        "has(v.persistentVolumeClaim) && (!has(v.persistentVolumeClaim.readOnly) || "
        "!v.persistentVolumeClaim.readOnly)"
        if durable
        else "true"
    )
    mounted = (
        "(has(self.pod) && has(self.pod.volumeMounts) && has(self.pod.volumes) && "
        f"self.pod.volumeMounts.exists(m, {writable}{under('m.mountPath')} && "
        f"self.pod.volumes.exists(v, v.name == m.name && {source})))"
    )
    return (
        f"{uri}.startsWith('s3://') || {uri}.startsWith('hf://') || "
        f"(!({path} + '/').contains('/../') && ({cache} || {mounted}))"
    )


_LOCAL_FOR_FTJ_RUN = "(`ftj run` on one machine accepts any local path)"

OUTPUT_ON_A_DURABLE_VOLUME = CrossFieldRule(
    cel=_volume_holds_cel("self.output.uri", durable=True),
    message=(
        "spec.output.uri is a local path that no durable volume of the pod holds, so the "
        "artifacts would be lost with the pod: use s3://bucket/prefix, or mount a "
        "PersistentVolumeClaim (spec.pod.volumes and spec.pod.volumeMounts, not readOnly) and "
        "write to an absolute path below its mountPath " + _LOCAL_FOR_FTJ_RUN
    ),
    holds=lambda s: volume_holds(s, s.output.uri, durable=True),
    cluster_only=True,
)

MODEL_ON_A_MOUNTED_VOLUME = CrossFieldRule(
    cel=_volume_holds_cel("self.model.uri", durable=False),
    message=(
        "spec.model.uri is a local path that no volume of the pod holds: use s3:// or hf://, "
        "or mount the volume holding the model (spec.pod.volumes and spec.pod.volumeMounts) "
        "and give an absolute path below its mountPath " + _LOCAL_FOR_FTJ_RUN
    ),
    holds=lambda s: volume_holds(s, s.model.uri, durable=False),
    cluster_only=True,
)

DATASETS_ON_MOUNTED_VOLUMES = CrossFieldRule(
    cel="self.datasets.all(d, " + _volume_holds_cel("d.uri", durable=False) + ")",
    message=(
        "spec.datasets[].uri is a local path that no volume of the pod holds: use s3:// or "
        "hf://, or mount the volume holding the data (spec.pod.volumes and "
        "spec.pod.volumeMounts) and give an absolute path below its mountPath " + _LOCAL_FOR_FTJ_RUN
    ),
    holds=lambda s: all(volume_holds(s, d.uri, durable=False) for d in s.datasets),
    cluster_only=True,
)
