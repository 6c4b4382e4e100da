"""The S3 edge: one boto3 client, parallel multipart transfers, errors a person can act on.

Credentials are never handled here: boto3's own chain finds them (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` from the pod's Secret, or the service account's web identity), so
they can't end up in a message or a log line. Errors are re-raised ``from None`` with only the
URI, the S3 error code and the fix.

boto3 clients are thread-safe (sessions are not), so one client is made up front and shared by
every thread of every transfer; its connection pool is sized for all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from finetune_api.spec import S3Storage

from finetune_trainer.errors import InvalidInput, StorageError, TrainerError
from finetune_trainer.storage.entries import FileEntry, hash_file, hash_stream
from finetune_trainer.storage.retry import TruncatedTransfer, is_transient, with_retries

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def _is_missing(err: ClientError) -> bool:
    """Whether S3 answered "no such object" (HEAD gives a bare 404, GET a NoSuchKey)."""
    return str(err.response.get("Error", {}).get("Code")) in _MISSING_CODES


def _unless_missing(request: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """S3's answer to ``request``, or None when it says there is no such object."""
    try:
        return request()
    except ClientError as err:
        if _is_missing(err):
            return None
        raise


_DENIED_CODES = frozenset({"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})


@dataclass(frozen=True)
class TransferSettings:
    """How hard transfers push: threads per file, files in parallel, part size, retries."""

    threads_per_file: int = 8
    parallel_files: int = 4
    part_size: int = 16 * MiB
    multipart_threshold: int = 16 * MiB
    request_attempts: int = 8
    file_attempts: int = 4
    retry_base_delay: float = 1.0


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD or LIST tells about one object."""

    key: str
    size: int
    etag: str


def uri_of(bucket: str, key: str) -> str:
    """``s3://bucket/key`` for messages."""
    return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"


def explain(err: BaseException, action: str, uri: str) -> TrainerError:
    """A StorageError (or InvalidInput) naming ``uri`` and the fix; never the credentials."""
    if isinstance(err, TrainerError):
        return err
    context = err.__context__ if err.__context__ is not None else err
    if isinstance(context, ClientError):
        error = context.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        if code == "NoSuchBucket":
            return InvalidInput(
                f"cannot {action} {uri}: the bucket does not exist. Create it or fix the URI "
                "(and spec.storage.s3.endpoint if you use an S3-compatible store).",
                reason="BucketNotFound",
            )
        if code in _DENIED_CODES:
            return StorageError(
                f"cannot {action} {uri}: access denied ({code}). Check that the keys in "
                "spec.storage.s3.credentialsSecret (or the pod's IAM role) may access it.",
                reason="StorageAccessDenied",
            )
        return StorageError(f"cannot {action} {uri}: {code}: {error.get('Message', '')}".strip())
    if isinstance(err, NoCredentialsError):
        return StorageError(
            f"cannot {action} {uri}: no S3 credentials found. Set "
            "spec.storage.s3.credentialsSecret, or spec.pod.serviceAccountName to a service "
            "account with a web identity (IAM role), or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "for ftj run.",
            reason="StorageCredentialsMissing",
        )
    if isinstance(err, TruncatedTransfer):
        return StorageError(f"cannot {action} {uri}: {err} (after retries)")
    return StorageError(
        f"cannot {action} {uri}: {type(err).__name__}: {err}. Check spec.storage.s3.endpoint "
        "and the network; the transfer was retried."
    )


class S3Objects:
    """Object operations on one S3 endpoint, with retries and error translation."""

    def __init__(self, settings: S3Storage | None, transfer: TransferSettings) -> None:
        self.transfer = transfer
        pool = transfer.threads_per_file * transfer.parallel_files + 4
        config = Config(
            region_name=settings.region if settings else None,
            retries={"mode": "adaptive", "max_attempts": transfer.request_attempts},
            s3={"addressing_style": "path" if settings and settings.path_style else "auto"},
            max_pool_connections=pool,
            # S3-compatible stores (older MinIO, Ceph, R2) reject the CRC trailers boto3 adds
            # by default since 1.36; integrity comes from our sha256 entries instead.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=settings.endpoint if settings else None, config=config
        )
        self._transfer_config = TransferConfig(
            multipart_threshold=transfer.multipart_threshold,
            multipart_chunksize=transfer.part_size,
            max_concurrency=transfer.threads_per_file,
            use_threads=True,
        )

    def _retry(self, action: Any, describe: str) -> Any:
        return with_retries(
            action,
            describe=describe,
            attempts=self.transfer.file_attempts,
            base_delay=self.transfer.retry_base_delay,
        )

    def _call(self, action: Any, verb: str, uri: str) -> Any:
        try:
            return self._retry(action, uri)
        except (ClientError, BotoCoreError, TruncatedTransfer, OSError) as err:
            raise explain(err, verb, uri) from None

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        """Size and ETag of an object; None when there is none at ``key``."""
        uri = uri_of(bucket, key)

        def action() -> ObjectInfo | None:
            answer = _unless_missing(lambda: self.client.head_object(Bucket=bucket, Key=key))
            if answer is None:
                return None
            return ObjectInfo(key, int(answer["ContentLength"]), str(answer["ETag"]))

        result: ObjectInfo | None = self._call(action, "read", uri)
        return result

    def list_objects(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (folder markers ending in ``/`` left out)."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    if not item["Key"].endswith("/"):
                        yield ObjectInfo(item["Key"], int(item["Size"]), str(item["ETag"]))
        except (ClientError, BotoCoreError) as err:
            raise explain(err, "list", uri_of(bucket, prefix)) from None

    def list_prefixes(self, bucket: str, prefix: str) -> list[str]:
        """Names of the immediate sub-folders under ``prefix`` (which ends in ``/`` or is '')."""
        names: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    names.append(common["Prefix"][len(prefix) :].rstrip("/"))
        except (ClientError, BotoCoreError) as err:
            raise explain(err, "list", uri_of(bucket, prefix)) from None
        return sorted(names)

    def download(self, info: ObjectInfo, bucket: str, dest: Path) -> None:
        """Download one object to ``dest`` (boto3 writes a temp file and renames it).

        The size is checked afterwards: a short body is retried as a whole. (s3transfer
        itself pins the ETag across the ranged GETs of a multipart download, so parts of two
        versions are never mixed; ``IfMatch`` is not an allowed ExtraArgs key.)
        """
        dest.parent.mkdir(parents=True, exist_ok=True)
        uri = uri_of(bucket, info.key)

        def action() -> None:
            self.client.download_file(
                bucket,
                info.key,
                str(dest),
                Config=self._transfer_config,
            )
            size = dest.stat().st_size
            if size != info.size:
                raise TruncatedTransfer(f"got {size} of {info.size} bytes")

        self._call(action, "download", uri)
        log.info("downloaded %s (%d bytes)", uri, info.size)

    def upload(self, src: Path, bucket: str, key: str, relative: str) -> FileEntry:
        """Upload one file (multipart above the threshold) and return its entry."""
        entry = hash_file(src, relative)
        uri = uri_of(bucket, key)

        def action() -> None:
            self.client.upload_file(
                str(src),
                bucket,
                key,
                ExtraArgs={"Metadata": {"sha256": entry.sha256}},
                Config=self._transfer_config,
            )

        self._call(action, "upload to", uri)
        log.info("uploaded %s (%d bytes)", uri, entry.size)
        return entry

    def get_bytes(self, bucket: str, key: str) -> bytes | None:
        """A small object's body; None when absent."""

        def action() -> bytes | None:
            answer = _unless_missing(lambda: self.client.get_object(Bucket=bucket, Key=key))
            if answer is None:
                return None
            body: bytes = answer["Body"].read()
            if len(body) != int(answer["ContentLength"]):
                raise TruncatedTransfer(f"got {len(body)} of {answer['ContentLength']} bytes")
            return body

        result: bytes | None = self._call(action, "read", uri_of(bucket, key))
        return result

    def put_bytes(
        self, bucket: str, key: str, body: bytes, *, only_if_absent: bool = False
    ) -> bool:
        """Write a small object. With ``only_if_absent``, False means someone else wrote it first.

        ``If-None-Match: *`` is S3's atomic create (AWS since 2024, MinIO, moto), which is what
        makes claiming an output safe against a job starting at the same moment.
        """
        extra: dict[str, str] = {"IfNoneMatch": "*"} if only_if_absent else {}

        def action() -> bool:
            try:
                self.client.put_object(
                    Bucket=bucket, Key=key, Body=body, ContentType="application/json", **extra
                )
            except ClientError as err:
                if only_if_absent and str(err.response.get("Error", {}).get("Code")) in (
                    "PreconditionFailed",
                    "412",
                    "ConditionalRequestConflict",
                ):
                    return False
                raise
            return True

        result: bool = self._call(action, "write", uri_of(bucket, key))
        return result

    def digest(self, bucket: str, key: str, relative: str) -> FileEntry | None:
        """Size and sha256 of an object's bytes as stored (streamed, not saved)."""

        def action() -> FileEntry | None:
            answer = _unless_missing(lambda: self.client.get_object(Bucket=bucket, Key=key))
            if answer is None:
                return None
            size, sha = hash_stream(answer["Body"])
            if size != int(answer["ContentLength"]):
                raise TruncatedTransfer(f"got {size} of {answer['ContentLength']} bytes")
            return FileEntry(relative, size, sha)

        result: FileEntry | None = self._call(action, "read", uri_of(bucket, key))
        return result

    def delete(self, bucket: str, keys: list[str]) -> None:
        """Delete objects, 1000 per request (S3's limit)."""
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]

            def action(batch: list[dict[str, str]] = batch) -> None:
                self.client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})

            self._call(action, "delete under", uri_of(bucket, keys[start]))


__all__ = ["S3Objects", "TransferSettings", "ObjectInfo", "explain", "is_transient"]
