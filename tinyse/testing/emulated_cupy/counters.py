"""What the emulated GPU was asked to do: kernel launches, copies between host and device, host waits.

    from tinyse.testing.emulated_cupy import counters, counting

    counters.reset()
    ...                                   # run some GPU code
    counters.snapshot()                   # {'kernel_launches': 12, 'host_to_device': 1, ...}

    with counting() as counts:            # only what happens inside the block
        loss = model(x).sum()
        float(loss)
    assert counts["host_syncs"] == 1      # the dict is filled when the block ends

The fields:
    kernel_launches        one per kernel the GPU would run: each ufunc call, reduction, matrix product,
                           copy (copy, astype, ascontiguousarray when it copies), fill (zeros, ones, full),
                           assignment into an array (x[...] = v), and each ElementwiseKernel call.
                           Views (reshape, transpose, slicing, broadcast_to) and ``empty`` launch nothing:
                           CuPy only allocates for ``empty``, and a view is new metadata on old memory.
                           ``zeros`` counts one launch (CuPy fills it with a memset). A composite routine
                           (einsum, var, pad) counts one, though CuPy may run a few: the count is a
                           regression signal, not a profile. ``launches_by_name`` says which.
    host_to_device         copies from host (NumPy) memory onto the device: cupy.asarray(numpy_array),
    host_to_device_bytes   cupy.array, ndarray.set, and the index arrays and values CuPy copies implicitly
                           (x[numpy_index], x[numpy_index] = numpy_values)
    device_to_host         copies back: ndarray.get, cupy.asnumpy, and every read of device values into
    device_to_host_bytes   Python (float(x), int(x), bool(x), x.item(), x.tolist(), repr(x), print(x))
    host_syncs             times the host waits for the device: each blocking copy back, Device.synchronize,
                           Stream.synchronize, and the data-dependent shapes that make CuPy read a count
                           first (nonzero, argwhere, flatnonzero, x[boolean_mask], unique)
    value_reads            the device-to-host copies that read values into Python objects (float(x) ...):
                           each is a hidden synchronisation in a training loop

``cupyx.allow_synchronize(False)`` (CuPy's own switch, deprecated there but present in 14.2.0) makes
every synchronisation inside it raise ``cupyx.DeviceSynchronized``: a test can demand that a block
of GPU code never waits for the device.
"""
import collections
import contextlib
import threading
import warnings

FIELDS = (
    "kernel_launches", "host_to_device", "host_to_device_bytes", "device_to_host", "device_to_host_bytes",
    "host_syncs", "value_reads",
)


class Counters:
    """Running totals since the last ``reset()`` (one instance, ``counters``, serves the whole process)."""

    def __init__(self):
        self.reset()

    def reset(self):
        for field in FIELDS:
            setattr(self, field, 0)
        self.launches_by_name = collections.Counter()

    def snapshot(self):
        """The totals as a dict (FIELDS as keys; ``launches_by_name`` as a Counter)."""
        totals = {field: getattr(self, field) for field in FIELDS}
        totals["launches_by_name"] = collections.Counter(self.launches_by_name)
        return totals

    # --- what the emulator calls ---
    def launch(self, name):
        self.kernel_launches += 1
        self.launches_by_name[name] += 1

    def copy_to_device(self, nbytes):
        self.host_to_device += 1
        self.host_to_device_bytes += int(nbytes)

    def copy_to_host(self, nbytes, blocking=True):
        if blocking:
            self.sync()
        self.device_to_host += 1
        self.device_to_host_bytes += int(nbytes)

    def sync(self):
        if not getattr(_sync_permission, "allowed", True):
            raise DeviceSynchronized()
        self.host_syncs += 1

    def value_read(self):
        self.value_reads += 1


counters = Counters()
_sync_permission = threading.local()


class DeviceSynchronized(RuntimeError):
    """``cupyx.DeviceSynchronized``: a synchronisation happened inside ``allow_synchronize(False)``."""

    def __init__(self, message=None):
        super().__init__(message or "Device synchronization was detected while disallowed.")


@contextlib.contextmanager
def allow_synchronize(allow):
    """``cupyx.allow_synchronize``: allow or forbid synchronisations in this thread inside the block."""
    warnings.warn(  # CuPy's own warning (cupy/_core/syncdetect.py)
        "cupyx.allow_synchronize will be removed in future releases as it is not possible to reliably detect "
        "synchronizations.",
        stacklevel=3,
    )
    before = getattr(_sync_permission, "allowed", True)
    _sync_permission.allowed = allow
    try:
        yield
    finally:
        _sync_permission.allowed = before


@contextlib.contextmanager
def counting():
    """Count what happens inside the ``with`` block: yields a dict, filled with the differences at its end."""
    before = counters.snapshot()
    counts = {}
    try:
        yield counts
    finally:
        after = counters.snapshot()
        counts.update({field: after[field] - before[field] for field in FIELDS})
        counts["launches_by_name"] = after["launches_by_name"] - before["launches_by_name"]
