"""What a published file is: path, size and sha256 (one MANIFEST.json entry), and hashing.

sha256 and not the S3 ETag: ETags of multipart uploads depend on the part size and are not
content hashes, so they can't prove that two copies are the same bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class FileEntry:
    """One file: ``path`` relative to the folder (or output root) it belongs to."""

    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, str | int]:
        """The MANIFEST.json form."""
        return asdict(self)

    def under(self, prefix: str) -> FileEntry:
        """The same file with ``prefix/`` put in front of its path."""
        return FileEntry(f"{prefix}/{self.path}" if prefix else self.path, self.size, self.sha256)


def hash_stream(stream: BinaryIO) -> tuple[int, str]:
    """Size and sha256 hex digest of everything left in ``stream``."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def hash_file(path: Path, relative: str) -> FileEntry:
    """A FileEntry for a local file."""
    with path.open("rb") as stream:
        size, sha = hash_stream(stream)
    return FileEntry(relative, size, sha)
