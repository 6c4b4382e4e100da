"""A transparent loopback proxy that adds the root discovery documents kubectl needs.

Why: apiextensions-apiserver is built to sit behind kube-apiserver's aggregator, which owns
the root discovery endpoints, so standalone it answers ``GET /apis`` with 404 (it sets
``EnableDiscovery = false``) and has no ``/api``. Per-group discovery (``/apis/<group>`` and
``/apis/<group>/<version>``) *is* served. kubectl, helm and kopf all start from ``/apis``,
so without it ``kubectl get widgets`` fails with "couldn't get current server API group list".

This proxy answers ``/api`` (no legacy versions) and ``/apis`` (assembled from the server's
own per-group discovery of apiextensions.k8s.io and every CRD group), and forwards every
other request untouched, streaming watch responses. It speaks plain HTTP on loopback and
upstream verifies the server's TLS certificate.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "date",
        "server",  # BaseHTTPRequestHandler.send_response writes its own
    }
)
CRD_LIST = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True  # open watches must not block shutdown

    def __init__(self, upstream: str, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream_host, self.upstream_port = parsed.hostname or "", parsed.port or 443
        self.context = context

    def connect(self, timeout: float | None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.upstream_host, self.upstream_port, context=self.context, timeout=timeout
        )


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streaming for watches
    server: _ProxyServer

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        if path == "/api":
            self._reply(
                200, {"kind": "APIVersions", "versions": [], "serverAddressByClientCIDRs": []}
            )
        elif path == "/apis":
            self._serve_group_list()
        else:
            self._forward()

    # -- root discovery ------------------------------------------------------------------------

    def _serve_group_list(self) -> None:
        """An APIGroupList built from the groups the server serves discovery for.

        Answered as plain ``application/json`` even when the client prefers aggregated
        discovery (``apidiscovery.k8s.io/v2``): client-go then falls back to per-group
        discovery, which the server does serve.
        """
        status, crds = self._upstream_json(CRD_LIST)
        if status != 200:
            self._reply(status, crds)
            return
        crd_groups = {crd["spec"]["group"] for crd in crds.get("items", [])}
        groups = []
        for group in ["apiextensions.k8s.io", *sorted(crd_groups)]:
            status, api_group = self._upstream_json(f"/apis/{group}")
            if status == 200:  # a brand-new CRD's group appears a moment after creation
                groups.append(api_group)
        self._reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    def _upstream_json(self, path: str) -> tuple[int, dict[str, Any]]:
        headers = {"Accept": "application/json"}
        if auth := self.headers.get("Authorization"):
            headers["Authorization"] = auth
        conn = self.server.connect(timeout=30)
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(data or b"{}")
        except ValueError:  # e.g. a plain-text 500: pass it on as a Status the client can show
            return resp.status, {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "code": resp.status,
                "message": data.decode(errors="replace"),
            }

    # -- forwarding ----------------------------------------------------------------------------

    def _forward(self) -> None:
        body = self._read_body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = self.server.connect(timeout=None)  # watches legitimately stay open for minutes
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            self.send_response(resp.status, resp.reason)
            for key, value in resp.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            if resp.length is not None or self.command == "HEAD":
                self._send_whole(resp.read())
            else:
                self._send_streamed(resp)
        except (OSError, http.client.HTTPException):
            # The client went away (a cancelled watch) or the server did (shutdown): nothing
            # sensible is left to send on this connection.
            self.close_connection = True
        finally:
            conn.close()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _forward

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF closing each chunk
            self.rfile.readline()  # the CRLF after the last (empty) chunk; no trailers expected
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _send_whole(self, data: bytes) -> None:
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_streamed(self, resp: http.client.HTTPResponse) -> None:
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while chunk := resp.read1(65536):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _reply(self, code: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self._send_whole(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging to keep pytest output readable."""


class DiscoveryProxy:
    """The proxy on a free loopback port, serving from a daemon thread until :meth:`close`."""

    def __init__(self, upstream: str, context: ssl.SSLContext) -> None:
        self._httpd = _ProxyServer(upstream, context)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="ftj-discovery-proxy", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
