"""glibc's allocator in a process that runs the models: keep freed memory for the next batch.

A forward pass allocates and frees the same activation buffers on every batch, many of them
megabytes. glibc serves an allocation over its mmap threshold with a fresh ``mmap`` (the threshold
starts at 128 KiB and follows the largest block freed, up to 32 MiB), and gives the heap's free
top back to the OS once it exceeds the trim threshold (twice that). So each batch faults its
activations in again, a page at a time, and the kernel zeroes every page: in a 1,200-image Ray
sweep on 2 cores a detector actor took 3.3-5.7 million minor page faults and 8-13 of its 48-54 CPU
seconds in the kernel (docs/bench/throughput.md).

``keep_freed(mib)`` sets the mmap threshold to glibc's ceiling (32 MiB on 64-bit), pads the heap
by 256 MiB when it grows (so larger blocks fit in it too) and trims only above ``mib`` MiB, so freed
activations stay in the heap for the next batch: the same actors took 0.25-2.0 million faults and
2.5-7.0 system CPU seconds, and the bench's peak memory fell rather than grew (the buffers are
needed at the peak anyway; what a process keeps between batches is what it used).

The same as ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_`` and ``MALLOC_TRIM_THRESHOLD_`` in the environment, but set
where the models load, so it holds however the worker was started (a local Ray, ``ray start``
on a cluster node, the in-process engine). Not glibc (musl, macOS): nothing is changed.
"""
from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3   # glibc's malloc.h
MMAP_THRESHOLD_MAX = 32 << 20                 # glibc refuses more on 64-bit (HEAP_MAX_SIZE / 2)
TOP_PAD = 256 << 20

_applied: int | None = None


def keep_freed(mib: int | None) -> int:
    """Serve blocks up to 32 MiB from the heap, grow it 256 MiB at a time and trim it only above
    ``mib`` MiB. Returns the MiB this process keeps now (0: glibc's defaults, or glibc refused).
    ``mib`` 0 or None changes nothing. Process-wide: the first value set stays, and a later call
    returns it."""
    global _applied
    if _applied is not None:
        return _applied
    if not mib or platform.libc_ver()[0] != "glibc":
        return 0
    libc = ctypes.CDLL(None)  # the C library this process already runs
    ok = libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(MMAP_THRESHOLD_MAX)) == 1
    ok = libc.mallopt(ctypes.c_int(M_TRIM_THRESHOLD), ctypes.c_int(int(mib) << 20)) == 1 and ok
    ok = libc.mallopt(ctypes.c_int(M_TOP_PAD), ctypes.c_int(TOP_PAD)) == 1 and ok
    if ok:
        _applied = int(mib)
    return _applied or 0
