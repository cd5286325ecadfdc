"""How the rows are timed, and the numbers made from the times.

After warm-up calls, the libraries run alternately (tinyse, torch, tinyse, torch, ...), so that a machine
that slows down (another job, heat) slows both alike, and the MEDIAN of the repeats is reported.
On the CPU each timed call follows untimed calls of the same library for ``--settle`` seconds, so that
the other library's idle threads, still spinning, have stopped stealing the cores.
On the GPU each call is bracketed by device synchronisations. ratio = tinyse / torch: above 1, tinyse is
slower. img/s = batch / median time. Where torch cannot reach the GPU (a CPU build of torch; the emulated
GPU), tinyse is timed alone: its rows have no "torch" and no ratio.

Derived: SE overhead = SE-ResNet-20 time / ResNet-20 time, for each library: the median over rounds of
the ratio of the two models' times in the same round (a paired measure: a machine that is slower for a
while slows both models of a round alike).
"""
import gc
import statistics
import time

from tinyse.backend import module_for_device
from tinyse.bench.machine import torch_device
from tinyse.bench.rows import LIBRARIES

SETTLE_S = 0.25  # on the CPU, run each call untimed this long first: the other library's threads stop spinning


def synchronizer(library, device):
    """A function that waits until ``library``'s queued work on ``device`` is done (a no-op on the CPU)."""
    if device == "cpu":
        return lambda: None
    if library == "tinyse":
        return module_for_device("gpu").cuda.Device().synchronize  # tinyse.backend: the one place with cupy
    torch_device(device)
    import torch

    return torch.cuda.synchronize


def synchronizers(device, libraries=LIBRARIES):
    return {library: synchronizer(library, device) for library in libraries}


def time_alternating(calls, warmup, repeats, syncs=None, clock=time.perf_counter, settle=0.0):
    """Call the callables in turn, round after round, and time each call.

    calls    {key: zero-argument callable}, run in this order within a round
    syncs    {key: zero-argument callable} waiting for the device before each clock read
    settle   before each timed call, repeat the same call untimed until this many seconds have
             passed. After a parallel region, OpenBLAS's and OpenMP's worker threads keep spinning
             on the cores for up to about 0.2 s, and a call of the other library that starts
             meanwhile has to share the cores with them (``--settle 0`` times without settling,
             to compare). Resting instead (sleep) does not work: the threads, and on a virtual
             machine the cores, go to sleep, and the timed call pays to wake them.
    Returns {key: [seconds of each of the ``repeats`` timed calls]}; the first ``warmup``
    rounds are run the same way and thrown away.
    """
    syncs = syncs or {}
    times = {key: [] for key in calls}
    for round_index in range(warmup + repeats):
        for key, call in calls.items():
            sync = syncs.get(key, lambda: None)
            sync()
            settle_until = clock() + settle
            while settle and clock() < settle_until:
                call()
                sync()
            start = clock()
            call()
            sync()
            elapsed = clock() - start
            if round_index >= warmup:
                times[key].append(elapsed)
    return times


def summarise(name, shape, times):
    """One row of results from the times of each library: medians, ratio, images per second.
    Without torch's times (no CUDA in its build) the row has no "torch" and its ratio is None."""
    result = {"name": name, "shape": list(shape), "batch": shape[0]}
    for library, seconds in times.items():
        median = statistics.median(seconds)
        result[library] = {"times_s": seconds, "median_s": median, "images_per_s": shape[0] / median}
    both = "tinyse" in result and "torch" in result
    result["ratio"] = result["tinyse"]["median_s"] / result["torch"]["median_s"] if both else None
    return result


def measure(rows, warmup, repeats, syncs, settle=0.0):
    """Time the rows together: each round calls tinyse then torch for the first row, then for the next ...
    The libraries are those of ``syncs`` (tinyse alone where torch has no CUDA)."""
    libraries = [library for library in LIBRARIES if library in syncs]
    calls = {(index, library): getattr(row, f"make_{library}")() for index, row in enumerate(rows)
             for library in libraries}
    times = time_alternating(calls, warmup, repeats, {key: syncs[key[1]] for key in calls}, settle=settle)
    results = [summarise(row.name, row.shape, {library: times[index, library] for library in libraries})
               for index, row in enumerate(rows)]
    del calls
    gc.collect()  # free these rows' arrays before the next ones are built
    return results


def groups(rows):
    """The rows as lists to time together: consecutive rows of one non-empty ``group``, every other row alone."""
    batches = []
    for row in rows:
        if batches and row.group and batches[-1][-1].group == row.group:
            batches[-1].append(row)
        else:
            batches.append([row])
    return batches


def se_overhead(rows):
    """For each library timed, the median over rounds of SE-ResNet-20's time / ResNet-20's time in that round,
    for the kinds of model row where both were timed together."""
    by_name = {row["name"]: row for row in rows}
    overhead = {}
    for suffix in ("train step", "eval fwd"):
        plain, se = by_name.get(f"resnet20 {suffix}"), by_name.get(f"se_resnet20 {suffix}")
        if plain and se:
            overhead[suffix] = {
                library: statistics.median(se_s / plain_s for se_s, plain_s in
                                           zip(se[library]["times_s"], plain[library]["times_s"], strict=True))
                for library in LIBRARIES if library in se
            }
    return overhead
