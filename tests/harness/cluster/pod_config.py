"""What the kubelet gives a container before it starts: volumes and environment.

Why: the trainer pod must see exactly what the operator rendered, resolved as the kubelet
resolves it (https://kubernetes.io/docs/tasks/inject-data-application/): ConfigMap and Secret
volumes written out as files (``items`` honoured), emptyDir, one shared directory per PVC
claim; env from plain values, ``secretKeyRef``/``configMapKeyRef``, ``fieldRef``,
``resourceFieldRef`` and ``envFrom``, with ``$(VAR)`` expansion. A missing Secret or
ConfigMap that is not ``optional`` raises :class:`ConfigError`, and the kubelet keeps the pod
in ``CreateContainerConfigError`` until it appears, as upstream does. Both ways of running a
container (:mod:`~tests.harness.cluster.host_process`,
:mod:`~tests.harness.cluster.image_container`) build on this.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.harness.cluster.pod_state import HOST_IP, NODE_NAME, SimulatedPod
from tests.harness.kube_api import ObjectStore, ResourceType

SECRETS = ObjectStore.resource("", "v1", "secrets")
CONFIGMAPS = ObjectStore.resource("", "v1", "configmaps")


class ConfigError(Exception):
    """The container can't start yet: a missing reference (CreateContainerConfigError) or,
    in the image tier, an image not in local storage (ImagePullBackOff)."""

    def __init__(self, message: str, reason: str = "CreateContainerConfigError") -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Launch:
    """How to start a container's process: argv, environment, working directory, and the
    host file that stands for its termination message path."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    termination_log: Path


def expand_var_refs(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion; ``$$(VAR)`` escapes."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        value,
    )


def materialize_volumes(
    store: ObjectStore, workdir: Path, pod: SimulatedPod, obj: Mapping[str, Any]
) -> dict[str, Path]:
    """The host directory of each of the pod's volumes (ConfigMap/Secret files written; a
    PVC claim's directory is shared by every pod naming it, under ``workdir``)."""
    ns = pod.namespace
    volumes_dir = pod.root / "volumes"
    sources: dict[str, Path] = {}
    for volume in obj["spec"].get("volumes") or []:
        target = volumes_dir / volume["name"]
        if "persistentVolumeClaim" in volume:
            target = workdir / "pvc" / ns / volume["persistentVolumeClaim"]["claimName"]
        target.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume or "secret" in volume:
            _materialize(store, ns, volume, target)
        sources[volume["name"]] = target
    return sources


def add_container_env(
    store: ObjectStore,
    pod: SimulatedPod,
    obj: Mapping[str, Any],
    container: Mapping[str, Any],
    env: dict[str, str],
) -> None:
    """Add the container's ``envFrom`` then ``env`` to ``env``, in the kubelet's order (later
    entries win; ``$(VAR)`` sees what came before)."""
    ns = pod.namespace
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = lookup(store, CONFIGMAPS, ns, source["configMapRef"], None)
        else:
            data = lookup(store, SECRETS, ns, source["secretRef"], None)
        env.update({prefix + k: v for k, v in (data or {}).items()})
    for var in container.get("env") or []:
        value = _env_value(store, pod, obj, var, env)
        if value is not None:
            env[var["name"]] = value


def lookup(
    store: ObjectStore, res: ResourceType, ns: str, ref: Mapping[str, Any], key: str | None
) -> Any:
    """A ConfigMap's or Secret's data (decoded), or one ``key`` of it; ``None`` when absent
    and ``optional``, else :class:`ConfigError` with the kubelet's message."""
    obj = store.find(res, ns, ref.get("name", ""))
    kind = "secret" if res == SECRETS else "configmap"
    if obj is None:
        if ref.get("optional"):
            return None
        raise ConfigError(f'{kind} "{ref.get("name")}" not found')
    data = dict(obj.get("data") or {})
    if res == SECRETS:
        data = {k: base64.b64decode(v).decode() for k, v in data.items()}
        data.update(obj.get("stringData") or {})
    if key is None:
        return data
    if key not in data:
        if ref.get("optional"):
            return None
        raise ConfigError(f"couldn't find key {key} in {kind.capitalize()} {ns}/{ref.get('name')}")
    return data[key]


def _materialize(store: ObjectStore, ns: str, volume: Mapping[str, Any], target: Path) -> None:
    if "configMap" in volume:
        ref = volume["configMap"]
        data = lookup(store, CONFIGMAPS, ns, ref, None)
    else:
        ref = {**volume["secret"], "name": volume["secret"].get("secretName")}
        data = lookup(store, SECRETS, ns, ref, None)
    if data is None:
        return
    items = ref.get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        if item["key"] in data:
            path = target / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data[item["key"]])


def _env_value(
    store: ObjectStore,
    pod: SimulatedPod,
    obj: Mapping[str, Any],
    var: Mapping[str, Any],
    env: Mapping[str, str],
) -> str | None:
    if "value" in var:
        return expand_var_refs(str(var["value"]), env)
    source = var.get("valueFrom") or {}
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        secret: str | None = lookup(store, SECRETS, pod.namespace, ref, ref["key"])
        return secret
    if "configMapKeyRef" in source:
        ref = source["configMapKeyRef"]
        config: str | None = lookup(store, CONFIGMAPS, pod.namespace, ref, ref["key"])
        return config
    if "fieldRef" in source:
        path = source["fieldRef"]["fieldPath"]
        meta = obj["metadata"]
        fields: dict[str, str] = {
            "metadata.name": pod.name,
            "metadata.namespace": pod.namespace,
            "metadata.uid": meta["uid"],
            "status.podIP": pod.ip,
            "status.hostIP": HOST_IP,
            "spec.nodeName": NODE_NAME,
            "spec.serviceAccountName": obj["spec"].get("serviceAccountName", "default"),
        }
        match = re.match(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        return fields.get(path, "")
    if "resourceFieldRef" in source:
        return "0"
    return ""
