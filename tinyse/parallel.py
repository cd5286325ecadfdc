"""Run an op over chunks of its batch, on every CPU core.

Why: NumPy's copies and elementwise loops run on one core, and BLAS spreads a
matrix product over all cores only when the product is large. A convolution
on CIFAR-sized images is many small products. So the conv splits its batch
into chunks of a few images, small enough that a chunk's work arrays stay in
the core's cache, and runs the chunks on one thread per core: the calling
thread and a pool of the others. The elementwise ops that pass over whole
activations (batch norm, the fused ops, ReLU, the squeeze) do the same with
``for_each_chunk_of``: each chunk goes through all of an op's passes while
it is in the cache.
NumPy releases the GIL inside BLAS calls, copies and elementwise loops, so
they really run at once. The products then get faster with every core; passes
bound by memory less so (2-core Intel Xeon, 2026-12-02: two threads, each
multiplying its own 8 MB arrays, did twice the work of one in 1/1.6 of the
time; a product, 1/1.8), which is why the stride-1 conv avoids im2col's copies.
While the chunks run, BLAS is held to one thread each: two threads that each
start a multi-threaded BLAS call fight for the same cores and run many times
slower.

On the GPU there is nothing to gain: the whole batch is one chunk, run in the
calling thread.

Work arrays: a chunk needs the same few arrays (padded images, products)
every step. On NumPy each thread keeps its work arrays between calls
(``workspace``): no allocation, no first-touch page faults (see
``tinyse/memory.py``), and zeros written once stay zero, which the conv's
padded row layout relies on. CuPy's memory pool already reuses GPU memory.
"""
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # threadpoolctl sets BLAS's thread count at run time
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - it is a dependency; without it, chunks run one after another
    ThreadpoolController = None

CACHE_BYTES = 1 << 21  # aim for about this many bytes of work arrays per chunk (a core's L2 cache)

_pool = None
_blas = None
_local = threading.local()  # each thread's work arrays: key -> array
MAX_WORKSPACES = 64  # per thread; past this many different keys, the thread's arrays are dropped and remade


def workers():
    """Threads used for chunks: $TINYSE_NUM_THREADS, else the number of cores this process may use."""
    if "TINYSE_NUM_THREADS" in os.environ:
        return max(1, int(os.environ["TINYSE_NUM_THREADS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def chunk_bounds(batch, bytes_per_item, n_workers=1):
    """(start, stop) of each chunk: as few chunks as fit in CACHE_BYTES each, their count a multiple
    of ``n_workers``, and their sizes within one item of each other, so that the workers finish together."""
    fit = max(1, CACHE_BYTES // max(1, bytes_per_item))
    n_chunks = -(-batch // fit)  # ceil(batch / fit)
    n_chunks = min(batch, -(-n_chunks // n_workers) * n_workers)
    bounds = [batch * k // n_chunks for k in range(n_chunks + 1)]
    return list(itertools.pairwise(bounds))


def for_each_chunk(xp, batch, bytes_per_item, run):
    """Call ``run(start, stop)`` for consecutive chunks covering range(batch).

    ``run`` must write its results into arrays indexed by [start:stop] (or
    return a value; the values come back as a list, in chunk order). On NumPy
    the chunks run on the calling thread and a pool of ``workers() - 1`` more,
    each taking the next chunk when done with one; on CuPy ``run(0, batch)`` is
    one call.

    Why the calling thread works too, rather than waiting for a pool of ``workers()``
    threads: a thread that sleeps takes a while to wake up (on the 2-core virtual Xeon
    this was measured on, a pool thread started its task 50 to 500 us after it was
    handed one), and each call would wait for that twice, once for the pool to start and
    once for the caller to hear that it is done. With the caller working, the convolution
    (fwd+bwd) took 0.92 / 0.94 / 0.95 of its time at SE-ResNet-20's three stage shapes (A/B
    in one process, 2 threads, 2026-12-02).
    """
    global _pool, _blas
    if xp is not np:
        return [run(0, batch)]
    n_workers = workers() if ThreadpoolController is not None else 1
    if batch * bytes_per_item <= CACHE_BYTES:  # all of it fits one chunk: a second thread would not wake in time
        return [run(0, batch)]
    chunks = chunk_bounds(batch, bytes_per_item, n_workers)
    if n_workers == 1:
        return [run(start, stop) for start, stop in chunks]
    if _pool is None:  # helpers beyond its size wait their turn, and then find no chunk left
        _pool, _blas = ThreadPoolExecutor(n_workers - 1), ThreadpoolController()
    results = [None] * len(chunks)
    unclaimed = iter(range(len(chunks)))
    claim = threading.Lock()

    def work():  # take the next chunk nobody has taken, until none is left
        while True:
            with claim:
                k = next(unclaimed, None)
            if k is None:
                return
            results[k] = run(*chunks[k])

    with _blas.limit(limits=1, user_api="blas"):
        helpers = [_pool.submit(work) for _ in range(n_workers - 1)]
        try:
            work()
        finally:  # the helpers finish before BLAS gets its threads back, even after an error here
            for helper in helpers:
                helper.result()
    return results


def for_each_chunk_of(arrays, run):
    """``for_each_chunk`` over the first axis (the batch) of ``arrays``, all as long: ``run(start, stop)`` may
    read and write ``array[start:stop]`` of each, and the chunks are sized so that those slices, all together,
    fit the cache. For the elementwise passes of an op (batch norm, the fused ops): each chunk goes through all
    of an op's passes while it is in the cache, on every core. On CuPy, one call ``run(0, N)``."""
    xp = np if all(isinstance(array, np.ndarray) for array in arrays) else None
    return for_each_chunk(xp, len(arrays[0]), sum(array[:1].nbytes for array in arrays), run)


def workspace(xp, key, shape, dtype):
    """A work array of ``shape`` for the calling thread, zero wherever its users never write.

    On NumPy the array is kept (per thread, under ``key`` and the shape past the
    first axis) and handed out again by later calls, holding what the last user
    left; a call with a smaller first axis gets a view of its leading part. It
    was zero when made, so the rule for users is: under one key, always write
    the same entries, and the rest stay zero. ``key`` must therefore name the
    pattern written (the op, and sizes such as padding that place the data).
    On CuPy it is a fresh array of zeros each call.
    """
    if xp is not np:
        return xp.zeros(shape, dtype=dtype)
    arrays = _local.__dict__.setdefault("arrays", {})
    full_key = (key, tuple(shape[1:]), np.dtype(dtype))
    array = arrays.get(full_key)
    if array is None or array.shape[0] < shape[0]:
        if len(arrays) >= MAX_WORKSPACES:
            arrays.clear()
        array = arrays[full_key] = np.zeros(shape, dtype=dtype)
    return array[: shape[0]]
