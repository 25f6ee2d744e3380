"""Memory the process has freed, handed back to the system between the big steps."""

from __future__ import annotations

import ctypes


def release_freed_memory() -> None:
    """Hand freed memory back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    glibc keeps freed blocks for reuse, in each thread's arena too, so a step that allocates
    on other threads, or the next stage in the same process (``gridtsne all``, an update's
    assign after its reduce), would add its memory on top of the last step's high-water mark
    (docs/benchmarks.md)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    """The C library the process runs on where it has ``malloc_trim`` (glibc), else None: the
    process's own symbols, so that no search for the library runs at import."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # TypeError: Windows loads no library by None
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()
