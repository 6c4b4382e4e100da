"""``Storage``: one front for every URI scheme, so the pipeline never branches on s3/file/hf.

Built once per run from ``spec.storage``; the S3 client inside is made on first use (a local
run without S3 never imports credentials or touches the network) and then shared by all
threads.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from finetune_api.spec import S3Storage
from finetune_api.spec import Storage as StorageSpec

from finetune_trainer import switches
from finetune_trainer.errors import InvalidInput, StorageError
from finetune_trainer.storage import hub, local
from finetune_trainer.storage.cache import CacheEntry
from finetune_trainer.storage.entries import FileEntry, hash_file
from finetune_trainer.storage.location import Location, safe_relative
from finetune_trainer.storage.model_files import (
    hub_patterns,
    is_tokenizer_file,
    is_weights_file,
)
from finetune_trainer.storage.s3 import ObjectInfo, S3Objects, TransferSettings
from finetune_trainer.storage.streaming import ModelFetch, RangedDownload

T = TypeVar("T")
R = TypeVar("R")


def _not_found(uri: str) -> InvalidInput:
    return InvalidInput(
        f"nothing found at {uri}: check the URI (and, for s3://, the bucket, the prefix and "
        "spec.storage.s3.endpoint).",
        reason="SourceNotFound",
    )


class Storage:
    """Reads and writes s3://, file:// / plain paths and (read-only) hf:// locations."""

    def __init__(
        self, s3: S3Storage | None = None, *, transfer: TransferSettings | None = None
    ) -> None:
        self.s3_settings = s3
        self.transfer = transfer or TransferSettings()
        self._s3: S3Objects | None = None
        self._s3_lock = threading.Lock()

    @classmethod
    def from_spec(cls, storage: StorageSpec | S3Storage | None) -> Storage:
        """The storage of a job: ``spec.storage`` (its ``s3`` part) + credentials from the env."""
        s3 = storage.s3 if isinstance(storage, StorageSpec) else storage
        return cls(s3)

    @property
    def s3(self) -> S3Objects:
        """The S3 edge, created once, on first use."""
        with self._s3_lock:
            if self._s3 is None:
                self._s3 = S3Objects(self.s3_settings, self.transfer)
            return self._s3

    @property
    def client(self) -> Any:
        """The shared boto3 S3 client (for event hooks and tests)."""
        return self.s3.client

    # -- helpers -------------------------------------------------------------------------

    def _parallel(self, work: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """Run ``work`` over ``items`` on ``parallel_files`` threads; the first error wins."""
        items = list(items)
        if len(items) <= 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(self.transfer.parallel_files, "ftj-transfer") as pool:
            return list(pool.map(work, items))

    @staticmethod
    def _writable(location: Location, uri: str) -> None:
        if location.scheme == "hf":
            raise InvalidInput(
                f"{uri}: hf:// locations are read-only; write outputs to s3:// or a path.",
                reason="InvalidUri",
            )

    # -- reading -------------------------------------------------------------------------

    def fetch(self, uri: str, cache_dir: Path, *, revision: str | None = None) -> Path:
        """A local path holding ``uri`` (a file, or a folder for a prefix).

        Local locations are returned in place. S3 objects go through the cache in
        ``cache_dir``: unchanged objects (same ETag) are not downloaded again. ``revision``
        applies to hf:// only.
        """
        location = Location.parse(uri)
        if location.scheme == "file":
            if not location.local_path.exists():
                raise _not_found(uri)
            return location.local_path
        if location.scheme == "hf":
            return hub.snapshot(location, cache_dir, revision)
        return self._fetch_s3(location, cache_dir)

    def fetch_tokenizer(self, uri: str, cache_dir: Path, *, revision: str | None = None) -> Path:
        """A local folder holding the tokenizer's files of the model folder at ``uri``.

        Only the small files ``AutoTokenizer`` reads (:mod:`.model_files`), so the data can be
        checked before the weights are fetched. They land where :meth:`fetch` puts the whole
        model (the same cache entry, or hub snapshot), so they are not downloaded twice;
        local folders are used in place.
        """
        location = Location.parse(uri)
        if location.scheme == "file":
            return self.fetch(uri, cache_dir)
        if location.scheme == "hf":
            return hub.snapshot(
                location, cache_dir, revision, allow_patterns=hub_patterns(location.key)
            )
        return self._fetch_s3(location, cache_dir, only=is_tokenizer_file)

    def fetch_model(self, uri: str, cache_dir: Path, *, revision: str | None = None) -> ModelFetch:
        """The base model's folder at ``uri``, possibly still arriving (:mod:`.streaming`).

        From S3 (unless ``FTJ_RANGED_DOWNLOAD=0``) the files that are not in the cache yet are
        downloaded with ranged GETs in the background: the call returns once the source is
        listed and its small files (config, tokenizer, the weights' index) are in, and the
        loader reads each tensor as soon as its bytes are in. Everything else
        (local folders, the hub, ``FTJ_RANGED_DOWNLOAD=0``) is fetched as :meth:`fetch` does and
        returned complete. Whoever uses the folder beyond the weights' loader calls
        :meth:`ModelFetch.wait` first (``run_job`` does, right after loading).
        """
        location = Location.parse(uri)
        if location.scheme != "s3" or not switches.active().ranged_download:
            started = time.perf_counter()
            path = self.fetch(uri, cache_dir, revision=revision)
            fetch = ModelFetch(path.parent if path.is_file() else path, path)
            fetch.started_at = started
            return fetch
        s3 = self.s3
        entry = CacheEntry(cache_dir, str(location))
        lock = contextlib.ExitStack()
        lock.enter_context(entry.locked())
        try:
            objects, result = self._source_objects(location, entry)
            stale = {r: i for r, i in objects.items() if not entry.is_fresh(r, i.etag, i.size)}
            if not stale:
                entry.forget_except(set(objects))
                lock.close()
                return ModelFetch(entry.data_dir, result)
            download = RangedDownload(
                s3,
                location.bucket,
                location.key,
                stale,
                entry,
                result,
                keep=set(objects),
                release=lock.close,
            )
        except BaseException:
            lock.close()
            raise
        try:  # the small files (config, tokenizer, index) first: only weights arrive later
            for relative, info in stale.items():
                if not is_weights_file(relative):
                    download.wait_bytes(relative, 0, info.size)
        except BaseException:
            download.cancel()
            raise
        return download

    def _source_objects(
        self, location: Location, entry: CacheEntry
    ) -> tuple[dict[str, ObjectInfo], Path]:
        """The objects at ``location`` (one object, or every one under the prefix) by path
        relative to it, and the local path ``fetch`` returns for it (the file, or the folder).
        """
        s3 = self.s3
        single = s3.head(location.bucket, location.key) if location.key else None
        if single is not None:
            return {location.name: single}, entry.data_dir / location.name
        prefix = f"{location.key}/" if location.key else ""
        objects = {
            info.key[len(prefix) :]: info for info in s3.list_objects(location.bucket, prefix)
        }
        if not objects:
            raise _not_found(str(location))
        for relative in objects:
            safe_relative(relative)  # refuses keys with '..' segments
        return objects, entry.data_dir

    def _fetch_s3(
        self, location: Location, cache_dir: Path, only: Callable[[str], bool] | None = None
    ) -> Path:
        """Fetch an object or a prefix through the cache; ``only``: just the files of a prefix
        it accepts (the rest of the cache entry is left as it is)."""
        s3 = self.s3
        entry = CacheEntry(cache_dir, str(location))
        with entry.locked():
            objects, result = self._source_objects(location, entry)
            wanted = {r: i for r, i in objects.items() if only is None or only(r)}
            stale = [(r, i) for r, i in wanted.items() if not entry.is_fresh(r, i.etag, i.size)]

            def download(item: tuple[str, ObjectInfo]) -> None:
                relative, info = item
                s3.download(info, location.bucket, entry.data_dir / relative)
                entry.record(relative, info.etag, info.size)

            self._parallel(download, stale)
            if only is None:
                entry.forget_except(set(objects))
        return result

    def download_dir(self, uri: str, local_dir: Path) -> Path:
        """Copy everything under ``uri`` into ``local_dir`` (no cache); returns ``local_dir``."""
        location = Location.parse(uri)
        local_dir.mkdir(parents=True, exist_ok=True)
        if location.scheme == "hf":
            return hub.snapshot(location, local_dir, None)
        if location.scheme == "file":
            files = local.files_under(location.local_path)
            if not files:
                raise _not_found(uri)
            self._parallel(lambda f: local.copy_file(f[0], local_dir / f[1], f[1]), files)
            return local_dir
        prefix = f"{location.key}/" if location.key else ""
        objects = list(self.s3.list_objects(location.bucket, prefix))
        if not objects:
            raise _not_found(uri)
        self._parallel(
            lambda info: self.s3.download(
                info, location.bucket, local_dir / safe_relative(info.key[len(prefix) :])
            ),
            objects,
        )
        return local_dir

    def read_json(self, uri: str) -> dict[str, Any] | None:
        """A small JSON document; None when absent."""
        location = Location.parse(uri)
        self._writable(location, uri)
        if location.scheme == "file":
            data = local.read_json(location.local_path)
        else:
            body = self.s3.get_bytes(location.bucket, location.key)
            if body is None:
                return None
            try:
                data = json.loads(body)
            except ValueError as err:
                raise StorageError(
                    f"{uri} is not valid JSON ({err}); remove or fix it.",
                    reason="CorruptMetadata",
                ) from None
        if data is not None and not isinstance(data, dict):
            raise StorageError(
                f"{uri} is not a JSON object; remove or fix it.", reason="CorruptMetadata"
            )
        return data

    def exists(self, uri: str) -> bool:
        """True for an existing file/object, or a folder/prefix with something in it."""
        location = Location.parse(uri)
        self._writable(location, uri)
        if location.scheme == "file":
            return location.local_path.exists()
        if location.key and self.s3.head(location.bucket, location.key) is not None:
            return True
        prefix = f"{location.key}/" if location.key else ""
        return next(iter(self.s3.list_objects(location.bucket, prefix)), None) is not None

    def list_prefixes(self, uri: str) -> list[str]:
        """Names (not URIs) of the immediate sub-folders of ``uri``, sorted."""
        location = Location.parse(uri)
        self._writable(location, uri)
        if location.scheme == "file":
            root = location.local_path
            return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        return self.s3.list_prefixes(location.bucket, f"{location.key}/" if location.key else "")

    def list_files(self, uri: str) -> list[str]:
        """Relative paths of every file below ``uri``, sorted."""
        location = Location.parse(uri)
        self._writable(location, uri)
        if location.scheme == "file":
            root = location.local_path
            return [rel for _, rel in local.files_under(root)] if root.is_dir() else []
        prefix = f"{location.key}/" if location.key else ""
        return sorted(i.key[len(prefix) :] for i in self.s3.list_objects(location.bucket, prefix))

    def digest(self, uri: str, relative: str = "") -> FileEntry | None:
        """Size and sha256 of the stored bytes of one file (re-read in full); None if absent."""
        location = Location.parse(uri)
        self._writable(location, uri)
        if location.scheme == "file":
            path = location.local_path
            return hash_file(path, relative) if path.is_file() else None
        return self.s3.digest(location.bucket, location.key, relative)

    # -- writing -------------------------------------------------------------------------

    def upload_file(self, local_path: Path, uri: str) -> FileEntry:
        """Put one file at ``uri``; its entry's ``path`` is the file's name."""
        location = Location.parse(uri)
        self._writable(location, uri)
        if not local_path.is_file():
            raise StorageError(
                f"cannot upload {local_path} to {uri}: no such file", reason="ArtifactMissing"
            )
        if location.scheme == "file":
            return local.copy_file(local_path, location.local_path, local_path.name)
        return self.s3.upload(local_path, location.bucket, location.key, local_path.name)

    def upload_dir(self, local_dir: Path, uri: str) -> list[FileEntry]:
        """Put every file below ``local_dir`` under ``uri``, in parallel; entries sorted by path."""
        location = Location.parse(uri)
        self._writable(location, uri)
        files = local.files_under(local_dir) if local_dir.is_dir() else []
        if not files:
            raise StorageError(
                f"cannot upload {local_dir} to {uri}: no files in it", reason="ArtifactMissing"
            )

        def upload(item: tuple[Path, str]) -> FileEntry:
            path, relative = item
            target = location.join(relative)
            if target.scheme == "file":
                return local.copy_file(path, target.local_path, relative)
            return self.s3.upload(path, target.bucket, target.key, relative)

        return sorted(self._parallel(upload, files), key=lambda e: e.path)

    def write_json(self, uri: str, data: dict[str, Any]) -> None:
        """Write a small JSON document (atomically: whole or not at all)."""
        self.create_json(uri, data, only_if_absent=False)

    def create_json(self, uri: str, data: dict[str, Any], *, only_if_absent: bool = True) -> bool:
        """Write JSON only if nothing is at ``uri`` yet (atomic create); False if something was."""
        location = Location.parse(uri)
        self._writable(location, uri)
        body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        if location.scheme == "file":
            return local.write_bytes(location.local_path, body, only_if_absent=only_if_absent)
        return self.s3.put_bytes(location.bucket, location.key, body, only_if_absent=only_if_absent)

    def delete(self, uri: str, *, recursive: bool = False) -> None:
        """Remove a file/object, or with ``recursive`` everything under a folder/prefix."""
        location = Location.parse(uri)
        self._writable(location, uri)
        if location.scheme == "file":
            path = location.local_path
            if recursive and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            return
        keys = [location.key] if location.key and not recursive else []
        if recursive:
            prefix = f"{location.key}/" if location.key else ""
            keys = [i.key for i in self.s3.list_objects(location.bucket, prefix)]
        if keys:
            self.s3.delete(location.bucket, keys)
