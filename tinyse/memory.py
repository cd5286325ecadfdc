"""Keep the memory NumPy frees, for the next array of the step (CPU, Linux with glibc).

Why: a training step allocates every activation and gradient afresh and frees
them all by the next step. By default glibc's ``malloc`` serves a large block
(above 128 KB; the bound grows with use, to at most 32 MB) straight from the
operating system with ``mmap`` and hands it back on ``free``. The next array
of that size gets new pages, and its first write to each page is a page
fault that the kernel answers by zeroing the page. For CIFAR-sized batches
that is most arrays: measured on an SE-ResNet-20 training step (batch 128,
2 cores), faults took a quarter of the step, and batch norm, whose passes
are each a new array, ran twice as fast without them.

``keep_freed_memory()`` asks glibc (``mallopt``) to take every block from
its heap and never shrink the heap: freed blocks stay in the process and
serve the next step. The peak memory is unchanged; what changes is that the
process keeps its peak until it exits, as PyTorch's and CuPy's caching
allocators do.

It changes the whole process, so nothing calls it at import: the command-line
tools (``python -m tinyse.train``, ``evaluate``, ``analyze``, ``demo``,
``experiments``, the benchmark) call it first thing in their ``main``, and a
program that uses tinyse as a library calls ``tinyse.keep_freed_memory()``
itself, once, before it starts training. $TINYSE_KEEP_FREED_MEMORY=0 makes it
do nothing (the switch for the tools). On other C libraries (macOS, Windows,
musl) it does nothing.
"""
import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h: free memory at the top of the heap above this goes back to the OS
M_MMAP_MAX = -4  # the most blocks served by mmap at a time; 0 = none, every block from the heap

_kept = False


def keep_freed_memory():
    """Tell glibc's malloc to keep freed memory for reuse, for the rest of the process.

    Returns True if glibc took the settings; False on another C library or with $TINYSE_KEEP_FREED_MEMORY=0.
    """
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("TINYSE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    _kept = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _kept
