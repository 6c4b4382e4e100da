"""The restricted Pod Security Standard checker itself: each rule catches its violation."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import pod_security

pytestmark = pytest.mark.unit

GOOD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "good"},
    "spec": {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "main",
                "image": "x",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    },
}


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = pod["spec"]["containers"][0]
    return c


def _ctx(pod: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = _container(pod)["securityContext"]
    return c


BAD: dict[str, Callable[[dict[str, Any]], None]] = {
    "hostNetwork": lambda p: p["spec"].update(hostNetwork=True),
    "hostPID": lambda p: p["spec"].update(hostPID=True),
    "hostIPC": lambda p: p["spec"].update(hostIPC=True),
    "privileged": lambda p: _ctx(p).update(privileged=True),
    "capability SYS_ADMIN": lambda p: _ctx(p)["capabilities"].update(add=["SYS_ADMIN"]),
    "capability CHOWN (baseline ok, restricted not)": lambda p: _ctx(p)["capabilities"].update(
        add=["CHOWN"]
    ),
    "no drop ALL": lambda p: _ctx(p)["capabilities"].update(drop=["NET_RAW"]),
    "hostPath": lambda p: p["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    "nfs volume": lambda p: p["spec"]["volumes"].append(
        {"name": "n", "nfs": {"server": "s", "path": "/"}}
    ),
    "runAsNonRoot false": lambda p: p["spec"]["securityContext"].update(runAsNonRoot=False),
    "runAsNonRoot missing": lambda p: p["spec"]["securityContext"].pop("runAsNonRoot"),
    "runAsUser 0 pod": lambda p: p["spec"]["securityContext"].update(runAsUser=0),
    "runAsUser 0 container": lambda p: _ctx(p).update(runAsUser=0),
    "seccomp missing": lambda p: p["spec"]["securityContext"].pop("seccompProfile"),
    "seccomp Unconfined": lambda p: _ctx(p).update(seccompProfile={"type": "Unconfined"}),
    "allowPrivilegeEscalation unset": lambda p: _ctx(p).pop("allowPrivilegeEscalation"),
    "allowPrivilegeEscalation true": lambda p: _ctx(p).update(allowPrivilegeEscalation=True),
    "hostPort": lambda p: _container(p).update(ports=[{"containerPort": 80, "hostPort": 80}]),
    "unsafe sysctl": lambda p: p["spec"]["securityContext"].update(
        sysctls=[{"name": "kernel.msgmax", "value": "1"}]
    ),
    "procMount Unmasked": lambda p: _ctx(p).update(procMount="Unmasked"),
    "AppArmor Unconfined": lambda p: _ctx(p).update(appArmorProfile={"type": "Unconfined"}),
    "AppArmor annotation": lambda p: p["metadata"].update(
        annotations={"container.apparmor.security.beta.kubernetes.io/main": "unconfined"}
    ),
    "SELinux type": lambda p: _ctx(p).update(seLinuxOptions={"type": "spc_t"}),
    "SELinux user": lambda p: p["spec"]["securityContext"].update(seLinuxOptions={"user": "root"}),
    "init container privileged": lambda p: p["spec"].update(
        initContainers=[{"name": "init", "image": "x", "securityContext": {"privileged": True}}]
    ),
    "windows hostProcess": lambda p: p["spec"]["securityContext"].update(
        windowsOptions={"hostProcess": True}
    ),
}


def test_a_compliant_pod_passes() -> None:
    assert pod_security.violations(GOOD) == []


def test_allowed_exceptions_pass() -> None:
    pod = copy.deepcopy(GOOD)
    _ctx(pod)["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    pod["spec"]["securityContext"]["sysctls"] = [
        {"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}
    ]
    pod["spec"]["volumes"].append({"name": "c", "configMap": {"name": "x"}})
    pod["spec"]["volumes"].append({"name": "e", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}})
    _ctx(pod)["seccompProfile"] = {"type": "Localhost", "localhostProfile": "p.json"}
    assert pod_security.violations(pod) == []


@pytest.mark.parametrize("name", list(BAD))
def test_each_violation_is_caught(name: str) -> None:
    pod = copy.deepcopy(GOOD)
    BAD[name](pod)
    assert pod_security.violations(pod), f"{name} went unnoticed"


def test_pod_templates_of_workloads_are_checked() -> None:
    job = {"kind": "Job", "spec": {"template": copy.deepcopy(GOOD)}}
    assert pod_security.violations(job) == []
    job["spec"]["template"]["spec"]["hostNetwork"] = True
    assert pod_security.violations(job)
