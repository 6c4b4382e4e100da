"""A model folder pulled from S3 with ranged GETs, usable while it still arrives.

Why: a 15 GB base model is most of the time between a pod starting and its first step. Two
things shorten it (issue 24):

* **Ranged GETs on many threads, straight into the file.** Every file is cut into
  ``part_size`` ranges and ``threads_per_file x parallel_files`` threads take them from one
  queue; each thread reads its range's body into its own buffer and writes it where it belongs
  with ``os.pwrite``. boto3's managed transfer (``download_file``) funnels every part through
  one writer thread, in small chunks; against the same server on a 2-CPU machine this path
  moved 1.24 GB/s where ``download_file`` moved 0.59 (bench/NOTES.md, session 15).
* **Loading while downloading.** The queue hands out the first range of every safetensors file
  first (its header: which tensor lies where), then the files in order. The loader
  (``model.load_base_model``) asks :meth:`ModelFetch.wait_bytes` for one tensor's byte range and
  copies it to the GPU as soon as it is in, while later ranges are still on the wire.

What does not change: the cache (``cache.py``) trusts a file only once all of it has arrived
(its index entry is removed before the first byte is written and recorded after the last);
every ranged GET carries ``If-Match`` with the ETag the listing gave, so a file is never pieced
together from two versions; a short body is retried (per range) and counted, and an error is
the same :class:`StorageError` / :class:`InvalidInput` with the URI and the fix
(``s3.explain``), raised by whoever waits next: the loader, or :meth:`ModelFetch.wait`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from finetune_trainer.errors import TrainerError
from finetune_trainer.storage.cache import CacheEntry
from finetune_trainer.storage.retry import TruncatedTransfer, with_retries
from finetune_trainer.storage.s3 import MiB, ObjectInfo, S3Objects, explain, uri_of

log = logging.getLogger(__name__)

_BUFFER = 4 * MiB  # per thread: each read lands here, then goes to the file with one pwrite


class DownloadCancelled(Exception):
    """The fetch was cancelled (the run failed elsewhere); nothing more is downloaded."""


@dataclass
class _File:
    relative: str
    info: ObjectInfo
    path: Path
    part_size: int
    done: list[bool] = field(default_factory=list)
    left: int = 0
    fd: int = -1

    @property
    def parts(self) -> int:
        return len(self.done)


class ModelFetch:
    """A model folder (or one file) from storage: complete at once for local and hub
    locations and for unchanged cached copies, or still arriving from S3.

    ``folder``: where the files are (and will be); ``result``: what ``Storage.fetch`` would
    have returned (the folder, or the file for a single object). While it arrives, the files
    exist at their final paths at their final sizes, but only the bytes :meth:`wait_bytes`
    has confirmed are real.
    """

    def __init__(self, folder: Path, result: Path | None = None) -> None:
        self.folder = folder
        self.result = result if result is not None else folder
        self.started_at = time.perf_counter()
        self.finished_at: float | None = self.started_at
        self._files: dict[str, _File] = {}
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._cancelled = False
        self._done = threading.Event()
        self._done.set()

    # -- what the loader asks ------------------------------------------------------------

    @property
    def arriving(self) -> bool:
        """Whether files are still being downloaded (or the download failed unseen)."""
        return not self._done.is_set() or self._error is not None

    def pending(self, relative: str) -> bool:
        """Whether ``relative`` is one of the files this fetch is downloading."""
        return relative in self._files

    @property
    def download_seconds(self) -> float | None:
        """Wall time from the start of the fetch to its last byte (None while it runs)."""
        if self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def wait_bytes(self, relative: str, start: int, end: int) -> None:
        """Block until bytes ``[start, end)`` of ``relative`` are on disk; raise the download's
        error if it failed before they were (a file this fetch is not downloading is complete
        already)."""
        file = self._files.get(relative)
        if file is None or end <= start:
            self._raise_if_failed()
            return
        first, last = start // file.part_size, (end - 1) // file.part_size
        with self._cond:
            while True:
                if all(file.done[first : last + 1]):
                    return
                if self._done.is_set():  # failed, and no range in flight can still land
                    self._raise_if_failed()
                self._cond.wait()

    def wait(self) -> Path:
        """Block until every file is in and recorded in the cache; ``result``. Raises the
        download's error (a :class:`TrainerError` naming the URI)."""
        self._done.wait()
        self._raise_if_failed()
        return self.result

    def cancel(self) -> None:
        """Stop downloading (after the ranges in flight); waiters get :class:`DownloadCancelled`.
        A fetch that has ended is left as it is."""
        if self._done.is_set():
            return
        with self._cond:
            self._cancelled = True
            if self._error is None:
                self._error = DownloadCancelled("the model download was cancelled")
            self._cond.notify_all()
        self._done.wait()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error


class RangedDownload(ModelFetch):
    """Download ``objects`` (relative path → info) of ``bucket`` into ``entry``'s folder with
    ranged GETs on ``threads`` threads, starting at once; see the module doc.

    ``release``: called once everything has ended (the cache lock is held until then, so the
    other ranks of a node wait for a complete copy, as they do for ``Storage.fetch``);
    ``keep``: every relative path of the source, for dropping cached files it no longer has.
    """

    def __init__(
        self,
        s3: S3Objects,
        bucket: str,
        prefix: str,
        objects: dict[str, ObjectInfo],
        entry: CacheEntry,
        result: Path,
        *,
        keep: set[str] | None,
        release: Callable[[], None],
    ) -> None:
        super().__init__(entry.data_dir, result)
        self._s3 = s3
        self._bucket = bucket
        self._prefix = prefix
        self._entry = entry
        self._keep = keep
        self._release = release
        transfer = s3.transfer
        part = max(transfer.part_size, MiB)
        self._attempts = transfer.file_attempts
        self._base_delay = transfer.retry_base_delay
        heads: list[tuple[_File, int]] = []
        rest: list[tuple[_File, int]] = []
        # Small files first (config, tokenizer, the safetensors index), then the weights in
        # name order (shard 1 of N first), each file's first range ahead of all the rest.
        order = sorted(objects.items(), key=lambda kv: (kv[0].endswith(".safetensors"), kv[0]))
        for relative, info in order:
            parts = max(1, -(-info.size // part))
            file = _File(relative, info, entry.data_dir / relative, part, [False] * parts, parts)
            self._files[relative] = file
            heads.append((file, 0))
            rest += [(file, i) for i in range(1, parts)]
        self._queue = heads + rest
        self._next = 0
        self.finished_at = None
        self._done.clear()
        threads = max(1, transfer.threads_per_file * transfer.parallel_files)
        self._workers_left = min(threads, len(self._queue))
        try:
            for file in self._files.values():
                entry.forget(file.relative)  # not trusted until its last byte is in
                file.path.parent.mkdir(parents=True, exist_ok=True)
                file.fd = os.open(file.path, os.O_RDWR | os.O_CREAT, 0o644)
                os.ftruncate(file.fd, file.info.size)
        except OSError as err:
            self._close_files()
            release()
            raise explain(err, "download", uri_of(bucket, prefix)) from None
        for i in range(self._workers_left):
            threading.Thread(target=self._work, name=f"ftj-ranged-{i}", daemon=True).start()

    def _take(self) -> tuple[_File, int] | None:
        with self._cond:
            if self._error is not None or self._next >= len(self._queue):
                return None
            item = self._queue[self._next]
            self._next += 1
            return item

    def _work(self) -> None:
        buffer = memoryview(bytearray(_BUFFER))
        try:
            while (item := self._take()) is not None:
                file, index = item
                uri = uri_of(self._bucket, file.info.key)
                try:
                    with_retries(
                        functools.partial(self._get_range, file, index, buffer),
                        describe=uri,
                        attempts=self._attempts,
                        base_delay=self._base_delay,
                    )
                except (ClientError, BotoCoreError, TruncatedTransfer, OSError) as err:
                    self._fail(explain(err, "download", uri))
                    return
                except TrainerError as err:
                    self._fail(err)
                    return
                except DownloadCancelled:
                    return
                self._part_done(file, index)
        except BaseException as err:  # never leave the waiters hanging
            self._fail(err)
            raise
        finally:
            self._worker_exit()

    def _get_range(self, file: _File, index: int, buffer: memoryview) -> None:
        if self._cancelled:
            raise DownloadCancelled("the model download was cancelled")
        start = index * file.part_size
        end = min(start + file.part_size, file.info.size)
        if end <= start:  # an empty file: nothing to fetch
            return
        answer = self._s3.client.get_object(
            Bucket=self._bucket,
            Key=file.info.key,
            Range=f"bytes={start}-{end - 1}",
            IfMatch=file.info.etag,
        )
        body = answer["Body"]
        try:
            if int(answer["ContentLength"]) != end - start:
                raise TruncatedTransfer(
                    f"asked for {end - start} bytes at {start}, got {answer['ContentLength']}"
                )
            position = start
            while position < end:
                count = body.readinto(buffer[: min(len(buffer), end - position)])
                if count == 0:
                    raise TruncatedTransfer(
                        f"got {position - start} of {end - start} bytes at {start}"
                    )
                view = buffer[:count]
                while view:  # pwrite may write less than asked
                    written = os.pwrite(file.fd, view, position)
                    view, position = view[written:], position + written
        finally:
            body.close()

    def _part_done(self, file: _File, index: int) -> None:
        with self._cond:
            if file.done[index]:
                return
            file.done[index] = True
            file.left -= 1
            finished = file.left == 0
            self._cond.notify_all()
        if finished and not self._cancelled:
            os.close(file.fd)
            file.fd = -1
            self._entry.record(file.relative, file.info.etag, file.info.size)
            log.info(
                "downloaded %s (%d bytes)", uri_of(self._bucket, file.info.key), file.info.size
            )

    def _fail(self, err: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = err
            self._cond.notify_all()

    def _worker_exit(self) -> None:
        with self._cond:
            self._workers_left -= 1
            last = self._workers_left == 0
        if not last:
            return
        try:
            self._close_files()
            if self._error is None and self._keep is not None:
                self._entry.forget_except(self._keep)
        finally:
            self.finished_at = time.perf_counter()
            self._release()
            self._done.set()
            with self._cond:
                self._cond.notify_all()

    def _close_files(self) -> None:
        for file in self._files.values():
            if file.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(file.fd)
                file.fd = -1


def describe_rate(fetch: ModelFetch, total_bytes: int) -> str:
    """``'15.2 GB in 9.8 s (1.55 GB/s)'`` for the log line at the end of a fetch."""
    seconds = fetch.download_seconds or 0.0
    rate = total_bytes / seconds / 1e9 if seconds > 0 else float("inf")
    return f"{total_bytes / 1e9:.1f} GB in {seconds:.1f} s ({rate:.2f} GB/s)"


__all__ = ["DownloadCancelled", "ModelFetch", "RangedDownload", "describe_rate"]
