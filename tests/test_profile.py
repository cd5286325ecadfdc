"""TINYSE_PROFILE: per-op forward and backward times, printed after a backward pass."""
import io
import subprocess
import sys

import numpy as np
import pytest

import tinyse.functional as F
from tinyse import profile
from tinyse.backend import to_device
from tinyse.tensor import Tensor
from tinyse.testing import emulated_cupy

from conftest import requires_gpu


def test_profile_counts_every_op_call_and_restores_the_methods(monkeypatch):
    original_forward, original_backward = F.conv.Conv2d.forward, Tensor.backward
    printed = io.StringIO()
    monkeypatch.setattr(sys, "stderr", printed)
    profile.enable()
    try:
        x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 6, 6)), requires_grad=True)
        w = Tensor(np.random.default_rng(1).standard_normal((4, 3, 3, 3)), requires_grad=True)
        z = F.se_squeeze(F.relu(F.conv2d(x, w, padding=1)))  # SESqueeze inherits GlobalAvgPool2d's forward
        F.mean(z).backward()  # Mean.forward calls Sum.forward: counted once, as Mean
    finally:
        profile.disable()
    table = printed.getvalue().splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in table[1:-1]}
    assert set(rows) == {"Conv2d", "ReLU", "SESqueeze", "Mean"}
    assert all(int(calls) == 1 for calls, *_ in rows.values())
    assert table[-1].startswith("total")
    assert F.conv.Conv2d.forward is original_forward and Tensor.backward is original_backward


def test_the_environment_variable_turns_it_on():
    script = (
        "import numpy as np, tinyse, tinyse.functional as F;"
        "x = tinyse.Tensor(np.ones((2, 3)), requires_grad=True); F.sigmoid(x).sum().backward()"
    )
    env = {"TINYSE_PROFILE": "1", "PATH": ""}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert "Sigmoid" in result.stderr and "forward ms" in result.stderr
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={}, check=True)
    assert quiet.stderr == ""


@requires_gpu
@pytest.mark.gpu
def test_on_the_gpu_a_backward_without_an_input_gradient_still_waits_for_the_device(monkeypatch):
    """The stem conv's backward returns (None, dL/dW) (the images need no gradient): the clock must still stop
    only after the device has finished it, not when its kernels are queued. The emulated CuPy counts the
    synchronisations before the op starts and after it returns."""
    if not emulated_cupy.installed():
        pytest.skip("counts synchronisations with the emulated CuPy's counters")
    counters = emulated_cupy.counters
    seen = {}
    original = F.conv.Conv2d.backward

    def backward_between_two_readings(self, grad_out):
        seen["start"] = counters.host_syncs
        grads = original(self, grad_out)
        seen["end"] = counters.host_syncs
        return grads

    monkeypatch.setattr(F.conv.Conv2d, "backward", backward_between_two_readings)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    rng = np.random.default_rng(0)
    images = Tensor(to_device(rng.standard_normal((2, 3, 6, 6)).astype(np.float32), "gpu"))
    weight = Tensor(to_device(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "gpu"), requires_grad=True)
    profile.enable()
    try:
        out = F.conv2d(images, weight, padding=1)
        before = counters.host_syncs
        out.backward(to_device(np.ones(out.shape, np.float32), "gpu"))
        after = counters.host_syncs
    finally:
        profile.disable()
    assert weight.grad is not None and images.grad is None
    assert seen["start"] - before == 1, "no wait for the device before the clock starts"
    assert after - seen["end"] == 1, "no wait for the device before the clock stops"
