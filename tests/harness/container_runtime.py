"""Runs a pod's container from a built image, as a container runtime would (the image tier).

Why: the e2e tier's kubelet (:mod:`tests.harness.cluster.kubelet`) runs pods as local
processes of this checkout's Python. That proves the operator's logic, but not the pod it
renders: the image's entrypoint, its user, a read-only root filesystem, what the mounts hide
or provide. With a :class:`ContainerRuntime`, the same kubelet runs each container from the
image named in the pod spec instead:

* **the image's root filesystem**, from local container storage (``buildah mount``), read-only
  when ``readOnlyRootFilesystem`` is set (a write outside the mounts fails with EROFS, as in a
  cluster), else on a private copy-on-write container of the image;
* **command and args over the image's entrypoint and cmd**, with Kubernetes' rules (``command``
  replaces both; ``args`` alone replaces ``cmd``); ``$(VAR)`` expansion is the kubelet's;
* **env**: the image's ``Env``, then the container's resolved ``env``/``envFrom``, then what the
  kubelet injects (``HOSTNAME``, ``KUBERNETES_SERVICE_HOST``/``PORT``). Nothing is inherited
  from the test process;
* **volumes at their real mount paths**: emptyDir (mode 0777, as the kubelet makes it),
  ConfigMap and Secret volumes (read-only), PVCs as host folders, ``/dev/shm`` (a tmpfs unless
  the pod mounts one), the termination message file, and the ServiceAccount token folder when
  the pod automounts it;
* **workingDir, runAsUser, runAsGroup, fsGroup and supplementalGroups**: the process really runs
  as that uid and those groups (``setpriv`` before ``bwrap``, so files it writes on volumes
  belong to that uid on the host too); ``runAsNonRoot`` refuses a root user the way the kubelet
  does (``CreateContainerConfigError``). A fsGroup makes writable volumes group-owned by it.

Emulated, and kept small: the network. Pods share the host's network namespace and each gets
its own loopback address (``status.podIP``, 127.0.x.y); the kubelet tells the process that
address in ``FTJ_PROGRESS_HOST`` (a real pod binds ``0.0.0.0`` in a namespace of its own), and
cluster DNS names are rewritten to addresses where the kubelet hands over argv and env. A
process inside can reach what the host can, so "no network beyond the API and S3" holds only
because the tests' pods are given nothing else to talk to. No cgroup limits, no seccomp.

Needs: ``buildah`` (image storage), ``bwrap`` (bubblewrap) and ``setpriv`` (util-linux), and root
(``buildah mount`` and bind mounts). :func:`missing_tools` says what is absent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOOLS = ("buildah", "bwrap", "setpriv")


def missing_tools() -> list[str]:
    """What the runtime needs and this host lacks (empty when it can run images)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (buildah mount, bind mounts)")
    return missing


class ImageNotPresent(Exception):
    """The pod names an image this host's container storage does not hold (ErrImagePull)."""


class ContainerConfigError(Exception):
    """The pod spec can't run as written (the kubelet's CreateContainerConfigError)."""


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config a container runtime reads."""

    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    user: str
    working_dir: str

    @classmethod
    def from_oci(cls, config: Mapping[str, Any]) -> ImageConfig:
        env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
        return cls(
            entrypoint=list(config.get("Entrypoint") or []),
            cmd=list(config.get("Cmd") or []),
            env=env,
            user=str(config.get("User") or ""),
            working_dir=str(config.get("WorkingDir") or "/"),
        )


@dataclasses.dataclass(frozen=True)
class Mount:
    """One bind mount of a host path into the container."""

    container_path: str
    host_path: Path
    read_only: bool = False


@dataclasses.dataclass
class _Root:
    container: str  # the buildah working container
    path: Path  # where its root filesystem is reachable by any uid


class ContainerRuntime:
    """Resolves images from local storage and turns a container spec into a sandboxed argv.

    One read-only root per image is shared by every pod that mounts it read-only; a pod with a
    writable root gets a container of its own. :meth:`close` unmounts and removes them all.
    """

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ftj-runtime-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        _make_traversable(self.workdir)
        self._shared: dict[str, _Root] = {}
        self._private: list[_Root] = []
        self._configs: dict[str, ImageConfig] = {}

    # -- images ----------------------------------------------------------------------------

    def image_config(self, image: str) -> ImageConfig:
        """The image's config; :class:`ImageNotPresent` when storage lacks it."""
        if image not in self._configs:
            result = _buildah("inspect", "--type", "image", image, check=False)
            if result.returncode != 0:
                raise ImageNotPresent(
                    f'image "{image}" is not in local container storage (build it with '
                    "bash .ci/build-images.sh)"
                )
            oci = json.loads(result.stdout).get("OCIv1", {}).get("config", {})
            self._configs[image] = ImageConfig.from_oci(oci)
        return self._configs[image]

    def _root(self, image: str, writable: bool) -> Path:
        if not writable and image in self._shared:
            return self._shared[image].path
        name = _buildah("from", "--pull=never", "--quiet", image).stdout.strip()
        merged = _buildah("mount", name).stdout.strip()
        # Container storage is root-only (0700); bind the root where any uid can reach it.
        target = self.workdir / f"root-{len(self._shared) + len(self._private)}"
        target.mkdir()
        subprocess.run(["mount", "--bind", merged, str(target)], check=True)
        root = _Root(name, target)
        if writable:
            self._private.append(root)
        else:
            self._shared[image] = root
        return target

    def close(self) -> None:
        """Unmount and remove every working container (safe to call twice)."""
        for root in [*self._shared.values(), *self._private]:
            subprocess.run(["umount", "-l", str(root.path)], check=False, capture_output=True)
            _buildah("rm", root.container, check=False)
        self._shared.clear()
        self._private.clear()

    # -- containers --------------------------------------------------------------------------

    def command(
        self,
        pod_spec: Mapping[str, Any],
        container: Mapping[str, Any],
        env: Mapping[str, str],
        mounts: list[Mount],
        hostname: str,
        expand: Any,
    ) -> list[str]:
        """The host argv that runs ``container`` of a pod as Kubernetes would.

        ``env`` is the container's resolved environment (env, envFrom and the kubelet's own
        variables); ``expand(value, env)`` is the kubelet's ``$(VAR)`` expansion.
        """
        image = str(container.get("image") or "")
        config = self.image_config(image)
        full_env = {**config.env, **env}
        argv = _container_argv(container, config, full_env, expand)
        uid, gid, groups = _identity(pod_spec, container, config)
        security = {**(pod_spec.get("securityContext") or {}), **_sc(container)}
        if security.get("runAsNonRoot") and uid == 0:
            raise ContainerConfigError(
                "container has runAsNonRoot and image will run as root "
                f'(pod: "{hostname}", container: {container.get("name")})'
            )
        read_only = bool(_sc(container).get("readOnlyRootFilesystem"))
        root = self._root(image, writable=not read_only)
        fs_group = (pod_spec.get("securityContext") or {}).get("fsGroup")
        bwrap = [
            "bwrap",
            "--die-with-parent",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--hostname",
            hostname[:63],
            "--ro-bind" if read_only else "--bind",
            str(root),
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
        ]
        mounted = {m.container_path.rstrip("/") for m in mounts}
        if "/dev/shm" not in mounted:
            bwrap += ["--tmpfs", "/dev/shm"]
        for mount in sorted(mounts, key=lambda m: len(m.container_path)):
            _grant(mount, fs_group)
            bwrap += [
                "--ro-bind" if mount.read_only else "--bind",
                str(mount.host_path),
                _make_mount_point(root, mount),
            ]
        bwrap += ["--clearenv"]
        for key, value in full_env.items():
            bwrap += ["--setenv", key, value]
        bwrap += ["--chdir", str(container.get("workingDir") or config.working_dir or "/")]
        setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid}"]
        setpriv += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
        return [*setpriv, "--", *bwrap, "--", *argv]


# --------------------------------------------------------------------------------------------
# Kubernetes' rules, one function each.
# --------------------------------------------------------------------------------------------


def _sc(container: Mapping[str, Any]) -> dict[str, Any]:
    return dict(container.get("securityContext") or {})


def _container_argv(
    container: Mapping[str, Any], config: ImageConfig, env: Mapping[str, str], expand: Any
) -> list[str]:
    """command replaces ENTRYPOINT and CMD; args alone replaces CMD
    (https://kubernetes.io/docs/tasks/inject-data-application/define-command-argument-container/).
    """
    command = container.get("command")
    args = container.get("args")
    if command:
        argv = [*command, *(args or [])]
    else:
        argv = [*config.entrypoint, *(args if args is not None else config.cmd)]
    if not argv:
        raise ContainerConfigError("no command specified (the image has no entrypoint or cmd)")
    return [expand(str(a), env) for a in argv]


def _identity(
    pod_spec: Mapping[str, Any], container: Mapping[str, Any], config: ImageConfig
) -> tuple[int, int, list[int]]:
    """(uid, gid, supplementary groups): the container's securityContext over the pod's over
    the image's USER."""
    pod_sc = dict(pod_spec.get("securityContext") or {})
    merged = {**pod_sc, **_sc(container)}
    image_user, _, image_group = config.user.partition(":")
    uid = merged.get("runAsUser")
    if uid is None:
        if image_user and not image_user.isdigit():
            raise ContainerConfigError(
                f"image user {image_user!r} is not numeric: set securityContext.runAsUser"
            )
        uid = int(image_user or 0)
    gid = merged.get("runAsGroup")
    if gid is None:
        gid = int(image_group) if image_group.isdigit() else 0
    groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
    if pod_sc.get("fsGroup") is not None:
        groups.append(int(pod_sc["fsGroup"]))
    return int(uid), int(gid), sorted(set(groups))


def _grant(mount: Mount, fs_group: int | None) -> None:
    """Make a volume usable the way the kubelet leaves it: writable volumes are 0777 (emptyDir)
    or, with a fsGroup, group-owned by it with the setgid bit; read-only ones readable."""
    path = mount.host_path
    _make_traversable(path.parent)
    if path.is_file():
        path.chmod(0o644 if mount.read_only else 0o666)
        return
    if mount.read_only:
        for item in [path, *path.rglob("*")]:
            item.chmod(0o755 if item.is_dir() else 0o644)
        return
    if fs_group is None:
        path.chmod(0o777)
    else:
        os.chown(path, -1, fs_group)
        path.chmod(0o2775)


def _make_mount_point(root: Path, mount: Mount) -> str:
    """Create a missing mount point in the container's own layer, as runc does before it makes
    the root read-only (``/var/run/secrets/...`` exists in no image), and return its path with
    symlinks resolved inside ``root`` (Debian's ``/var/run`` points to ``/run``; bwrap would
    follow an absolute link on the host)."""
    if mount.container_path.startswith("/dev/"):
        return mount.container_path  # /dev is bwrap's own tmpfs: it creates what it mounts
    current = root
    parts = [p for p in mount.container_path.split("/") if p]
    for _hop in range(100):
        if not parts:
            break
        part = parts.pop(0)
        candidate = current / part
        if candidate.is_symlink():
            link = os.readlink(candidate)
            parts = [p for p in link.split("/") if p] + parts
            current = root if link.startswith("/") else current
            continue
        if not candidate.exists():
            if parts or mount.host_path.is_dir():
                candidate.mkdir(mode=0o755)
            else:
                candidate.touch(mode=0o644)
        current = candidate
    else:
        raise ContainerConfigError(f"too many symlinks in mount path {mount.container_path}")
    return "/" + str(current.relative_to(root)) if current != root else "/"


def _make_traversable(path: Path) -> None:
    """Let any uid pass through ``path`` and its parents (bwrap binds as the pod's uid)."""
    for part in [path, *path.parents]:
        with contextlib.suppress(OSError):
            mode = part.stat().st_mode
            if mode & 0o011 != 0o011:
                part.chmod(mode | 0o011)


def _buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=check)
