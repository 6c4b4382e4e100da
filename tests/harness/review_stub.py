"""A stand-in for the core API server that apiextensions-apiserver delegates to.

apiextensions-apiserver is built to run *behind* kube-apiserver: it sends every bearer token
to a TokenReview and every request it cannot decide alone to a SubjectAccessReview, and its
informers watch core Services (to resolve conversion webhooks). We have no core API server,
so this in-process HTTP stub plays that part: it says yes to everyone (tests are the only
clients) and serves the few core lists the server needs as empty.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TEST_USER = "ftj-test-admin"

# Core API lists served empty (path -> list kind). apiextensions-apiserver does not report
# ready until its Service informer has synced.
EMPTY_CORE_LISTS = {"/api/v1/services": "ServiceList"}

# Watches are held open without events for at most this long (or the client's timeoutSeconds).
MAX_WATCH_SECONDS = 300.0


class _ReviewHandler(BaseHTTPRequestHandler):
    """Approves TokenReviews and SubjectAccessReviews, serves empty core lists, 404s the rest."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        review: dict[str, Any] = json.loads(self.rfile.read(length) or b"{}")
        path = urllib.parse.urlsplit(self.path).path  # the server appends ?timeout=10s
        if path.endswith("/tokenreviews"):
            review["status"] = {
                "authenticated": True,
                # system:masters is in the server's --authorization-always-allow-groups
                # default, so most requests never need a SubjectAccessReview at all.
                "user": {
                    "username": TEST_USER,
                    "uid": TEST_USER,
                    "groups": ["system:masters", "system:authenticated"],
                },
            }
            self._reply(201, review)
        elif path.endswith("/subjectaccessreviews"):
            # Reached for anonymous requests: client-go sends no bearer token over plain HTTP,
            # which is how kubectl talks to the discovery proxy.
            review["status"] = {"allowed": True, "reason": "ftj test harness allows all"}
            self._reply(201, review)
        else:
            self._not_found()

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        kind = EMPTY_CORE_LISTS.get(url.path)
        if kind is None:
            self._not_found()
            return
        query = urllib.parse.parse_qs(url.query)
        if query.get("watch", ["false"])[0] in ("true", "1"):
            self._hold_watch(kind, query)
        else:
            self._reply(
                200,
                {
                    "kind": kind,
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": "1"},
                    "items": [],
                },
            )

    def _hold_watch(self, kind: str, query: Mapping[str, list[str]]) -> None:
        """A watch with no events, closed at the client's timeout (it then simply re-watches)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if query.get("sendInitialEvents", ["false"])[0] == "true":
            # WatchList (client-go's default since 1.34): an informer counts as synced once a
            # bookmark marks the end of the (here: empty) initial events.
            bookmark = {
                "type": "BOOKMARK",
                "object": {
                    "kind": kind.removesuffix("List"),
                    "apiVersion": "v1",
                    "metadata": {
                        "resourceVersion": "1",
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                },
            }
            self.wfile.write(json.dumps(bookmark).encode() + b"\n")
        self.wfile.flush()
        timeout = float(query.get("timeoutSeconds", [str(MAX_WATCH_SECONDS)])[0])
        time.sleep(min(timeout, MAX_WATCH_SECONDS))

    def _not_found(self) -> None:
        self._reply(
            404,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "NotFound",
                "code": 404,
                "message": f"{self.path} is not served by the ftj review stub",
            },
        )

    def _reply(self, code: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging: the server calls often and pytest output stays clean."""


class ReviewStub:
    """The stub, serving on a free loopback port from a daemon thread until :meth:`close`."""

    def __init__(self) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ReviewHandler)
        self._httpd.daemon_threads = True  # held-open watches must not block shutdown
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="ftj-review-stub", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
