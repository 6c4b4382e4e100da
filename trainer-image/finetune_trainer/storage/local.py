"""The local edge: ``file://`` and plain paths (a laptop, or a PVC mounted into the pod).

Reads are in place (no copy). Writes are atomic per file: the bytes go to a temporary name in
the destination folder and are renamed over the final name, so a reader (or a pod killed
mid-copy) never sees half a file under the real name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from finetune_trainer.errors import StorageError
from finetune_trainer.storage.entries import CHUNK, FileEntry, hash_file


def _temp_beside(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")


def copy_file(src: Path, dest: Path, relative: str) -> FileEntry:
    """Copy ``src`` to ``dest`` atomically, hashing on the way; in place when they're the same."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() and src.resolve() == dest.resolve():
            return hash_file(src, relative)
        tmp = _temp_beside(dest)
        digest, size = hashlib.sha256(), 0
        try:
            with src.open("rb") as reader, tmp.open("wb") as writer:
                while chunk := reader.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    writer.write(chunk)
                writer.flush()
                os.fsync(writer.fileno())
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    except OSError as err:
        raise StorageError(
            f"cannot copy {src} to file://{dest}: {err.strerror or err}. Check that the folder "
            "is writable (a mounted volume, not the read-only root filesystem) and has space."
        ) from None
    return FileEntry(relative, size, digest.hexdigest())


def write_bytes(dest: Path, body: bytes, *, only_if_absent: bool = False) -> bool:
    """Write a small file atomically; with ``only_if_absent`` an existing file wins (False)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if only_if_absent:
            try:
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as writer:
                writer.write(body)
            return True
        tmp = _temp_beside(dest)
        tmp.write_bytes(body)
        os.replace(tmp, dest)
    except OSError as err:
        raise StorageError(
            f"cannot write file://{dest}: {err.strerror or err}. Check that the folder is "
            "writable and has space."
        ) from None
    return True


def read_json(path: Path) -> Any:
    """Parsed JSON of ``path``; None when the file does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise StorageError(
            f"file://{path} is not valid JSON ({err}); remove or fix it.", reason="CorruptMetadata"
        ) from None


def files_under(root: Path) -> list[tuple[Path, str]]:
    """Every regular file below ``root`` with its slash-separated relative path, sorted."""
    return sorted(
        ((p, p.relative_to(root).as_posix()) for p in root.rglob("*") if p.is_file()),
        key=lambda item: item[1],
    )
