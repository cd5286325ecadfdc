"""Worked solutions to the exercises of lesson 9, "The same code on a GPU" (lessons/09_gpu.ipynb).

Each ``exercise_<k>()`` runs the solution and asserts its result. Exercises 2-4 run their GPU part on
tinyse's emulated CuPy (tinyse/testing/emulated_cupy, which needs g++), each in a fresh Python process:
the emulator must stand in for CuPy before tinyse is imported, and this process has imported it already.
Run them all with

    python lessons/solutions/09_gpu.py
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

LESSONS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(LESSONS))  # for checks.py, wherever this file is run from

import numpy as np  # noqa: E402

import tinyse  # noqa: E402
import tinyse.functional as F  # noqa: E402
from tinyse import models  # noqa: E402
from tinyse.backend import get_array_module, gpu_available  # noqa: E402
from tinyse.testing import emulated_cupy  # noqa: E402


def on_emulated_gpu(code):
    """Run ``code`` in a new Python with the emulated CuPy installed first; it prints one JSON line last: returned."""
    if not emulated_cupy.compiler_available():
        raise RuntimeError("the emulated GPU needs a C++ compiler (g++) for its kernels")
    program = "from tinyse.testing import emulated_cupy\nemulated_cupy.install()\n" + textwrap.dedent(code)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LESSONS.parent), os.environ.get("PYTHONPATH", "")])}
    finished = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=environment,
                              cwd=LESSONS)
    if finished.returncode != 0:
        raise RuntimeError(f"the emulated GPU run failed:\n{finished.stderr}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


class LeakyReLU(tinyse.Function):
    """y = x where x > 0, slope * x elsewhere;  dL/dx = dL/dy where x > 0, slope * dL/dy elsewhere. Any shape."""

    def __init__(self, slope=0.01):
        self.slope = slope

    def forward(self, x):
        xp = get_array_module(x)
        self.x = x
        return xp.where(x > 0, x, self.slope * x)

    def backward(self, grad_out):
        xp = get_array_module(grad_out, self.x)
        return xp.where(self.x > 0, grad_out, self.slope * grad_out)


def exercise_1():
    """Your own op: LeakyReLU's backward, checked against finite differences and PyTorch; it runs on any device."""
    from checks import check_function

    values = np.random.default_rng(9).standard_normal((3, 4))
    values[np.abs(values) < 0.01] = 0.5  # off the kink
    errors = check_function(lambda: LeakyReLU(0.1), [values],
                            torch_fn=lambda t: t.clamp(min=0) + 0.1 * t.clamp(max=0))
    assert max(errors.values()) < 1e-6
    device = "gpu" if gpu_available() else "cpu"
    y = LeakyReLU(0.1)(tinyse.Tensor(values.astype(np.float32)).to(device))
    assert y.device == device and y.dtype == np.float32
    print(f"LeakyReLU on {device}: dtype {y.dtype}, max |y - expected| = "
          f"{np.abs(y.numpy() - np.where(values > 0, values, 0.1 * values)).max():.1e}")


def exercise_2():
    """Which NumPy calls survive a GPU array: np.exp, np.maximum and np.zeros_like hand the call to CuPy (NumPy's
    dispatch protocols) and return GPU arrays; np.zeros(shape) and NumPy's random numbers are made on the host, and
    mixing them with a GPU array is a TypeError; np.asarray(gpu_array) is refused. On the CPU every call is NumPy's,
    so nothing fails there."""
    results = on_emulated_gpu("""
        import json
        import numpy as np
        import cupy

        x = cupy.arange(6, dtype=cupy.float32).reshape(2, 3)
        tries = {
            "np.exp(x)": lambda: np.exp(x),
            "np.maximum(x, 0)": lambda: np.maximum(x, 0),
            "np.zeros_like(x)": lambda: np.zeros_like(x),
            "np.zeros(x.shape) + x": lambda: np.zeros(x.shape, dtype=np.float32) + x,
            "x * np.random.default_rng(0).random(x.shape)": lambda: x * np.random.default_rng(0).random(x.shape),
            "np.asarray(x)": lambda: np.asarray(x),
        }
        results = {}
        for name, attempt in tries.items():
            try:
                value = attempt()
                results[name] = "works: " + type(value).__module__.split(".")[0] + " array"
            except Exception as error:
                results[name] = "fails: " + type(error).__name__
        print(json.dumps(results))
    """)
    for name, result in results.items():
        print(f"  {name:46s} {result}")
    assert all(results[name] == "works: cupy array" for name in ("np.exp(x)", "np.maximum(x, 0)", "np.zeros_like(x)"))
    assert all(results[name] == "fails: TypeError" for name in (
        "np.zeros(x.shape) + x", "x * np.random.default_rng(0).random(x.shape)", "np.asarray(x)"))


STEP_COUNTS = """
    import json
    import numpy as np
    import tinyse
    import tinyse.functional as F
    from tinyse import models
    from tinyse.backend import to_device
    from tinyse.optim import SGD
    from tinyse.testing.emulated_cupy import counting

    model = models.create("{name}", seed=0).to("gpu")
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    batch = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    images = tinyse.Tensor(to_device(batch, "gpu"))
    labels = to_device(np.arange(2), "gpu")

    def step():
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    with counting() as counts:
        step()
    print(json.dumps({{k: v for k, v in counts["launches_by_name"].items() if k.startswith("tinyse_")}}))
"""


def exercise_3():
    """The kernels of a plain ResNet-20: the same convolution and batch-norm launches as SE-ResNet-20 (the same
    convolutions and batch norms); tinyse_add_relu appears, once per residual unit, in place of
    tinyse_scale_add_relu, the excitation's and the SE scale's kernels disappear, and relu_grad runs once per
    residual unit's end (add_relu's backward; batch norm's kernels apply the ReLU's mask themselves).
    The loss and the SGD step are one network-wide launch each, as in SE-ResNet-20."""
    from tinyse.nn import BatchNorm2d, BatchNormReLU2d, Conv2d

    model = models.create("resnet20")

    def layers(kind):
        return sum(1 for _, module in model.named_modules() if type(module) is kind)

    convs, norms, norms_relu = layers(Conv2d), layers(BatchNorm2d), layers(BatchNormReLU2d)
    units = sum(1 for name, _ in model.named_modules() if name.count(".") == 1 and name.startswith("layer"))
    every_norm = ("tinyse_bn_mean_var", "tinyse_bn_statistics", "tinyse_bn_grad_sums", "tinyse_bn_grad_x")
    expected = {
        "tinyse_im2col_batch": 2 * convs,
        "tinyse_col2im_batch": convs - 1,
        "tinyse_bn": norms, "tinyse_bn_relu": norms_relu,
        **dict.fromkeys(every_norm, norms + norms_relu),
        "tinyse_add_relu": units,
        "tinyse_relu_grad": units,
        "tinyse_sgd_step": 1,
        **dict.fromkeys(("tinyse_logsumexp", "tinyse_cross_entropy_rows", "tinyse_cross_entropy_grad"), 1),
    }
    counted = on_emulated_gpu(STEP_COUNTS.format(name="resnet20"))
    print(f"predicted from the layers: {dict(sorted(expected.items()))}")
    print(f"counted on the emulated GPU: {dict(sorted(counted.items()))}")
    assert counted == expected and "tinyse_scale_add_relu" not in counted


def exercise_4():
    """Reading the loss costs a wait: ten steps with loss.item() in each make the host wait ten times; keeping the
    losses on the device and reading them once at the end, once."""
    waits = on_emulated_gpu("""
        import json
        import numpy as np
        import tinyse
        import tinyse.functional as F
        from tinyse.backend import to_device
        from tinyse.optim import SGD
        from tinyse.testing.emulated_cupy import counting

        rng = np.random.default_rng(0)
        weight = to_device(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "gpu")
        weight = tinyse.Tensor(weight, requires_grad=True)
        images = tinyse.Tensor(to_device(rng.standard_normal((2, 3, 8, 8)).astype(np.float32), "gpu"))
        optimizer = SGD([weight], lr=0.01)

        def step():  # a tiny "network": one convolution, a ReLU, the mean as the loss
            loss = F.relu(F.conv2d(images, weight, padding=1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss

        with counting() as every_step:
            printed = [step().item() for _ in range(10)]
        with counting() as at_the_end:
            kept = [step().data for _ in range(10)]
            total = float(sum(kept))
        print(json.dumps({"every step": every_step["host_syncs"], "at the end": at_the_end["host_syncs"]}))
    """)
    print(f"host waits in 10 steps: loss.item() every step {waits['every step']}, read once at the end "
          f"{waits['at the end']}")
    assert waits == {"every step": 10, "at the end": 1}


def conv_share(batch):
    """The convolutions' share of the op time of one CPU training step of SE-ResNet-20, from tinyse.profile."""
    import contextlib
    import io

    import tinyse.profile
    from tinyse.optim import SGD

    model = models.create("se_resnet20", seed=0)
    optimizer = SGD(model.parameters(), lr=0.1)
    images = tinyse.Tensor(np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32))
    labels = np.arange(batch) % 10

    def step():
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    tinyse.profile.enable()
    report = io.StringIO()
    try:
        with contextlib.redirect_stderr(report):
            step()
    finally:
        tinyse.profile.disable()
    rows = {line.split()[0]: line.split() for line in report.getvalue().splitlines()[1:]
            if line and not line.startswith("total")}
    total = sum(float(row[2]) + float(row[3]) for row in rows.values())
    return (float(rows["Conv2d"][2]) + float(rows["Conv2d"][3])) / total, next(iter(rows))


def exercise_5():
    """Does the convolutions' share depend on the batch: it stays the largest part, more than half of the op time,
    at batches 8 and 64 (70-80% on a 2-core laptop CPU)."""
    for batch in (8, 64):
        share, largest = conv_share(batch)
        print(f"batch {batch:2d}: the convolutions take {100 * share:.0f}% of the op time (largest: {largest})")
        assert largest == "Conv2d" and share > 0.5


if __name__ == "__main__":
    for name, function in list(globals().items()):
        if name.startswith("exercise_"):
            print(f"--- {name}: {' '.join(function.__doc__.split())}")
            function()
