"""An emulated S3 for the benchmark: a local folder served as one bucket over real HTTP.

This is not S3 and not MinIO: it is a small stdlib server (``ThreadingHTTPServer``) that
answers the few S3 requests a model download makes, so the trainer's real boto3 client can
pull a 15 GB checkpoint over HTTP on a GPU machine that has no network and no S3 server
(moto is neither installed there nor fast enough for 15 GB). boto3 talks to it exactly as to
a real endpoint (``spec.storage.s3.endpoint``, path-style addressing): its requests are
signed, and the signature is accepted without checking.

What it answers, read-only:

* ``HEAD /bucket`` and ``HEAD /bucket/key`` (size, ETag, Last-Modified);
* ``GET /bucket?list-type=2`` (ListObjectsV2: ``prefix``, ``delimiter``, ``max-keys``,
  ``continuation-token``, ``start-after``, ``encoding-type=url``);
* ``GET /bucket/key`` with an optional ``Range: bytes=a-b`` (206 with ``Content-Range``) and
  ``If-Match`` (412 on another ETag): the body goes out with ``os.sendfile``, so the server
  costs little CPU next to the client it serves.

Missing keys answer 404 ``NoSuchKey``, other buckets 404 ``NoSuchBucket``, as S3 does. The
ETag is derived from the file's size and modification time (not its MD5: hashing 15 GB would
cost more than serving it); it changes when the file does, which is what a cache relies on.

    python -m bench.s3_dir_server /tmp/models --bucket models --port 9000
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"


def etag_of(path: Path) -> str:
    """The quoted ETag of a file: a digest of its size and modification time."""
    st = path.stat()
    return '"' + hashlib.md5(f"{st.st_size}-{st.st_mtime_ns}".encode()).hexdigest() + '"'


def _http_date(mtime: float) -> str:
    return dt.datetime.fromtimestamp(mtime, dt.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _iso_date(mtime: float) -> str:
    return dt.datetime.fromtimestamp(mtime, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: boto3 reuses its pooled connections
    server: DirectoryS3

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib's name
        pass

    # -- plumbing --------------------------------------------------------------------------

    def _split(self) -> tuple[str, str, dict[str, str]]:
        parsed = urllib.parse.urlsplit(self.path)
        bucket, _, key = parsed.path.lstrip("/").partition("/")
        query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        return urllib.parse.unquote(bucket), urllib.parse.unquote(key), query

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, resource: str) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>"
            f"<Resource>{escape(resource)}</Resource><RequestId>0</RequestId></Error>"
        ).encode()
        self._reply(status, body, {"Content-Type": "application/xml"})

    def _file(self, bucket: str, key: str) -> Path | None:
        """The file behind ``bucket/key``, or None after answering the error."""
        if bucket != self.server.bucket:
            self._error(404, "NoSuchBucket", "The specified bucket does not exist", bucket)
            return None
        path = self.server.root / key
        if (
            not key
            or key.endswith("/")
            or ".." in key.split("/")
            or not path.is_file()
            or self.server.root not in path.resolve().parents
        ):
            self._error(404, "NoSuchKey", "The specified key does not exist.", key)
            return None
        return path

    # -- verbs -----------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        bucket, key, _ = self._split()
        if not key:
            if bucket == self.server.bucket:
                self._reply(200)
            else:
                self._error(404, "NoSuchBucket", "The specified bucket does not exist", bucket)
            return
        path = self._file(bucket, key)
        if path is None:
            return
        st = path.stat()
        self.send_response(200)
        self.send_header("Content-Length", str(st.st_size))
        self.send_header("ETag", etag_of(path))
        self.send_header("Last-Modified", _http_date(st.st_mtime))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        bucket, key, query = self._split()
        if not key:
            if bucket != self.server.bucket:
                self._error(404, "NoSuchBucket", "The specified bucket does not exist", bucket)
            elif query.get("list-type") == "2":
                self._list(query)
            else:
                self._error(501, "NotImplemented", "only ListObjectsV2 is served", bucket)
            return
        path = self._file(bucket, key)
        if path is None:
            return
        self._send_object(path, key)

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        self._error(405, "MethodNotAllowed", "this emulated S3 is read-only", self.path)

    do_POST = do_PUT  # noqa: N815 - http.server's naming
    do_DELETE = do_PUT  # noqa: N815 - http.server's naming

    def _send_object(self, path: Path, key: str) -> None:
        st = path.stat()
        size, etag = st.st_size, etag_of(path)
        wanted = self.headers.get("If-Match")
        if wanted is not None and wanted.strip() not in (etag, "*", etag.strip('"')):
            self._error(412, "PreconditionFailed", "At least one precondition failed", key)
            return
        start, end, status = 0, size - 1, 200
        spec = self.headers.get("Range")
        if spec:
            match = _RANGE.match(spec.strip())
            if match is None or match.group(1) == match.group(2) == "":
                self._error(416, "InvalidRange", "The requested range is not satisfiable", key)
                return
            first, last = match.group(1), match.group(2)
            if first == "":  # bytes=-N: the last N bytes
                start, end = max(0, size - int(last)), size - 1
            else:
                start, end = int(first), min(int(last), size - 1) if last else size - 1
            if start >= size or start > end:
                self._error(416, "InvalidRange", "The requested range is not satisfiable", key)
                return
            status = 206
        length = end - start + 1
        withhold = self.server.on_get(key, start, end + 1) if self.server.on_get else 0
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", _http_date(st.st_mtime))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        self.wfile.flush()
        with path.open("rb") as f:
            offset, left = start, length - max(0, withhold or 0)
            out = self.connection.fileno()
            while left > 0:
                sent = os.sendfile(out, f.fileno(), offset, min(left, 64 * 1024 * 1024))
                if sent == 0:  # the file shrank under us: the client sees a short body
                    break
                offset += sent
                left -= sent
        with self.server.lock:
            self.server.bytes_sent += offset - start
            self.server.gets += 1
        if offset - start < length:  # a short body: the client must notice, not wait
            self.close_connection = True

    def _list(self, query: dict[str, str]) -> None:
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        max_keys = min(int(query.get("max-keys", "1000") or 1000), 1000)
        after = query.get("continuation-token") or query.get("start-after", "")
        url = query.get("encoding-type") == "url"

        def encode(text: str) -> str:
            return escape(urllib.parse.quote(text, safe="/") if url else text)

        contents: list[str] = []
        prefixes: list[str] = []
        last = ""
        truncated = False
        for relative, path in self.server.objects():
            if not relative.startswith(prefix) or relative <= after:
                continue
            if delimiter:
                cut = relative.find(delimiter, len(prefix))
                if cut >= 0:
                    common = relative[: cut + len(delimiter)]
                    if common not in prefixes and common > after:
                        if len(contents) + len(prefixes) >= max_keys:
                            truncated = True
                            break
                        prefixes.append(common)
                        last = common
                    continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            st = path.stat()
            contents.append(
                f"<Contents><Key>{encode(relative)}</Key>"
                f"<LastModified>{_iso_date(st.st_mtime)}</LastModified>"
                f"<ETag>{escape(etag_of(path))}</ETag><Size>{st.st_size}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
            last = relative
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<ListBucketResult xmlns="{_XMLNS}">',
            f"<Name>{escape(self.server.bucket)}</Name><Prefix>{encode(prefix)}</Prefix>",
            f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>",
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
        ]
        if delimiter:
            parts.append(f"<Delimiter>{encode(delimiter)}</Delimiter>")
        if url:
            parts.append("<EncodingType>url</EncodingType>")
        if truncated:
            parts.append(f"<NextContinuationToken>{escape(last)}</NextContinuationToken>")
        parts += contents
        parts += [
            f"<CommonPrefixes><Prefix>{encode(p)}</Prefix></CommonPrefixes>" for p in prefixes
        ]
        parts.append("</ListBucketResult>")
        self._reply(200, "".join(parts).encode(), {"Content-Type": "application/xml"})


class DirectoryS3(ThreadingHTTPServer):
    """``root`` served as the bucket ``bucket`` at ``http://host:port`` (see the module doc)."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, root: Path, bucket: str, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.root = root.resolve()
        self.bucket = bucket
        self.lock = threading.Lock()
        self.bytes_sent = 0
        self.gets = 0
        # Tests' fault injection: called with (key, start, end) before a body is sent; may
        # block (to hold a file back) and returns how many bytes to leave out (a short body).
        self.on_get: Callable[[str, int, int], int] | None = None

    @property
    def endpoint_url(self) -> str:
        """``http://host:port`` for ``spec.storage.s3.endpoint`` (path-style addressing)."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def objects(self) -> list[tuple[str, Path]]:
        """Every file under the root as ``(key, path)``, sorted by key (S3's listing order)."""
        found = [
            (p.relative_to(self.root).as_posix(), p) for p in self.root.rglob("*") if p.is_file()
        ]
        return sorted(found)


@contextmanager
def serving(
    root: Path, bucket: str, host: str = "127.0.0.1", port: int = 0
) -> Iterator[DirectoryS3]:
    """Serve ``root`` as ``bucket`` on a background thread for the block."""
    server = DirectoryS3(root, bucket, host, port)
    thread = threading.Thread(target=server.serve_forever, name="s3-dir-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path)
    p.add_argument("--bucket", default="models")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    a = p.parse_args()
    server = DirectoryS3(a.root, a.bucket, a.host, a.port)
    print(f"serving {a.root} as s3://{a.bucket} at {server.endpoint_url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
