"""Handing the memory of large requests back to the system (glibc's allocator; elsewhere these do nothing).

glibc keeps freed memory for reuse, and after freeing one large block it raises its own mmap threshold to
that block's size, so the next bodies of that size come from the heap, fragment it, and stay: a worker that
had refused a few 15 MB bodies held ~500 MB for good. A fixed threshold keeps every large buffer in its own
mapping, returned whole when freed, and `trim` returns what the heap still holds after a large request."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from functools import cache

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers
M_ARENA_MAX = -8
# Bodies of a few MB (15 MB refused ones) get mappings of their own; below, the heap serves (an mmap per
# 350 KB buffer cost a 64-row JSON request 15%).
MMAP_THRESHOLD = 4 * 1024 * 1024
# One arena per core is glibc's default for threads; the batchers and anyio's thread pool would each get
# one and keep what they freed.
ARENA_MAX = 2

_trimming = threading.Lock()


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def configure() -> None:
    """Sets the allocator up for bodies of many sizes; call once per process, before its threads start."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_ARENA_MAX, ARENA_MAX)


def trim() -> None:
    """Returns the free memory at the top of the heap and in free pages to the system (ctypes releases the
    GIL for the call; one trim at a time, a concurrent one would find nothing more)."""
    libc = _libc()
    if libc is not None and _trimming.acquire(blocking=False):
        try:
            libc.malloc_trim(0)
        finally:
            _trimming.release()
