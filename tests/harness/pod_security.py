"""The Pod Security Standards' *restricted* profile (baseline + restricted), as a checker.

Implements https://kubernetes.io/docs/concepts/security/pod-security-standards/ (policy
version latest, as of Kubernetes 1.30+) over a pod spec given as a plain dict, so rendered
manifests can be checked in unit tests without an API server. ``violations`` returns one line
per broken rule, naming the field, like the PodSecurity admission plugin's messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Obj = dict[str, Any]

# Baseline: "Sysctls" (the safe set).
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
# Baseline: "Capabilities" (may be added); restricted allows only NET_BIND_SERVICE.
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
# Restricted: "Volume Types".
ALLOWED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
VOLUME_SOURCE_KEYS = ALLOWED_VOLUME_TYPES | {
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "nfs",
    "iscsi",
    "glusterfs",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "image",
}
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def pod_spec_of(obj: Obj) -> tuple[Obj, Obj]:
    """(pod metadata, pod spec) of a Pod, a workload's pod template, or a CronJob's."""
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.get("metadata") or {}, obj["spec"]
    if kind == "CronJob":
        template = obj["spec"]["jobTemplate"]["spec"]["template"]
    else:
        template = obj["spec"]["template"]
    return template.get("metadata") or {}, template["spec"]


def _containers(spec: Obj) -> Iterator[tuple[str, Obj]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(key) or []:
            yield f"spec.{key}[{container.get('name', '?')}]", container


def _effective(container: Obj, pod_ctx: Obj, field: str) -> Any:
    ctx = container.get("securityContext") or {}
    return ctx[field] if field in ctx else pod_ctx.get(field)


def violations(obj: Obj) -> list[str]:
    """Every rule of the restricted profile that ``obj`` breaks; [] means it passes."""
    meta, spec = pod_spec_of(obj)
    problems: list[str] = []
    problems += _baseline(meta, spec)
    problems += _restricted(spec)
    return problems


def _baseline(meta: Obj, spec: Obj) -> list[str]:
    out: list[str] = []
    pod_ctx = spec.get("securityContext") or {}
    # Host namespaces.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"spec.{field} must be unset or false")
    # Windows HostProcess.
    if (pod_ctx.get("windowsOptions") or {}).get("hostProcess"):
        out.append("spec.securityContext.windowsOptions.hostProcess must be unset or false")
    # HostPath volumes.
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            out.append(f"spec.volumes[{volume.get('name')}].hostPath is forbidden")
    # Sysctls.
    for sysctl in pod_ctx.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"spec.securityContext.sysctls {sysctl.get('name')} is not in the safe set")
    # SELinux (pod level).
    out += _selinux("spec.securityContext", pod_ctx)
    # AppArmor (pod level, field and annotations).
    out += _apparmor("spec.securityContext", pod_ctx)
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or str(value).startswith("localhost/")
        ):
            out.append(
                f"metadata.annotations[{key}]={value} must be runtime/default or localhost/*"
            )
    # Seccomp (baseline: not Unconfined).
    if (pod_ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
        out.append("spec.securityContext.seccompProfile.type must not be Unconfined")
    for where, container in _containers(spec):
        ctx = container.get("securityContext") or {}
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}.securityContext.windowsOptions.hostProcess must be unset or false")
        if ctx.get("privileged"):
            out.append(f"{where}.securityContext.privileged must be unset or false")
        extra = set((ctx.get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES
        if extra:
            out.append(f"{where}.securityContext.capabilities.add {sorted(extra)} not allowed")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{where}.ports hostPort {port['hostPort']} must be unset or 0")
        if ctx.get("procMount", "Default") != "Default":
            out.append(f"{where}.securityContext.procMount must be Default")
        out += _selinux(f"{where}.securityContext", ctx)
        out += _apparmor(f"{where}.securityContext", ctx)
        if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"{where}.securityContext.seccompProfile.type must not be Unconfined")
        if "lifecycle" in container:
            for hook in (container["lifecycle"] or {}).values():
                if isinstance(hook, dict) and (hook.get("httpGet") or {}).get("host"):
                    out.append(f"{where}.lifecycle httpGet.host must be unset")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if ((container.get(probe) or {}).get("httpGet") or {}).get("host"):
                out.append(f"{where}.{probe}.httpGet.host must be unset")
    return out


def _selinux(where: str, ctx: Obj) -> list[str]:
    options = ctx.get("seLinuxOptions") or {}
    out = []
    if options.get("type", "") not in SELINUX_TYPES:
        out.append(f"{where}.seLinuxOptions.type {options['type']} not allowed")
    for field in ("user", "role"):
        if options.get(field):
            out.append(f"{where}.seLinuxOptions.{field} must be unset")
    return out


def _apparmor(where: str, ctx: Obj) -> list[str]:
    profile = ctx.get("appArmorProfile")
    if profile and profile.get("type") not in APPARMOR_TYPES:
        return [f"{where}.appArmorProfile.type must be RuntimeDefault or Localhost"]
    return []


def _restricted(spec: Obj) -> list[str]:
    out: list[str] = []
    pod_ctx = spec.get("securityContext") or {}
    # Volume types.
    for volume in spec.get("volumes") or []:
        kinds = [k for k in volume if k != "name"]
        bad = [k for k in kinds if k not in ALLOWED_VOLUME_TYPES]
        if bad:
            out.append(
                f"spec.volumes[{volume.get('name')}] uses {bad[0]}, not an allowed volume type"
            )
    if pod_ctx.get("runAsUser") == 0:
        out.append("spec.securityContext.runAsUser must not be 0")
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_TYPES:
        out.append("spec.securityContext.seccompProfile.type must be RuntimeDefault or Localhost")
    for where, container in _containers(spec):
        ctx = container.get("securityContext") or {}
        # Privilege escalation (must be explicitly false).
        if ctx.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}.securityContext.allowPrivilegeEscalation must be false")
        # Running as non-root (container or pod level must say true; never false).
        if _effective(container, pod_ctx, "runAsNonRoot") is not True:
            out.append(f"{where}: runAsNonRoot must be true (container or pod securityContext)")
        if ctx.get("runAsUser") == 0:
            out.append(f"{where}.securityContext.runAsUser must not be 0")
        # Seccomp: RuntimeDefault or Localhost, set on the container or the pod.
        seccomp = (ctx.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in SECCOMP_TYPES:
            out.append(f"{where}: seccompProfile.type must be RuntimeDefault or Localhost")
        # Capabilities: drop ALL, add only NET_BIND_SERVICE.
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}.securityContext.capabilities.drop must include ALL")
        added = set(caps.get("add") or [])
        if added - RESTRICTED_CAPABILITIES:
            out.append(f"{where}.securityContext.capabilities.add may only hold NET_BIND_SERVICE")
    return out
