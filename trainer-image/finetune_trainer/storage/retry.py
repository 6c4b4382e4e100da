"""Retries around whole-file transfers, on top of botocore's per-request retries.

botocore (``retries={"mode": "adaptive"}``) retries single requests that fail with a
throttling or 5xx answer, but a transfer can also fail *after* the answer started: a
connection reset mid-body, or a body shorter than its Content-Length that s3transfer does not
always catch. Those surface as exceptions (or as our size check failing) and only a fresh
attempt at the whole file fixes them. Errors a retry can't fix (404, 403, a bad bucket name)
fail at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from botocore.exceptions import (
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    ResponseStreamingError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "500",
        "502",
        "503",
        "504",
    }
)


class TruncatedTransfer(Exception):
    """A transfer ended with fewer (or more) bytes than the object has; retried."""


def is_transient(exc: BaseException) -> bool:
    """True when another attempt at the whole transfer may succeed."""
    if isinstance(exc, S3UploadFailedError) and exc.__context__ is not None:
        return is_transient(exc.__context__)
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in _TRANSIENT_CODES or status >= 500
    return isinstance(
        exc,
        (
            TruncatedTransfer,
            ConnectionError,
            HTTPClientError,
            IncompleteReadError,
            ResponseStreamingError,
            RetriesExceededError,
            TimeoutError,
            ConnectionResetError,
        ),
    )


def with_retries(
    action: Callable[[], T],
    *,
    describe: str,
    attempts: int,
    base_delay: float,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``action`` up to ``attempts`` times, with jittered exponential backoff between.

    ``describe`` names the transfer in the log line (a URI: never credentials).
    """
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if attempt >= attempts or not is_transient(exc):
                raise
            delay = min(30.0, base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
            log.warning(
                "retrying %s after %s (attempt %d of %d, waiting %.1fs)",
                describe,
                type(exc).__name__,
                attempt,
                attempts,
                delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises
