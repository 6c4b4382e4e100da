"""The download cache: one folder per source URI, each object validated by its S3 ETag.

Why: a preempted pod restarts on the same node (or with the model-cache PVC) and must not pull
a 15 GB base model again; and when the source object changes, the stale copy must not be
used. Each URI gets ``<cache>/<sha256(uri)>/`` holding ``data/`` (the files) and
``index.json`` (``{relative path: {etag, size}}``). An entry is trusted only when the index,
the file's size and the current ETag agree, so a download cut short by a kill is redone.

A file lock serialises fetches of one URI across processes (the ranks of one node share the
cache), and the index is rewritten after each file so a restart keeps finished files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class CacheEntry:
    """The cached copy of one URI."""

    def __init__(self, root: Path, uri: str) -> None:
        self.folder = root / hashlib.sha256(uri.encode()).hexdigest()[:32]
        self.data_dir = self.folder / "data"
        self._index_path = self.folder / "index.json"
        self._uri = uri
        self._mutex = threading.Lock()
        self._index: dict[str, dict[str, Any]] = {}

    @contextlib.contextmanager
    def locked(self) -> Iterator[CacheEntry]:
        """Hold the entry exclusively (across processes) and load its index."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.folder / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._index = self._load()
                yield self
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._index_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("uri") != self._uri:
            return {}
        objects = data.get("objects")
        return objects if isinstance(objects, dict) else {}

    def is_fresh(self, relative: str, etag: str, size: int) -> bool:
        """The cached file matches the object's current ETag and size."""
        record = self._index.get(relative)
        if record is None or record.get("etag") != etag or record.get("size") != size:
            return False
        path = self.data_dir / relative
        return path.is_file() and path.stat().st_size == size

    def record(self, relative: str, etag: str, size: int) -> None:
        """Remember a finished download (thread-safe; persisted at once)."""
        with self._mutex:
            self._index[relative] = {"etag": etag, "size": size}
            self._save()

    def forget(self, relative: str) -> None:
        """Stop trusting the cached copy of ``relative`` (about to be overwritten in place)."""
        with self._mutex:
            if self._index.pop(relative, None) is not None:
                self._save()

    def forget_except(self, keep: set[str]) -> None:
        """Delete cached files whose objects are gone from the source."""
        with self._mutex:
            for relative in [r for r in self._index if r not in keep]:
                del self._index[relative]
                with contextlib.suppress(FileNotFoundError):
                    (self.data_dir / relative).unlink()
            self._save()

    def _save(self) -> None:
        tmp = self._index_path.with_name(f".index.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"uri": self._uri, "objects": self._index}, indent=1))
        os.replace(tmp, self._index_path)
