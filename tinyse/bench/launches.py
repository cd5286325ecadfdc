"""Kernel launches and host synchronisations of a training step and an eval forward, counted, and where they come from.

    python -m tinyse.testing.emulated_cupy tinyse.bench.launches            # SE-ResNet-20, the table by part
    python -m tinyse.testing.emulated_cupy tinyse.bench.launches resnet20 --batch 4

On a GPU each kernel launch costs a few microseconds of host time whatever the kernel does, and each
host synchronisation stalls the queue; for a small network those, not the arithmetic, can set the
speed. Real CuPy has no counter of either: these counts come from the emulated CuPy
(``tinyse.testing.emulated_cupy``), which counts what CuPy would launch, copy and wait for.

``count_launches`` counts one call of the bench's own callables (``rows.tinyse_model``): a training
step (forward, cross-entropy, backward, SGD with momentum 0.9 and weight decay 1e-4) or an eval
forward under no_grad, after one uncounted call (the first builds the momentum buffers). The
counts do not depend on the batch: on the GPU every op runs the whole batch in one call
(``parallel.for_each_chunk``), so a small batch counts what batch 128 launches (a test holds
batch 2 and batch 4 to the same counts). Each launch is put in one part:

    <Op>.forward, <Op>.backward   inside an op's forward or backward (the outermost op of a nest)
    autograd                      Tensor.backward outside the ops' backward: the sums of the gradients of
                                  a tensor used twice, the casts, the copy into each leaf's .grad
    optimizer step                the optimizer's step()
    other                         the rest: module code outside the ops
"""
import argparse
import collections
import contextlib

from tinyse import backend, optim
from tinyse.bench.machine import cupy_is_emulated
from tinyse.bench.rows import tinyse_model
from tinyse.profile import wrap_every_op
from tinyse.tensor import Tensor

FIELDS = ("kernel_launches", "host_syncs", "host_to_device", "device_to_host")
COUNTING_BATCH = 2  # what the bench counts at: the counts do not depend on the batch


def count_launches(model="se_resnet20", batch=COUNTING_BATCH, train=True):
    """Count one training step (``train``) or eval forward of ``model`` on the emulated GPU.

    Returns {"model", "batch", "train", the totals of FIELDS, "launches_by_name": {kernel: launches},
    "parts": {part: {"calls", FIELDS..., "launches_by_name"}}}, the parts as in the module's docstring.
    Raises RuntimeError when tinyse does not run on the emulated CuPy.
    """
    backend.module_for_device("gpu")  # the GPU check runs its kernel now, not inside the count
    if not cupy_is_emulated():
        raise RuntimeError("kernel launches are counted on the emulated CuPy only (real CuPy has no counter): "
                           "run under `python -m tinyse.testing.emulated_cupy` or TINYSE_EMULATE_GPU=1")
    from tinyse.testing.emulated_cupy import counters

    call = tinyse_model(model, (batch, 3, 32, 32), "gpu", train)
    call()  # the first step makes the momentum buffers: count the steady state
    parts = collections.defaultdict(_empty_part)
    with _parts_counted(counters, parts):
        before = counters.snapshot()
        call()
        after = counters.snapshot()
    totals = _difference(before, after)
    for part in parts.values():
        part["launches_by_name"] = +part["launches_by_name"]  # drop the kernels that ended at zero
    counted = {field: sum(part[field] for part in parts.values()) for field in FIELDS}
    other = parts["other"]
    for field in FIELDS:
        other[field] = totals[field] - counted[field]
    other["launches_by_name"] = totals["launches_by_name"] - sum(
        (part["launches_by_name"] for part in parts.values()), collections.Counter())
    if not any(other[field] for field in FIELDS):
        del parts["other"]
    return {"model": model, "batch": batch, "train": train, **totals, "parts": dict(parts)}


def _empty_part():
    return {"calls": 0, **dict.fromkeys(FIELDS, 0), "launches_by_name": collections.Counter()}


def _difference(before, after):
    counts = {field: after[field] - before[field] for field in FIELDS}
    counts["launches_by_name"] = after["launches_by_name"] - before["launches_by_name"]
    return counts


@contextlib.contextmanager
def _parts_counted(counters, parts):
    """Inside the block, add what each op method, Tensor.backward (outside the ops) and the optimizer's step
    launch to ``parts``."""
    inside_autograd = [False]

    def count(part, run):
        before = counters.snapshot()
        result = run()
        counts = _difference(before, counters.snapshot())
        entry = parts[part]
        entry["calls"] += 1
        for field in FIELDS:
            entry[field] += counts[field]
        entry["launches_by_name"] += counts["launches_by_name"]
        return counts, result

    def count_op(op, phase, method, args):
        counts, result = count(f"{type(op).__name__}.{phase}", lambda: method(op, *args))
        if inside_autograd[0]:  # take it off autograd's share, counted around the whole backward
            _subtract(parts["autograd"], counts)
        return result

    original_backward, original_step = Tensor.backward, optim.SGD.step

    def backward(self, grad=None):
        inside_autograd[0] = True
        try:
            return count("autograd", lambda: original_backward(self, grad))[1]
        finally:
            inside_autograd[0] = False

    def step(self):
        return count("optimizer step", lambda: original_step(self))[1]

    restore_ops = wrap_every_op(count_op)
    Tensor.backward, optim.SGD.step = backward, step
    try:
        yield
    finally:
        restore_ops()
        Tensor.backward, optim.SGD.step = original_backward, original_step


def _subtract(entry, counts):
    for field in FIELDS:
        entry[field] -= counts[field]
    entry["launches_by_name"].subtract(counts["launches_by_name"])  # below zero until the whole backward is added


def format_counts(counts, top=3):
    """The parts, most launches first, each with its calls and its most frequent kernels, then the total."""
    what = "training step" if counts["train"] else "eval forward"
    lines = [f"{counts['model']} {what}, batch {counts['batch']} (emulated CuPy): "
             f"{counts['kernel_launches']} kernel launches, {counts['host_syncs']} host synchronisations, "
             f"{counts['host_to_device']} copies to the device, {counts['device_to_host']} back",
             f"{'part':<28}{'calls':>7}{'launches':>10}{'syncs':>7}  most launched kernels"]
    for part, entry in sorted(counts["parts"].items(), key=lambda item: -item[1]["kernel_launches"]):
        kernels = ", ".join(f"{name} {n}" for name, n in entry["launches_by_name"].most_common(top))
        lines.append(f"{part:<28}{entry['calls']:>7}{entry['kernel_launches']:>10}{entry['host_syncs']:>7}  {kernels}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tinyse.testing.emulated_cupy tinyse.bench.launches",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="se_resnet20")
    parser.add_argument("--batch", type=int, default=COUNTING_BATCH)
    args = parser.parse_args(argv)
    try:
        results = [count_launches(args.model, args.batch, train) for train in (True, False)]
    except RuntimeError as error:
        raise SystemExit(f"error: {error}") from None
    print("\n\n".join(format_counts(counts) for counts in results))
    return results


if __name__ == "__main__":
    main()
