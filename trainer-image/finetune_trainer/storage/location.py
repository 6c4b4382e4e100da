"""Parsed storage URIs: ``s3://bucket/key``, ``file:///path``, plain paths and ``hf://org/name``.

Why a parsed value and not strings: every other module needs to know the scheme and the parts
(bucket and key, a local path, a hub repo) and to build child locations
(``<output>/adapter/...``) without string surgery that gets slashes wrong.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from finetune_trainer.errors import InvalidInput

Scheme = Literal["s3", "file", "hf"]

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.DOTALL)


def _clean_parts(parts: tuple[str, ...]) -> list[str]:
    """Split ``parts`` on slashes and drop empty segments, refusing ``..`` (no escaping a root)."""
    out: list[str] = []
    for part in parts:
        for segment in part.split("/"):
            if segment in ("", "."):
                continue
            if segment == "..":
                raise InvalidInput(
                    f"path segment '..' in {'/'.join(parts)!r} is not allowed: storage paths "
                    "must stay inside their root",
                    reason="InvalidUri",
                )
            out.append(segment)
    return out


def safe_relative(path: str) -> str:
    """``path`` as ``a/b/c``; refuses ``..`` so a hostile S3 key can't escape a folder."""
    return "/".join(_clean_parts((path,)))


@dataclass(frozen=True)
class Location:
    """One place in storage: an S3 object or prefix, a local file or folder, or a hub repo.

    ``key`` is the S3 key (no leading or trailing slash) or, for ``hf``, the path inside the
    repository. ``path`` is set for ``file`` only, always absolute.
    """

    scheme: Scheme
    bucket: str = ""
    key: str = ""
    path: Path | None = None
    repo_id: str = ""
    repo_type: Literal["model", "dataset"] = "model"

    @classmethod
    def parse(cls, uri: str, base_dir: Path | None = None) -> Location:
        """Parse ``uri``; relative paths (and ``file://relative``) resolve against ``base_dir``.

        ``base_dir`` is the manifest's folder for ``ftj run``, so a job YAML can say
        ``uri: data/train.jsonl`` next to itself; it defaults to the working directory.
        """
        uri = uri.strip()
        if not uri:
            raise InvalidInput(
                "empty storage URI: write s3://bucket/key, file:///path or a path",
                reason="InvalidUri",
            )
        match = _SCHEME_RE.match(uri)
        if match is None:
            return cls._local(uri, base_dir)
        scheme, rest = match.group(1).lower(), match.group(2)
        if scheme == "s3":
            bucket, _, key = rest.partition("/")
            if not bucket:
                raise InvalidInput(
                    f"{uri!r} names no bucket: write s3://bucket/key", reason="InvalidUri"
                )
            if ".." in key.split("/"):
                raise InvalidInput(
                    f"{uri!r}: '..' is not allowed in an S3 key", reason="InvalidUri"
                )
            return cls("s3", bucket=bucket, key="/".join(_clean_parts((key,))))
        if scheme == "file":
            return cls._local(rest, base_dir)
        if scheme == "hf":
            segments = [s for s in rest.split("/") if s]
            repo_type: Literal["model", "dataset"] = "model"
            if segments and segments[0] == "datasets":
                repo_type, segments = "dataset", segments[1:]
            if len(segments) < 2:
                raise InvalidInput(
                    f"{uri!r} is not a hub repo: write hf://org/name", reason="InvalidUri"
                )
            return cls(
                "hf",
                repo_id="/".join(segments[:2]),
                repo_type=repo_type,
                key="/".join(_clean_parts(tuple(segments[2:]))),
            )
        raise InvalidInput(
            f"{uri!r}: unsupported scheme {scheme}://; use s3://, hf://, file:// or a path",
            reason="InvalidUri",
        )

    @classmethod
    def _local(cls, raw: str, base_dir: Path | None) -> Location:
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = (base_dir if base_dir is not None else Path.cwd()) / path
        return cls("file", path=Path(os.path.normpath(path.absolute())))

    @property
    def local_path(self) -> Path:
        """The local path of a ``file`` location (a programming error for other schemes)."""
        if self.path is None:
            raise TypeError(f"{self} is not a local path")
        return self.path

    @property
    def name(self) -> str:
        """Last path segment ('' for a bucket or repo root)."""
        if self.scheme == "file":
            return self.local_path.name
        return self.key.rsplit("/", 1)[-1] if self.key else ""

    def join(self, *parts: str) -> Location:
        """A child location: ``Location.parse("s3://b/out").join("adapter", "x.bin")``."""
        extra = _clean_parts(parts)
        if self.scheme == "file":
            return Location("file", path=self.local_path.joinpath(*extra))
        key = "/".join([self.key, *extra] if self.key else extra)
        return Location(
            self.scheme, bucket=self.bucket, key=key, repo_id=self.repo_id, repo_type=self.repo_type
        )

    def relative_to(self, root: Location) -> str:
        """This location's path below ``root``, slash-separated (for MANIFEST.json entries)."""
        if self.scheme == "file":
            return self.local_path.relative_to(root.local_path).as_posix()
        prefix = root.key + "/" if root.key else ""
        if not self.key.startswith(prefix):
            raise ValueError(f"{self} is not below {root}")
        return self.key[len(prefix) :]

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"
        if self.scheme == "file":
            return f"file://{self.local_path.as_posix()}"
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        return f"hf://{prefix}{self.repo_id}" + (f"/{self.key}" if self.key else "")
