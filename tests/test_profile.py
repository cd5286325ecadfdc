"""TINYSE_PROFILE: per-op forward and backward times, printed after a backward pass."""
import io
import subprocess
import sys

import numpy as np

import tinyse.functional as F
from tinyse import profile
from tinyse.tensor import Tensor


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
