"""The operator's own API client and its credentials, against a local HTTP server.

What a user relies on: the operator finds the same credentials as kubectl (a pod's
ServiceAccount, a kubeconfig with relative paths, token files and exec plugins), picks up a
rotated token when the server answers 401, and reports API errors by meaning.
"""

from __future__ import annotations

import asyncio
import json
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from aiohttp import web
from finetune_operator.credentials import CredentialsError, connection_info
from finetune_operator.errors import AlreadyExists, ApiError, Conflict, NotFound
from finetune_operator.kube import KubeClient

pytestmark = pytest.mark.unit


def service_account(root: Path, token: str = "sa-token") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "token").write_text(token + "\n")
    (root / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (root / "namespace").write_text("finetune-system")
    return root


def kubeconfig(path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "dev",
        "contexts": [
            {"name": "other", "context": {"cluster": "c", "user": "nobody"}},
            {"name": "dev", "context": {"cluster": "c", "user": "u", "namespace": "ml"}},
        ],
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://10.0.0.1:6443/"}}],
        "users": [{"name": "u", "user": user}, {"name": "nobody", "user": {}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_in_a_pod_the_service_account_and_the_service_address_are_used(tmp_path: Path) -> None:
    sa = service_account(tmp_path / "sa")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    info = connection_info(env, sa)
    assert info.server == "https://[fd00::1]:443"
    assert info.token == "sa-token"
    assert info.ca_path == str(sa / "ca.crt")
    assert info.default_namespace == "finetune-system"


def test_outside_a_pod_the_kubeconfigs_current_context_is_used(tmp_path: Path) -> None:
    (tmp_path / "conf" / "token").parent.mkdir(parents=True)
    (tmp_path / "conf" / "token").write_text("from-file\n")
    config = kubeconfig(
        tmp_path / "conf" / "config",
        {"tokenFile": "token"},
        {"server": "https://10.0.0.1:6443/", "certificate-authority": "ca.pem"},
    )
    # A token mounted without KUBERNETES_SERVICE_HOST (not in a pod) is not used.
    sa = service_account(tmp_path / "sa")
    info = connection_info({"KUBECONFIG": f"{tmp_path}/missing-is-skipped:{config}"}, sa)
    assert info.server == "https://10.0.0.1:6443"
    assert info.token == "from-file"
    assert info.ca_path == str(tmp_path / "conf" / "ca.pem")  # relative to the kubeconfig
    assert info.default_namespace == "ml"


def test_an_exec_plugin_gives_the_token_and_its_expiry(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, os\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "print(json.dumps({'apiVersion': info['apiVersion'], 'kind': 'ExecCredential',"
        " 'status': {'token': 'exec-' + os.environ['REGION'],"
        " 'expirationTimestamp': '2030-01-01T00:00:00Z'}}))\n"
    )
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    exec_spec = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": sys.executable,
        "args": [str(plugin)],
        "env": [{"name": "REGION", "value": "eu"}],
    }
    config = kubeconfig(tmp_path / "config", {"exec": exec_spec})
    info = connection_info({"KUBECONFIG": str(config)}, tmp_path / "no-sa")
    assert info.token == "exec-eu"
    assert info.expiration is not None and info.expiration.year == 2030


def test_no_credentials_at_all_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="KUBERNETES_SERVICE_HOST"):
        connection_info({"HOME": str(tmp_path)}, tmp_path / "no-sa")


# --- the client against a local server ----------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(handler: Handler, check: Callable[[str], Awaitable[None]]) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        await check(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def test_a_rotated_token_is_picked_up_after_a_401() -> None:
    seen: list[tuple[str, str, str, str, Any]] = []
    tokens = iter(["old", "new"])

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        auth = request.headers["Authorization"]
        seen.append((request.method, request.path_qs, request.content_type, auth, body))
        if auth != "Bearer new":
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        return web.json_response({"status": body["status"]})

    async def check(url: str) -> None:
        client = KubeClient(lambda: kopf.ConnectionInfo(server=url, token=next(tokens)))
        patch = {"status": {"progress": {"step": 3}}}
        answer = await client.patch(
            "finetune.dev/v1alpha1", "FineTuneJob", "ml", "demo", patch, subresource="status"
        )
        await client.close()
        assert answer == patch

    asyncio.run(serve(handler, check))
    path = "/apis/finetune.dev/v1alpha1/namespaces/ml/finetunejobs/demo/status"
    assert [s[3] for s in seen] == ["Bearer old", "Bearer new"]
    assert seen[-1][:3] == (
        "PATCH",
        f"{path}?fieldManager=finetune-operator",
        "application/merge-patch+json",
    )


@pytest.mark.parametrize(
    ("code", "reason", "error"),
    [
        (404, "NotFound", NotFound),
        (409, "AlreadyExists", AlreadyExists),
        (409, "Conflict", Conflict),
        (500, "InternalError", ApiError),
    ],
)
def test_api_errors_are_told_apart(code: int, reason: str, error: type[ApiError]) -> None:
    async def handler(request: web.Request) -> web.Response:
        status = {"kind": "Status", "code": code, "reason": reason, "message": f"{reason}!"}
        return web.json_response(status, status=code)

    caught: list[BaseException] = []

    async def check(url: str) -> None:
        client = KubeClient(lambda: kopf.ConnectionInfo(server=url, token="t"))
        try:
            await client.get("batch/v1", "Job", "ml", "ftj-demo")
        except ApiError as err:
            caught.append(err)
        await client.close()

    asyncio.run(serve(handler, check))
    assert len(caught) == 1 and type(caught[0]) is error
    assert f"{reason}!" in str(caught[0])


def test_an_unreachable_server_is_an_api_error() -> None:
    async def check() -> None:
        client = KubeClient(lambda: kopf.ConnectionInfo(server="http://127.0.0.1:9", token="t"))
        with pytest.raises(ApiError, match="GET /api/v1/namespaces/ml/pods/p"):
            await client.get("v1", "Pod", "ml", "p")
        await client.close()

    asyncio.run(check())


def test_many_writes_share_a_few_keep_alive_connections() -> None:
    peers: set[Any] = set()

    async def handler(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        await asyncio.sleep(0.01)
        return web.json_response(json.loads(await request.text()))

    async def check(url: str) -> None:
        client = KubeClient(lambda: kopf.ConnectionInfo(server=url, token="t"), max_connections=4)
        await asyncio.gather(
            *(
                client.patch("batch/v1", "Job", "ml", f"j{i}", {"spec": {"suspend": True}})
                for i in range(40)
            )
        )
        await client.close()

    asyncio.run(serve(handler, check))
    assert 1 <= len(peers) <= 4


def test_in_a_pod_the_client_verifies_the_servers_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ServiceAccount's CA, token and the Service address, over real HTTPS (the e2e
    gateway's throwaway CA): a namespace list works; a server the CA did not sign is refused."""
    from tests.harness.cluster_tls import issue_server_cert
    from tests.harness.kube_api import KubeGateway

    with KubeGateway(None, tmp_path / "gateway", tls=True) as gateway:
        sa = gateway.service_account_files("finetune-system", tmp_path / "serviceaccount")
        env = {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(gateway.tls_port),
        }
        info = connection_info(env, sa)
        assert info.server == gateway.tls_url

        async def check() -> None:
            client = KubeClient(lambda: info)
            listed = await client._call("GET", "/api/v1/namespaces")
            await client.close()
            assert {n["metadata"]["name"] for n in listed["items"]} == {"default", "kube-system"}
            stranger = service_account(tmp_path / "stranger")
            (stranger / "ca.crt").write_bytes(
                issue_server_cert(tmp_path / "other", ["127.0.0.1"]).ca_file.read_bytes()
            )
            refused = KubeClient(lambda: connection_info(env, stranger))
            with pytest.raises(ApiError, match="CERTIFICATE_VERIFY_FAILED"):
                await refused.get("v1", "Pod", "ml", "p")
            await refused.close()

        asyncio.run(check())
