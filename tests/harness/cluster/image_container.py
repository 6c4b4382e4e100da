"""A container run from the image its spec names: the image tier's way to run pods.

Why: the e2e tier's host processes prove the operator's logic but not the pod it renders;
with a :class:`~tests.harness.container_runtime.ContainerRuntime` the kubelet runs each
container from its image instead (its entrypoint, its user, a read-only root), with volumes at
their real mount paths, the environment the kubelet gives it (``HOSTNAME``,
``KUBERNETES_SERVICE_HOST``/``PORT`` pointing at the gateway's HTTPS port, the ServiceAccount
token folder when automounted) and nothing of the host's. An image missing from local storage
is ``ImagePullBackOff``; a spec the runtime refuses (``runAsNonRoot`` with a root user) is
``CreateContainerConfigError``. See :mod:`tests.harness.container_runtime` for what is real.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.harness.cluster.pod_config import ConfigError, Launch, add_container_env, expand_var_refs
from tests.harness.cluster.pod_state import HOST_IP, SimulatedPod
from tests.harness.container_runtime import (
    SERVICE_ACCOUNT_DIR,
    ContainerConfigError,
    ContainerRuntime,
    ImageNotPresent,
    Mount,
)
from tests.harness.kube_api import KubeGateway


def image_launch(
    gateway: KubeGateway,
    runtime: ContainerRuntime,
    pod: SimulatedPod,
    obj: dict[str, Any],
    container: Mapping[str, Any],
    sources: Mapping[str, Path],
    *,
    resolve_dns: Callable[[str, str], str],
) -> Launch:
    """argv of the container run from its image: volumes at their real paths, the
    environment the kubelet gives it and nothing of the host's (see container_runtime)."""
    ns, spec = pod.namespace, obj["spec"]
    read_only_volumes = {
        v["name"] for v in spec.get("volumes") or [] if "configMap" in v or "secret" in v
    }
    mounts = []
    for mount in container.get("volumeMounts") or []:
        source = Path(sources.get(mount["name"], pod.root / "volumes" / mount["name"]))
        if mount.get("subPath"):
            source = source / mount["subPath"]
        source.mkdir(parents=True, exist_ok=True)
        read_only = bool(mount.get("readOnly")) or mount["name"] in read_only_volumes
        mounts.append(Mount(mount["mountPath"], source, read_only))
    term_path = pod.root / "termination-log"
    term_path.touch()
    mounts.append(Mount(container.get("terminationMessagePath", "/dev/termination-log"), term_path))
    env: dict[str, str] = {
        "HOSTNAME": spec.get("hostname") or pod.name,
        "KUBERNETES_SERVICE_HOST": HOST_IP,
        "KUBERNETES_SERVICE_PORT": str(gateway.tls_port or ""),
    }
    if spec.get("automountServiceAccountToken", True) and gateway.ca_file is not None:
        token_dir = gateway.service_account_files(ns, pod.root / "serviceaccount")
        mounts.append(Mount(SERVICE_ACCOUNT_DIR, Path(token_dir), read_only=True))
    add_container_env(gateway.store, pod, obj, container, env)
    env = {k: resolve_dns(ns, v) for k, v in env.items()}
    # Emulated network: the pod shares the host's namespace, so it is told its address.
    env["FTJ_PROGRESS_HOST"] = pod.ip
    try:
        argv = runtime.command(
            spec,
            container,
            env,
            mounts,
            hostname=env["HOSTNAME"],
            expand=lambda value, e: resolve_dns(ns, expand_var_refs(value, e)),
        )
    except ImageNotPresent as err:
        image = container.get("image", "")
        raise ConfigError(
            f'Back-off pulling image "{image}": ErrImagePull: {err}', "ImagePullBackOff"
        ) from err
    except ContainerConfigError as err:
        raise ConfigError(str(err)) from err
    return Launch(argv, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, str(pod.root), term_path)
