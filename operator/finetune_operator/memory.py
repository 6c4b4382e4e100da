"""Giving memory the operator has freed back to the system, so that RSS follows the load.

Why: a burst (many FineTuneJobs created at once, an operator restart over many unfinished
ones) allocates and frees a lot at once. glibc keeps freed blocks in its heaps for reuse and
returns them to the kernel only in rare cases, so the process's RSS would stay at the burst's
peak for good, and the container's memory limit would have to be sized for that peak.
``malloc_trim(0)`` hands every whole free page back
(https://man7.org/linux/man-pages/man3/malloc_trim.3.html); it takes milliseconds, so it runs
on the event loop every :data:`TRIM_SECONDS`. On a C library without it (e.g. musl) nothing
happens. The chart also sets ``MALLOC_ARENA_MAX=2``: fewer heaps to keep freed memory in.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_SECONDS = 30.0


def _find_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _find_trim()


def return_free_memory() -> bool:
    """Release the C heap's free pages to the kernel; False where the C library can't."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


async def return_free_memory_forever(interval: float = TRIM_SECONDS) -> None:
    """:func:`return_free_memory` every ``interval`` seconds, until cancelled."""
    while return_free_memory():
        await asyncio.sleep(interval)
