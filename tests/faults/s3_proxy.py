"""An HTTP proxy in front of the S3 server that fails some requests and slows others.

Object storage fails in two ways a trainer must survive: an answer of 500/503 (botocore's own
retries see it) and a connection reset part-way (only a fresh attempt at the whole transfer
fixes that: storage/retry.py). The proxy does both, to a seeded share of requests, downloads
and uploads alike. A delay per request stretches checkpoint uploads out, so a kill can land
in the middle of one; :attr:`uploads_in_flight` says whether one is under way right now.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class FaultyS3Proxy:
    """``http://127.0.0.1:<port>`` forwarding to ``upstream`` (host, port).

    ``fault_rate``: the share of requests that fail, half with a 5xx answer, half with a reset
    connection (after reading the request, before any answer); ``delay``: seconds added to
    each request; ``seed``: the faults' order, printed by the suite for replays.
    """

    def __init__(self, upstream: tuple[str, int], *, seed: int) -> None:
        self.upstream = upstream
        self.fault_rate = 0.0
        self.delay = 0.0
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.faults = 0
        self._checkpoint_puts = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def uploads_in_flight(self) -> bool:
        """Whether a checkpoint file is being uploaded through the proxy right now."""
        with self.lock:
            return self._checkpoint_puts > 0

    def _draw_fault(self) -> str | None:
        with self.lock:
            self.requests += 1
            if self.rng.random() >= self.fault_rate:
                return None
            self.faults += 1
            return self.rng.choice(("5xx", "reset"))

    def start(self) -> FaultyS3Proxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                checkpoint_put = self.command == "PUT" and "/checkpoints/" in self.path
                if checkpoint_put:
                    with proxy.lock:
                        proxy._checkpoint_puts += 1
                try:
                    if proxy.delay:
                        threading.Event().wait(proxy.delay)
                    fault = proxy._draw_fault()
                    if fault == "reset":
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                        self.close_connection = True
                        self.connection.close()
                        return
                    if fault == "5xx":
                        payload = (
                            b"<?xml version='1.0'?><Error><Code>ServiceUnavailable</Code>"
                            b"<Message>injected</Message></Error>"
                        )
                        self.send_response(503)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                    self._relay(body)
                finally:
                    if checkpoint_put:
                        with proxy.lock:
                            proxy._checkpoint_puts -= 1

            def _relay(self, body: bytes) -> None:
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                payload = answer.read()
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                # HEAD answers carry the object's length, not the (empty) body's.
                length = answer.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
