"""Shared test helpers: devices, tolerances, relative error, op-level and model-level comparisons with PyTorch.

Tolerances (relative error = max|a - b| / max|b|):
    float64: 1e-10 against PyTorch, 1e-6 against finite differences
    float32: 1e-4 against PyTorch
GPU tests are parametrised with ``device`` and skip cleanly without CuPy or CUDA. With TINYSE_EMULATE_GPU=1 they
run on the emulated CuPy (tinyse/testing/emulated_cupy), on the CPU:
    TINYSE_EMULATE_GPU=1 python -m pytest -m gpu
"""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, currently_in_test_context, settings

from tinyse.testing import emulated_cupy

# The emulated GPU must stand in for cupy before tinyse.backend is used (install() re-imports tinyse), so this
# comes before the imports from tinyse below. Its kernels need a C++ compiler; without one the GPU tests skip.
if emulated_cupy.requested() and emulated_cupy.compiler_available():
    emulated_cupy.install()

from tinyse.backend import device_of, gpu_available, to_device
from tinyse.tensor import Tensor

# Two hypothesis profiles. "tinyse" (the default, and CI's): 25 examples per property, derandomised, so every
# run tries the same inputs and a red CI is reproducible. "explore": fresh random inputs on every run and 500
# examples per property, to look for what the fixed inputs miss:
#     python -m pytest --hypothesis-profile=explore tests/test_ops_conv.py
# (a failure prints the example and a @reproduce_failure line to replay it).
settings.register_profile(
    "tinyse", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile(
    "explore", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)
settings.load_profile("tinyse")  # --hypothesis-profile, read after this file, replaces it

# PyTorch is only the reference here, on small tensors: one thread keeps its pool from
# fighting NumPy's BLAS for the cores (several times slower on a busy 2-core machine).
torch.set_num_threads(1)

TORCH_TOLERANCE = {np.float64: 1e-10, np.float32: 1e-4}
GRADCHECK_TOLERANCE = 1e-6

if emulated_cupy.requested() and not emulated_cupy.compiler_available():
    GPU_SKIP_REASON = "TINYSE_EMULATE_GPU=1 asks for the emulated GPU, whose kernels need a C++ compiler: none found"
else:
    GPU_SKIP_REASON = "needs CuPy and a CUDA device (or TINYSE_EMULATE_GPU=1: the emulated one)"
requires_gpu = pytest.mark.skipif(not gpu_available(), reason=GPU_SKIP_REASON)
DEVICES = ["cpu", pytest.param("gpu", marks=[requires_gpu, pytest.mark.gpu])]
DTYPES = [np.float64, np.float32]


def rel_error(actual, expected):
    """max |actual - expected| / max |expected| (both moved to NumPy; 0 when both are all zero)."""
    actual = np.asarray(to_device(actual, "cpu"), dtype=np.float64)
    expected = np.asarray(expected.detach().numpy() if hasattr(expected, "detach") else expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    scale = max(np.abs(expected).max(initial=0.0), 1e-30)
    return np.abs(actual - expected).max(initial=0.0) / scale


def random_array(rng, shape, dtype=np.float64, device="cpu"):
    """Standard-normal values of ``shape`` on ``device``."""
    return to_device(rng.standard_normal(shape).astype(dtype), device)


def away_from_zero(array, margin=1e-3):
    """Push values off the kink at 0 (ReLU), so finite differences never straddle it."""
    return np.where(np.abs(array) < margin, np.sign(array + 1e-30) * margin * 2, array)


def distinct_values(rng, shape, dtype=np.float64):
    """Values at least 0.01 apart (no ties, so max pooling has one winner per window)."""
    count = int(np.prod(shape))
    return (rng.permutation(count).reshape(shape) * 0.01 - count * 0.005).astype(dtype)


def torch_run(torch_fn, arrays, upstream):
    """torch's output and the gradient of every array (None for None), all as NumPy arrays."""
    tensors = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    out = torch_fn(*tensors)
    out.backward(torch.from_numpy(upstream))
    return [out.detach().numpy()] + [None if t is None else t.grad.numpy() for t in tensors]


def assert_matches_torch(tinyse_fn, torch_fn, arrays, device="cpu", seed=0):
    """Run tinyse (on ``device``) and torch (on the CPU) on the same float arrays (None passes as None);
    the output and every array's gradient must agree to TORCH_TOLERANCE and keep the arrays' dtype.

    Both backward passes start from the same random upstream gradient (not ones: errors cannot cancel).
    A float32 example drawn by hypothesis is skipped (``assume``) when torch's own float32 result is off its
    float64 result by more than a tenth of the tolerance: such cancellation no float32 code avoids.
    """
    dtype = next(a.dtype for a in arrays if a is not None)
    tolerance = TORCH_TOLERANCE[dtype.type]
    ours = [None if a is None else Tensor(to_device(a, device), requires_grad=True) for a in arrays]
    out = tinyse_fn(*ours)
    upstream = np.random.default_rng([seed, 1]).standard_normal(out.shape).astype(dtype)  # a stream of its own
    expected = torch_run(torch_fn, arrays, upstream)
    if dtype == np.float32:
        exact = torch_run(
            torch_fn, [None if a is None else a.astype(np.float64) for a in arrays], upstream.astype(np.float64)
        )
        well_conditioned = all(e is None or rel_error(e, x) < tolerance / 10 for e, x in zip(expected, exact))
        if currently_in_test_context():
            assume(well_conditioned)
        else:  # a fixed example must be chosen well-conditioned
            assert well_conditioned, "this float32 example is ill-conditioned (torch float32 != float64)"
    assert out.dtype == dtype and out.device == device
    assert rel_error(out.data, expected[0]) < tolerance, "forward differs from torch"
    out.backward(to_device(upstream, device))
    for i, (t, e) in enumerate(zip(ours, expected[1:])):
        if t is not None:
            assert t.grad.dtype == dtype, f"gradient of input {i} has dtype {t.grad.dtype}"
            assert device_of(t.grad) == device, f"gradient of input {i} is on {device_of(t.grad)}, not {device}"
            assert rel_error(t.grad, e) < tolerance, f"gradient of input {i} differs from torch"
    return out, ours


def assert_model_matches_torch(model, twin, x, tol, device="cpu", seed=0):
    """Run tinyse ``model`` (on ``device``) and its torch ``twin`` (on the CPU) on x, each in the mode it is in, and
    push the same random output gradient back through both: the output, the gradient of x and of every parameter,
    and the state afterwards (batch norm's running statistics and counter) agree to ``tol`` (relative error).

    Gradients are cleared first on both sides, so one call compares one backward pass. The twin computes in
    its own dtype: a float64 twin is the exact reference for a float32 model too. Returns tinyse's output.
    """
    model.zero_grad()
    twin.zero_grad()
    xs = Tensor(to_device(x, device), requires_grad=True)
    xt = torch.from_numpy(x)
    twin_parameters = list(twin.parameters())
    if twin_parameters:
        xt = xt.to(twin_parameters[0].dtype)
    xt.requires_grad_()
    y, yt = model(xs), twin(xt)
    grad_out = np.random.default_rng(seed).standard_normal(y.shape).astype(x.dtype)
    y.backward(to_device(grad_out, device))
    yt.backward(torch.from_numpy(grad_out).to(yt.dtype))
    assert y.dtype == x.dtype, f"output dtype {y.dtype} for a {x.dtype} input"
    assert device_of(y.data) == device
    assert rel_error(y.data, yt) < tol, "output"
    assert rel_error(xs.grad, xt.grad) < tol, "gradient of the input"
    torch_params = dict(twin.named_parameters())
    assert [n for n, _ in model.named_parameters()] == list(torch_params)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == p.dtype, name
        assert rel_error(p.grad, torch_params[name].grad) < tol, name
    torch_state = twin.state_dict()
    for key, value in model.state_dict().items():
        assert rel_error(value, torch_state[key]) < tol, key
    return y


def assert_train_and_eval_match_torch(model, twin, x, tol, device="cpu"):
    """``assert_model_matches_torch`` in training mode (batch norm normalises with the batch's statistics and moves
    its running ones), then in eval mode (it normalises with the running ones): forward and backward, both modes."""
    model.train(), twin.train()
    assert_model_matches_torch(model, twin, x, tol, device, seed=0)
    model.eval(), twin.eval()
    assert_model_matches_torch(model, twin, x, tol, device, seed=1)
