"""``spec.pod``: what a platform team adds to the trainer pod (env, service account, volumes...).

The operator owns the trainer container (command, ports, security context, its volumes and
variables); everything here is added after it, and a field that would change what the operator
owns is refused by name (rules.py holds the CEL rules and their Python twins). Split from
:mod:`finetune_api.spec` to keep each module about one thing.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, model_validator

from finetune_api import rules
from finetune_api._base import ApiModel
from finetune_api.fields import (
    _FREE_FORM,
    CAPABILITY_PATTERN,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    ENV_NAME_PATTERN,
    MOUNT_PATH_PATTERN,
    Quantity,
)


class KeySelector(ApiModel):
    """A key of a Secret or ConfigMap (core/v1 SecretKeySelector, ConfigMapKeySelector)."""

    name: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Object name."
    )
    key: str = Field(min_length=1, max_length=253, description="Key in the object.")
    optional: bool | None = Field(default=None, description="Start even if it is missing.")


class EnvVarSource(ApiModel):
    """Where a variable's value comes from (core/v1 EnvVarSource)."""

    cross_field_rules: ClassVar[tuple[rules.CrossFieldRule, ...]] = (
        rules.CrossFieldRule(
            cel=(
                "[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef), "
                "has(self.resourceFieldRef)].filter(x, x).size() == 1"
            ),
            message=(
                "spec.pod.env[].valueFrom: set exactly one of secretKeyRef, configMapKeyRef, "
                "fieldRef, resourceFieldRef"
            ),
            holds=lambda v: (
                sum(
                    x is not None
                    for x in (
                        v.secret_key_ref,
                        v.config_map_key_ref,
                        v.field_ref,
                        v.resource_field_ref,
                    )
                )
                == 1
            ),
        ),
    )

    secret_key_ref: KeySelector | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeySelector | None = Field(
        default=None, description="A key of a ConfigMap."
    )
    field_ref: dict[str, Any] | None = Field(
        default=None,
        json_schema_extra=_FREE_FORM,
        description=(
            "A field of the pod (core/v1 ObjectFieldSelector, e.g. {fieldPath: spec.nodeName})."
        ),
    )
    resource_field_ref: dict[str, Any] | None = Field(
        default=None,
        json_schema_extra=_FREE_FORM,
        description="A resource of the container (core/v1 ResourceFieldSelector).",
    )


class EnvVar(ApiModel):
    """One environment variable of the trainer container (core/v1 EnvVar)."""

    cross_field_rules: ClassVar[tuple[rules.CrossFieldRule, ...]] = (rules.ENV_VALUE_OR_VALUE_FROM,)

    name: str = Field(
        min_length=1, max_length=253, pattern=ENV_NAME_PATTERN, description="Variable name."
    )
    value: str | None = Field(default=None, max_length=32768, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        default=None, description="Take the value from a Secret, ConfigMap or pod field."
    )


class ObjectRef(ApiModel):
    """A Secret or ConfigMap of the namespace (core/v1 SecretEnvSource, ConfigMapEnvSource)."""

    name: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Object name."
    )
    optional: bool | None = Field(default=None, description="Start even if it is missing.")


class EnvFromSource(ApiModel):
    """Every key of a Secret or ConfigMap as variables (core/v1 EnvFromSource)."""

    cross_field_rules: ClassVar[tuple[rules.CrossFieldRule, ...]] = (
        rules.CrossFieldRule(
            cel="has(self.configMapRef) != has(self.secretRef)",
            message="spec.pod.envFrom[]: set exactly one of configMapRef or secretRef",
            holds=lambda e: (e.config_map_ref is None) != (e.secret_ref is None),
        ),
    )

    config_map_ref: ObjectRef | None = Field(default=None, description="A ConfigMap.")
    secret_ref: ObjectRef | None = Field(default=None, description="A Secret.")
    prefix: str | None = Field(
        default=None, max_length=253, description="Prefix added to every variable name."
    )


class LocalObjectReference(ApiModel):
    """An object in the job's namespace, by name."""

    name: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Object name."
    )


class ClaimSource(ApiModel):
    """A PersistentVolumeClaim of the namespace (core/v1 PersistentVolumeClaimVolumeSource)."""

    claim_name: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Claim name."
    )
    read_only: bool = Field(
        default=False, description="Mount read-only (an output can't be written there)."
    )


_VOLUME_SOURCES = (
    "persistentVolumeClaim",
    "configMap",
    "secret",
    "emptyDir",
    "nfs",
    "csi",
    "ephemeral",
)


class Volume(ApiModel):
    """A volume of the trainer pod (core/v1 Volume, with the sources listed here)."""

    cross_field_rules: ClassVar[tuple[rules.CrossFieldRule, ...]] = (
        rules.CrossFieldRule(
            cel="["
            + ", ".join(f"has(self.{k})" for k in _VOLUME_SOURCES)
            + "].filter(x, x).size() == 1",
            message="spec.pod.volumes[]: set exactly one of " + ", ".join(_VOLUME_SOURCES),
            holds=lambda v: (
                sum(
                    x is not None
                    for x in (
                        v.persistent_volume_claim,
                        v.config_map,
                        v.secret,
                        v.empty_dir,
                        v.nfs,
                        v.csi,
                        v.ephemeral,
                    )
                )
                == 1
            ),
        ),
    )

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Volume name, referenced by spec.pod.volumeMounts[].name.",
    )
    persistent_volume_claim: ClaimSource | None = Field(
        default=None,
        description=(
            "A PersistentVolumeClaim: the one kind of volume a local spec.output.uri may be on "
            "(its contents outlive the pod)."
        ),
    )
    config_map: dict[str, Any] | None = Field(
        default=None, json_schema_extra=_FREE_FORM, description="core/v1 ConfigMapVolumeSource."
    )
    secret: dict[str, Any] | None = Field(
        default=None, json_schema_extra=_FREE_FORM, description="core/v1 SecretVolumeSource."
    )
    empty_dir: dict[str, Any] | None = Field(
        default=None,
        json_schema_extra=_FREE_FORM,
        description="core/v1 EmptyDirVolumeSource, e.g. {medium: HugePages} for huge pages.",
    )
    nfs: dict[str, Any] | None = Field(
        default=None, json_schema_extra=_FREE_FORM, description="core/v1 NFSVolumeSource."
    )
    csi: dict[str, Any] | None = Field(
        default=None, json_schema_extra=_FREE_FORM, description="core/v1 CSIVolumeSource."
    )
    ephemeral: dict[str, Any] | None = Field(
        default=None, json_schema_extra=_FREE_FORM, description="core/v1 EphemeralVolumeSource."
    )


class VolumeMount(ApiModel):
    """Where a volume of spec.pod.volumes appears in the trainer container (core/v1 VolumeMount)."""

    name: str = Field(
        min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN, description="The volume's name."
    )
    mount_path: str = Field(
        min_length=2,
        max_length=1024,
        pattern=MOUNT_PATH_PATTERN,
        description="Absolute path in the container, e.g. /data (no trailing slash).",
    )
    read_only: bool = Field(default=False, description="Mount read-only.")
    sub_path: str | None = Field(
        default=None, max_length=1024, description="Mount only this path of the volume."
    )


_ANY_OBJECT: dict[str, Any] = {"type": "object", **_FREE_FORM}
_OBJECTS: dict[str, Any] = {"type": "array", "items": _ANY_OBJECT}
_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
# The pod-spec shape of each operator-owned field: a value of the usual type reaches the CEL
# rule that refuses it by name (a type error would not say what to use instead).
_OWNED_FIELD_SCHEMAS: dict[str, dict[str, Any]] = {
    "command": _STRINGS,
    "args": _STRINGS,
    "ports": _OBJECTS,
    "securityContext": _ANY_OBJECT,
    "image": {"type": "string"},
    "resources": _ANY_OBJECT,
    "containers": _OBJECTS,
    "initContainers": _OBJECTS,
    "restartPolicy": {"type": "string"},
    "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
    "tolerations": _OBJECTS,
    "affinity": _ANY_OBJECT,
    "priorityClassName": {"type": "string"},
    "automountServiceAccountToken": {"type": "boolean"},
}


def _declare_owned_fields(schema: dict[str, Any]) -> None:
    # Declared in the schema only so that the CRD's rules can refuse them by name.
    for field, rule in rules.OWNED_POD_FIELDS.items():
        schema.setdefault("properties", {})[field] = {
            "description": f"Refused: {rule.message.split(': ', 1)[1]}.",
            **_OWNED_FIELD_SCHEMAS[field],
        }


class PodOverrides(ApiModel):
    """What a platform adds to the trainer pods: identity, environment, volumes, metadata, devices.

    Merge precedence: what the operator owns is fixed (command, ports, the restricted security
    context, restartPolicy, the job's own volumes and variables) and a spec that sets it again
    is refused at admission, naming the field. Everything here is added to the rendered pod:
    variables after the operator's (and, as in any pod, a name in env wins over the same name
    from envFrom, so envFrom can't replace the operator's), volumes and mounts after the
    operator's, labels and annotations beside the operator's keys, extra resources beside
    spec.resources' cpu, memory and GPUs (requests = limits). Placement stays in
    spec.resources (nodeSelector, tolerations, affinity, priorityClassName).
    """

    model_config = ConfigDict(json_schema_extra=_declare_owned_fields)
    cross_field_rules: ClassVar[tuple[rules.CrossFieldRule, ...]] = (
        *rules.OWNED_POD_FIELDS.values(),
        rules.ENV_NOT_OPERATORS,
        rules.ENV_NOT_CREDENTIALS,
        rules.VOLUME_NAMES_ARE_NOT_OPERATORS,
        rules.VOLUME_NAMES_ARE_UNIQUE,
        rules.MOUNTS_NAME_A_VOLUME,
        rules.MOUNT_PATHS_ARE_NOT_OPERATORS,
        rules.LABELS_ARE_NOT_OPERATORS,
        rules.ANNOTATIONS_ARE_NOT_OPERATORS,
        rules.EXTRA_RESOURCES_ARE_NOT_COMPUTE,
    )

    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description=(
            "ServiceAccount of the pods: the identity S3 sees without "
            "spec.storage.s3.credentialsSecret (IAM roles for service accounts, EKS Pod "
            "Identity, GKE or Azure workload identity). The Kubernetes API token is still not "
            "mounted: the trainer never calls the API, and web identity mounts its own token."
        ),
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=128,
        description=(
            "Variables of the trainer container, after the operator's (FTJ_*, HOME, HF_HOME, "
            "TRITON_CACHE_DIR, PYTHONUNBUFFERED, JOB_COMPLETION_INDEX and credentials are "
            "refused)."
        ),
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Every key of a Secret or ConfigMap as variables; the operator's variables win "
            "over a key of the same name."
        ),
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list,
        max_length=16,
        description="Secrets for pulling the trainer image from a private registry.",
    )
    volumes: list[Volume] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Volumes of the pod, besides the operator's (job-config, scratch, tmp, dshm, "
            "model-cache)."
        ),
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Mounts of spec.pod.volumes in the trainer container. A local model, dataset or "
            "output path of a cluster job must be below one of them (an output below a "
            "writable PersistentVolumeClaim)."
        ),
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description=(
            "Annotations of the pods (keys under finetune.dev/ and batch.kubernetes.io/ are "
            "refused)."
        ),
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description=(
            "Labels of the pods (keys under app.kubernetes.io/, finetune.dev/, "
            "batch.kubernetes.io/ and job-name, controller-uid are refused)."
        ),
    )
    extra_resources: dict[str, Quantity] = Field(
        default_factory=dict,
        max_length=16,
        description=(
            "More resources of the trainer container, requested and limited alike, e.g. "
            "{rdma/hca_shared_devices_a: 1, hugepages-2Mi: 1Gi} for RDMA/InfiniBand devices "
            "and huge pages (cpu, memory and GPUs are spec.resources)."
        ),
    )
    capabilities: list[Annotated[str, Field(max_length=64, pattern=CAPABILITY_PATTERN)]] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Linux capabilities added to the trainer container (which drops all others), e.g. "
            "IPC_LOCK for RDMA memory registration. Only those the operator's settings allow "
            "(the chart's trainer.allowedCapabilities, default none); another fails the job "
            "with CapabilityNotAllowed. Any capability takes the pod out of the restricted Pod "
            "Security profile."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_owned_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for field, rule in rules.OWNED_POD_FIELDS.items():
                if field in data:
                    raise ValueError(rule.message)
        return data
