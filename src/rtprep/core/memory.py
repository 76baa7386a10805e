"""The C allocator's policy for processes that fit models.

numpy takes arrays over 32 MB (glibc's largest mmap threshold) straight from the kernel with
``mmap`` and gives them back on free, so every large temporary of a fit (a (groups, p, p) stack
is 300 MB for 30,000 groups) is page-faulted in afresh: a fit of 600,000 rows spent a quarter of
its time (56 of 236 s) in the kernel. :func:`reuse_freed_memory` makes freed memory stay with
the process for the next array instead (``mallopt``: no mmap, no trimming). It costs peak
memory (the heap keeps its high-water mark, and fragments: 3.5 → 4.3 GB there).

:func:`peak_rss_kb` is this process's own peak memory, as the benchmarks report it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def reuse_freed_memory() -> bool:
    """Keep freed memory for reuse (glibc only; elsewhere a no-op). Returns whether it applied."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt, macOS no libc.so)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    log.debug("allocator: freed memory kept for reuse: %s", ok)
    return ok


def peak_rss_kb() -> int | None:
    """This process's peak RSS in kB since it started (``VmHWM``), or None where /proc has none.

    Not ``ru_maxrss``: Linux carries a parent's high-water mark into a forked child through
    ``exec``, so a child of a parent that once held 0.3 GB reports at least 0.3 GB there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
