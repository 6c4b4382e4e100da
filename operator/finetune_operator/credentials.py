"""Where the operator's API credentials come from: the pod's ServiceAccount, else a kubeconfig.

One function, :func:`connection_info`, serves both kopf (as the operator's login handler, so
kopf's watches and patches use it: https://kopf.readthedocs.io/en/stable/authentication/) and
the operator's own :class:`~finetune_operator.kube.KubeClient`, so the two always talk to the
same server as the same user. It is called again whenever the server answers 401 or the
credentials expire, which picks up a rotated ServiceAccount token
(https://kubernetes.io/docs/concepts/security/service-accounts/#bound-service-account-tokens)
or a fresh token from a kubeconfig ``exec`` plugin.

The order is the official clients': in a pod (``KUBERNETES_SERVICE_HOST`` set and a token
mounted) the ServiceAccount; otherwise ``KUBECONFIG`` (several files: missing ones are skipped,
the first that names an entry wins) or ``~/.kube/config``, its current context. Supported in a
kubeconfig: server, CA (file or data), ``insecure-skip-tls-verify``, client certificates
(files or data), token, ``tokenFile``, username/password, ``exec`` plugins
(``client.authentication.k8s.io``) and an auth-provider's cached ``access-token``. Relative
paths are relative to the kubeconfig's folder.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import kopf
import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class CredentialsError(RuntimeError):
    """No usable credentials: the message says what was looked at."""

    reason = "NoCredentials"


def connection_info(
    env: Mapping[str, str] | None = None, service_account_dir: Path = SERVICE_ACCOUNT_DIR
) -> kopf.ConnectionInfo:
    """The server and credentials to use now (reads files; may run an ``exec`` plugin)."""
    env = os.environ if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if host and port and (service_account_dir / "token").exists():
        return in_cluster(host, port, service_account_dir)
    paths = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p.strip()]
    if not paths:
        home = Path(env.get("HOME") or Path.home()) / ".kube" / "config"
        paths = [str(home)] if home.exists() else []
    if not paths:
        raise CredentialsError(
            "no Kubernetes credentials: not in a pod (no KUBERNETES_SERVICE_HOST and "
            f"{service_account_dir}/token) and no kubeconfig (KUBECONFIG, ~/.kube/config)"
        )
    return from_kubeconfig([Path(p).expanduser() for p in paths], env)


def in_cluster(host: str, port: str, service_account_dir: Path) -> kopf.ConnectionInfo:
    """The pod's ServiceAccount: token, CA and namespace files, the API server's Service."""
    host = f"[{host}]" if ":" in host else host  # an IPv6 service IP
    ca = service_account_dir / "ca.crt"
    namespace = service_account_dir / "namespace"
    return kopf.ConnectionInfo(
        server=f"https://{host}:{port}",
        ca_path=str(ca) if ca.exists() else None,
        token=(service_account_dir / "token").read_text().strip() or None,
        default_namespace=namespace.read_text().strip() if namespace.exists() else None,
    )


def _merged(paths: list[Path]) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """Current context and named entries of several kubeconfig files (first one wins)."""
    current: str | None = None
    entries: dict[str, dict[str, Any]] = {"contexts": {}, "clusters": {}, "users": {}}
    for path in paths:
        if not path.exists():
            continue  # as kubectl: a missing file in KUBECONFIG is skipped
        data = yaml.safe_load(path.read_text()) or {}
        current = current or data.get("current-context")
        for section, kind in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
            for item in data.get(section) or ():
                value = dict(item.get(kind) or {})
                value["_dir"] = path.parent
                entries[section].setdefault(item["name"], value)
    return current, entries


def _file(entry: Mapping[str, Any], key: str) -> str | None:
    value = entry.get(key)
    return str(Path(entry["_dir"], value)) if value else None


def from_kubeconfig(paths: list[Path], env: Mapping[str, str]) -> kopf.ConnectionInfo:
    """The current context of the kubeconfig files at ``paths``."""
    current, entries = _merged(paths)
    if not current or current not in entries["contexts"]:
        raise CredentialsError(f"kubeconfig {os.pathsep.join(map(str, paths))}: no current context")
    context = entries["contexts"][current]
    cluster = entries["clusters"].get(context.get("cluster", ""), {})
    user = entries["users"].get(context.get("user", ""), {})
    if not cluster.get("server"):
        raise CredentialsError(f"kubeconfig context {current}: its cluster has no server")
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(_file(user, "tokenFile") or "").read_text().strip()
    if not token:
        token = ((user.get("auth-provider") or {}).get("config") or {}).get("access-token")
    cert, key = user.get("client-certificate-data"), user.get("client-key-data")
    expiration = None
    if user.get("exec"):
        status = _exec_credential(user["exec"], env)
        token = status.get("token") or token
        cert = status.get("clientCertificateData") or cert
        key = status.get("clientKeyData") or key
        if status.get("expirationTimestamp"):
            stamp = str(status["expirationTimestamp"]).replace("Z", "+00:00")
            expiration = datetime.fromisoformat(stamp)
    return kopf.ConnectionInfo(
        server=str(cluster["server"]).rstrip("/"),
        ca_path=_file(cluster, "certificate-authority"),
        ca_data=cluster.get("certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")) or None,
        certificate_path=None if cert else _file(user, "client-certificate"),
        certificate_data=cert,
        private_key_path=None if key else _file(user, "client-key"),
        private_key_data=key,
        username=user.get("username"),
        password=user.get("password"),
        token=token or None,
        default_namespace=context.get("namespace"),
        expiration=expiration,
    )


def _exec_credential(spec: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Run a kubeconfig ``exec`` plugin; its ExecCredential's ``status``.

    https://kubernetes.io/docs/reference/access-authn-authz/authentication/#client-go-credential-plugins
    """
    api_version = spec.get("apiVersion") or "client.authentication.k8s.io/v1"
    info = {"apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    child_env = {**env, **{e["name"]: e["value"] for e in spec.get("env") or ()}}
    child_env["KUBERNETES_EXEC_INFO"] = json.dumps(info)
    command = [str(spec["command"]), *map(str, spec.get("args") or ())]
    try:
        done = subprocess.run(
            command, env=child_env, capture_output=True, text=True, timeout=60, check=True
        )
        status = json.loads(done.stdout).get("status") or {}
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        raise CredentialsError(f"kubeconfig exec plugin {command[0]} failed: {err}") from None
    return dict(status)
