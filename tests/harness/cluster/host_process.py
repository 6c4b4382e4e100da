"""A container run as a process of this checkout's Python: the e2e tier's way to run pods.

Why: e2e tests must run the trainer pod exactly as the operator renders it (command, args,
environment, ConfigMap volume, Secret references) without a container runtime, so each
container becomes a local process of this test run's Python (``python``/``torchrun`` in the
command map to it: same packages):

* every mount path in the environment and arguments is rewritten to the volume's host
  directory (``FTJ_MANIFEST=/etc/finetune/job.json`` becomes
  ``<pod>/volumes/config/job.json``); ``/tmp`` and the termination message path are private to
  the pod as well. Paths under the "image" (:data:`IMAGE_ROOTS`: the checkout and the Python
  installation) are never mapped, even where the checkout lives under a mount path;
* the environment is the container spec's, plus the few host variables that find this
  Python (:data:`INHERITED_ENV`), the simulator's ``extra_env`` and per-test overrides;
  ``FTJ_PROGRESS_HOST`` tells the trainer its pod address, since every pod shares the host's
  network namespace.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tests.harness.cluster.pod_config import ConfigError, Launch, add_container_env, expand_var_refs
from tests.harness.cluster.pod_state import SimulatedPod
from tests.harness.kube_api import ObjectStore

# What stands for the container image on this host: the checkout (the trainer's code and the
# fake trainer) and the Python installation. A pod's paths under these are never mapped onto
# its volumes, even where the checkout itself lives under a mount path such as /tmp.
IMAGE_ROOTS = tuple(
    sorted(
        {
            str(Path(__file__).resolve().parents[3]),
            str(Path(sys.prefix).resolve()),
            str(Path(sys.base_prefix).resolve()),
        }
    )
)
# Host variables a pod inherits: enough to find this Python and its packages, nothing secret.
INHERITED_ENV = (
    "PATH",
    "PYTHONPATH",
    "LANG",
    "LC_ALL",
    "VIRTUAL_ENV",
    "PYENV_VERSION",
    "LD_LIBRARY_PATH",
    "SSL_CERT_FILE",
    "TZ",
)
# (namespace, job name prefix or label value or None, variables): see JobSimulator.set_pod_env
EnvOverride = tuple[str, str | None, dict[str, str]]


def host_process_launch(
    store: ObjectStore,
    pod: SimulatedPod,
    obj: dict[str, Any],
    container: Mapping[str, Any],
    sources: Mapping[str, Path],
    *,
    extra_env: Mapping[str, str],
    env_overrides: Iterable[EnvOverride],
    resolve_dns: Callable[[str, str], str],
) -> Launch:
    """argv, env and cwd of ``container`` run as a host process, its volumes at ``sources``."""
    ns = pod.namespace
    volumes_dir = pod.root / "volumes"
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        source = sources.get(mount["name"], volumes_dir / mount["name"])
        source.mkdir(parents=True, exist_ok=True)
        mounts[mount["mountPath"].rstrip("/") or "/"] = (
            source / mount["subPath"] if mount.get("subPath") else source
        )
    term_path = pod.root / "termination-log"
    term_path.touch()
    tmp = pod.root / "tmp"
    tmp.mkdir(exist_ok=True)
    mounts.setdefault("/tmp", tmp)
    mounts[container.get("terminationMessagePath", "/dev/termination-log")] = term_path

    def rewrite(value: str) -> str:
        if any(value == root or value.startswith(root + "/") for root in IMAGE_ROOTS):
            return value  # the "image" (code, interpreter) is not under a volume
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(mounts[mount_path]) + value[len(mount_path) :]
        return value

    # Host settings (PATH of a virtualenv under /tmp, test overrides) are the image's, not
    # the pod's: only what the container spec itself defines is mapped onto volumes.
    host: dict[str, str] = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    host.update(extra_env)
    env: dict[str, str] = {"HOME": str(tmp)}
    labels = obj["metadata"].get("labels") or {}
    for namespace, job, extra in env_overrides:
        if namespace == ns and (
            job is None or labels.get("job-name", "").startswith(job) or job in labels.values()
        ):
            host.update(extra)
    env["HOSTNAME"] = obj["spec"].get("hostname") or pod.name  # as the kubelet sets it
    add_container_env(store, pod, obj, container, env)
    env = {**host, **{k: resolve_dns(ns, rewrite(v)) for k, v in env.items()}}
    env["FTJ_PROGRESS_HOST"] = pod.ip
    env.setdefault("FTJ_TERMINATION_LOG", str(term_path))
    if "FTJ_WORKDIR" not in env:
        scratch = pod.root / "scratch"
        scratch.mkdir(exist_ok=True)
        env["FTJ_WORKDIR"] = str(scratch)
    argv = [
        resolve_dns(ns, rewrite(expand_var_refs(a, env)))
        for a in (container.get("command") or []) + (container.get("args") or [])
    ]
    if not argv:
        raise ConfigError(
            "the simulator needs an explicit container command (it cannot "
            "read the image's entrypoint)"
        )
    argv = host_command(argv)
    cwd = rewrite(container.get("workingDir") or "") or str(pod.root)
    Path(cwd).mkdir(parents=True, exist_ok=True)
    return Launch(argv, env, cwd, term_path)


def host_command(argv: list[str]) -> list[str]:
    """Run the image's interpreters with this test run's Python (same packages)."""
    head = os.path.basename(argv[0])
    if re.fullmatch(r"python(3(\.\d+)?)?", head):
        return [sys.executable, *argv[1:]]
    if head == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    return argv
