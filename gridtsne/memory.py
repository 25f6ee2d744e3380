"""Memory the process has freed, handed back to the system between the big steps."""

from __future__ import annotations

import ctypes
import ctypes.util


def release_freed_memory() -> None:
    """Hand freed memory back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    glibc keeps freed blocks for reuse, in each thread's arena too, so a step that allocates
    on other threads, or the next stage in the same process (``gridtsne all``, an update's
    assign after its reduce), would add its memory on top of the last step's high-water mark
    (docs/benchmarks.md)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()
