"""Where the time goes: per-op forward and backward times, printed after every ``backward()``.

    TINYSE_PROFILE=1 python -m tinyse.train ...      # or: tinyse.profile.enable() in a script

``enable()`` wraps ``forward`` and ``backward`` of every op class (every
``Function`` subclass defined so far) with a timer, and ``Tensor.backward`` with
a report: after each backward pass it prints one line per op class, sorted by
total time, and starts counting afresh. On the GPU an op only queues kernels, so
the timer waits for the device before it starts and before it stops, whenever a
device array is among the op's inputs or results (otherwise it would time the
launches only). ``disable()`` puts the original methods back.

``wrap_every_op(measure)`` is the wrapping alone, for other measurements
(``tinyse.bench.launches`` counts each op's kernel launches with it).
"""
import collections
import sys
import time

from tinyse.backend import cupy, is_gpu_array
from tinyse.tensor import Function, Tensor

_times = collections.defaultdict(lambda: [0, 0.0, 0.0])  # op name -> [calls, forward s, backward s]
_restore_ops = None  # while enabled: puts the ops' methods back (wrap_every_op's answer)
_original_backward = None  # while enabled: Tensor.backward before wrapping


def op_classes(cls=Function):
    """Every op class: the subclasses of ``Function`` defined so far, depth first."""
    for sub in cls.__subclasses__():
        yield sub
        yield from op_classes(sub)


def wrap_every_op(measure):
    """Run every op's ``forward`` and ``backward`` through ``measure(op, phase, method, args)`` from now on.

    ``phase`` is "forward" or "backward"; ``measure`` must call ``method(op, *args)`` once and return its
    result. Only the outermost call of a nest is measured (Mean.forward calls Sum.forward: one call, Mean's).
    Returns a function that puts the original methods back.
    """
    originals = {}  # (class, phase) -> the method before wrapping
    depth = [0]  # how many wrapped methods are running

    def wrap(phase, method):
        def wrapper(self, *args):
            if depth[0]:  # inside another op's method: measured there
                return method(self, *args)
            depth[0] += 1
            try:
                return measure(self, phase, method, args)
            finally:
                depth[0] -= 1

        return wrapper

    for cls in op_classes():
        for phase in ("forward", "backward"):
            if phase in cls.__dict__:
                originals[cls, phase] = cls.__dict__[phase]
                setattr(cls, phase, wrap(phase, originals[cls, phase]))

    def restore():
        for (cls, phase), method in originals.items():
            setattr(cls, phase, method)

    return restore


def _on_device(values):
    """Whether any of ``values`` (arrays, None, numbers, tuples of them) is a device array."""
    return any(_on_device(v) if isinstance(v, tuple) else is_gpu_array(v) for v in values)


def _wait_for_device():
    cupy.cuda.Device().synchronize()


def _timed_call(op, phase, method, args):
    # any device array among the inputs and results counts: a backward's gradients may be None (the stem
    # conv's, for the images) and a forward's first argument a number
    on_device = _on_device(args)
    if on_device:
        _wait_for_device()  # the work queued before this op is not its time
    start = time.perf_counter()
    result = method(op, *args)
    if on_device or _on_device((result,)):
        _wait_for_device()  # the op's kernels are queued: wait until they have run
    entry = _times[type(op).__name__]
    entry[1 if phase == "forward" else 2] += time.perf_counter() - start
    entry[0] += phase == "forward"
    return result


def report(stream=None):
    """Print the table of the times gathered since the last report, then reset them."""
    stream = stream or sys.stderr
    rows = sorted(_times.items(), key=lambda item: -(item[1][1] + item[1][2]))
    total = sum(f + b for _, f, b in _times.values()) or 1.0
    stream.write(f"{'op':<18}{'calls':>7}{'forward ms':>12}{'backward ms':>13}{'share':>8}\n")
    for name, (calls, forward, backward) in rows:
        share = 100 * (forward + backward) / total
        stream.write(f"{name:<18}{calls:>7}{1e3 * forward:>12.1f}{1e3 * backward:>13.1f}{share:>7.1f}%\n")
    stream.write(f"{'total':<18}{'':>7}{1e3 * total:>25.1f} ms\n")
    _times.clear()


def enable():
    """Time every op from now on and print a report after each backward pass."""
    global _restore_ops, _original_backward
    if _restore_ops is not None:
        return
    _restore_ops = wrap_every_op(_timed_call)
    backward = _original_backward = Tensor.backward

    def backward_then_report(self, grad=None):
        backward(self, grad)
        report()

    Tensor.backward = backward_then_report


def disable():
    global _restore_ops, _original_backward
    if _restore_ops is not None:
        _restore_ops()
        Tensor.backward = _original_backward
    _restore_ops = _original_backward = None
    _times.clear()
