"""Cluster DNS for pods with ``hostname`` + ``subdomain``, resolved where the kubelet hands
names to a process.

Why: an Indexed Job's pods find each other as ``<job>-<index>.<subdomain>`` through a headless
Service (torch's rendezvous for multi-node training, ``MASTER_ADDR``). Processes can't be given
a resolver, so from the pod's creation until it ends, while a headless Service named like its
subdomain selects it, ``<hostname>.<subdomain>`` (also ``.<ns>``, ``.<ns>.svc``,
``.<ns>.svc.cluster.local``) in any pod's argv and env is rewritten to its ``127.0.x.y``.
``<name>:<port>`` also gets a free host port in place of ``<port>`` (the same for every pod
naming it), because these pods share one network namespace and torch's c10d TCPStore listens
on ``*:<port>`` whatever address it is given: a leftover listener on 29500 from another test
would otherwise take pod 0's rendezvous port, which in a cluster is its own.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping

from tests.harness.kube_api import ObjectStore

SERVICES = ObjectStore.resource("", "v1", "services")


class ClusterDns:
    """Names of running pods, and the host ports standing in for their ports."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        # (namespace, hostname, subdomain) -> (pod IP, pod labels) of running pods, and the
        # host port standing in for each (pod IP, port) named through it.
        self._names: dict[tuple[str, str, str], tuple[str, dict[str, str]]] = {}
        self._host_ports: dict[tuple[str, int], int] = {}

    def register(
        self, namespace: str, hostname: str, subdomain: str, ip: str, labels: Mapping[str, str]
    ) -> None:
        """Make ``<hostname>.<subdomain>`` name the pod at ``ip`` (a replacement pod takes
        the name over)."""
        self._names[(namespace, hostname, subdomain)] = (ip, dict(labels))

    def forget(self, ip: str) -> None:
        """Drop the names of the pod at ``ip`` (it ended: it left the Service's endpoints)."""
        for key, (address, _) in list(self._names.items()):
            if address == ip:
                del self._names[key]

    def resolve(self, namespace: str, value: str) -> str:
        """``value`` with the DNS names of running pods (``<hostname>.<subdomain>...``,
        optionally ``:<port>``) resolved to their IPs (and host ports); see the module docstring.

        A name resolves only through a headless Service named like the subdomain that selects
        the pod (https://kubernetes.io/docs/concepts/services-networking/dns-pod-service/
        #pod-s-hostname-and-subdomain-fields); the short forms only within the pod's namespace.
        """
        for (ns, hostname, subdomain), (ip, labels) in self._names.items():
            service = self.store.find(SERVICES, ns, subdomain)
            spec = (service or {}).get("spec") or {}
            selector = spec.get("selector") or {}
            if spec.get("clusterIP") != "None" or any(
                labels.get(k) != v for k, v in selector.items()
            ):
                continue
            fqdn = rf"\.{re.escape(ns)}(?:\.svc(?:\.cluster\.local)?)?"
            suffix = f"(?:{fqdn})?" if ns == namespace else fqdn
            name = rf"{re.escape(hostname)}\.{re.escape(subdomain)}{suffix}"

            def address(m: re.Match[str], ip: str = ip) -> str:
                return f"{ip}:{self._host_port(ip, int(m.group(1)))}" if m.group(1) else ip

            value = re.sub(rf"(?<![\w.-]){name}(?::(\d+))?(?![\w.-])", address, value)
        return value

    def _host_port(self, ip: str, port: int) -> int:
        """A free host port standing in for ``port`` of the pod at ``ip`` (stable per pair)."""
        if (ip, port) not in self._host_ports:
            with socket.socket() as probe:
                probe.bind(("", 0))  # free on every address, as the pod's own port would be
                self._host_ports[(ip, port)] = int(probe.getsockname()[1])
        return self._host_ports[(ip, port)]
