"""Where the time goes: per-op forward and backward times, printed after every ``backward()``.

    TINYSE_PROFILE=1 python -m tinyse.train ...      # or: tinyse.profile.enable() in a script

``enable()`` wraps ``forward`` and ``backward`` of every op class (every
``Function`` subclass defined so far) with a timer, and ``Tensor.backward`` with
a report: after each backward pass it prints one line per op class, sorted by
total time, and starts counting afresh. On the GPU the timer waits for the
device to finish (otherwise it would time only the kernel launches).
``disable()`` puts the original methods back.
"""
import collections
import sys
import time

from tinyse.backend import cupy, is_gpu_array
from tinyse.tensor import Function, Tensor

_times = collections.defaultdict(lambda: [0, 0.0, 0.0])  # op name -> [calls, forward s, backward s]
_originals = {}  # (class, method name) -> the method before wrapping
_depth = 0  # how many timed methods are running (only the outermost is timed)


def _synchronize(array):
    if is_gpu_array(array):
        cupy.cuda.Device().synchronize()


def _timed(name, method):
    slot = 1 if name == "forward" else 2

    def wrapper(self, *args):
        global _depth
        if _depth:  # inside another timed method (Mean.forward calls Sum.forward): counted there
            return method(self, *args)
        _depth += 1
        try:
            _synchronize(args[0] if args else None)
            start = time.perf_counter()
            result = method(self, *args)
            _synchronize(result[0] if isinstance(result, tuple) else result)
        finally:
            _depth -= 1
        entry = _times[type(self).__name__]
        entry[slot] += time.perf_counter() - start
        entry[0] += slot == 1
        return result

    return wrapper


def _all_op_classes(cls=Function):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_op_classes(sub)


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
    if _originals:
        return
    for cls in _all_op_classes():
        for name in ("forward", "backward"):
            if name in cls.__dict__:
                _originals[cls, name] = cls.__dict__[name]
                setattr(cls, name, _timed(name, cls.__dict__[name]))
    backward = _originals[Tensor, "backward"] = Tensor.backward

    def backward_then_report(self, grad=None):
        backward(self, grad)
        report()

    Tensor.backward = backward_then_report


def disable():
    for (cls, name), method in _originals.items():
        setattr(cls, name, method)
    _originals.clear()
    _times.clear()
