"""Memory a long-lived server process gives back, and the start-up heap its collector can skip.

glibc's malloc keeps freed memory unless told.

By default glibc raises its mmap threshold to the size of the largest block freed (up to 32 MiB),
so after one big photo, later 16-96 MB buffers (request bodies, Pillow's image blocks) come from
the heap arenas, one per thread, and stay there when freed: a replica that took six 24-megapixel
PNGs at once kept ~1 GB. A fixed threshold sends every buffer from 4 MiB up to mmap, which
unmaps it on free, and trims the heap past 4 MiB free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 4 << 20


def return_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Fix glibc's mmap and trim thresholds in this process; False where the C library is not
    glibc (musl, macOS), which has no such setting and is left alone."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


def freeze_startup_heap() -> int:
    """Move every object alive now into the collector's permanent generation (gc.freeze) and return
    how many. Called once a server's start-up is done: the modules, the catalog and the clients it
    built live as long as the process, and a full collection would otherwise walk all of them
    (~30-100 ms for a few hundred thousand objects, a request's tail latency) while finding
    nothing to free. Objects made later are collected as usual."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
