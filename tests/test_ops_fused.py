"""The fused ops (tinyse.ops.fused): relu(batch_norm(x)), relu(u * s + shortcut), relu(u + shortcut).

Each must equal its chain of separate tinyse ops (the obvious version), PyTorch's
composition of the same ops (forward and every gradient), and finite differences;
on the GPU, its CuPy kernels must equal the NumPy path. The batch norm runs in both
modes: training (the batch's statistics) and eval (running statistics, a different
forward and backward).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import assume, given
from hypothesis import strategies as st

import tinyse.functional as F
from tinyse import Tensor, gradcheck
from tinyse.backend import to_device

from conftest import DEVICES, DTYPES, GRADCHECK_TOLERANCE, TORCH_TOLERANCE, assert_matches_torch, rel_error

seeds = st.integers(0, 2**32 - 1)
nchw = st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.integers(1, 6))


def random(shape, seed, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def gradients_of(fn, arrays, grad_out):
    """Output and the gradient of every array, for sum(fn(*arrays) * grad_out), through tinyse's autograd."""
    tensors = [Tensor(a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    out.backward(grad_out)
    return [out.data] + [t.grad for t in tensors]


# --- each fused op: its chain of separate tinyse ops, its torch twin, and the shapes of its inputs ---------
def running_statistics(x):
    """Fixed running mean and variance (C,) for eval mode, in x's dtype and on its device (x a tinyse Tensor or a
    torch tensor): means from -0.5 to 0.5, variances from 0.5 to 1.5, so eval normalises unlike training."""
    channels = x.shape[1]
    mean, var = np.linspace(-0.5, 0.5, channels), np.linspace(0.5, 1.5, channels)
    if isinstance(x, torch.Tensor):
        return torch.from_numpy(mean).to(x.dtype), torch.from_numpy(var).to(x.dtype)
    return to_device(mean.astype(x.dtype), x.device), to_device(var.astype(x.dtype), x.device)


def bn_relu(x, g, b):
    return F.batch_norm_relu(x, g, b, None, None, training=True)


def bn_relu_eval(x, g, b):
    return F.batch_norm_relu(x, g, b, *running_statistics(x), training=False)


FUSED = {  # name: (fused op, the same as separate tinyse ops, the same in torch, input shapes from an NCHW shape)
    "batch_norm_relu": (
        bn_relu,
        lambda x, g, b: F.relu(F.batch_norm(x, g, b, None, None, training=True)),
        lambda x, g, b: TF.relu(TF.batch_norm(x, None, None, g, b, training=True)),
        lambda shape: [shape, shape[1:2], shape[1:2]],
    ),
    "batch_norm_relu_eval": (  # eval mode: normalised by the running statistics, not the batch's
        bn_relu_eval,
        lambda x, g, b: F.relu(F.batch_norm(x, g, b, *running_statistics(x), training=False)),
        lambda x, g, b: TF.relu(TF.batch_norm(x, *running_statistics(x), g, b, training=False)),
        lambda shape: [shape, shape[1:2], shape[1:2]],
    ),
    "se_scale_add_relu": (
        F.se_scale_add_relu,
        lambda u, s, r: F.relu(F.se_scale(u, s) + r),
        lambda u, s, r: TF.relu(u * s[:, :, None, None] + r),
        lambda shape: [shape, shape[:2], shape],
    ),
    "add_relu": (  # without gates: a residual unit without SE
        F.add_relu,
        lambda u, r: F.relu(u + r),
        lambda u, r: TF.relu(u + r),
        lambda shape: [shape, shape],
    ),
}


def fused_inputs(name, shape, seed, dtype=np.float64):
    if name == "batch_norm_relu":
        assume(shape[0] * shape[2] * shape[3] > 1)  # batch norm needs more than one value per channel
    return [random(input_shape, seed + k, dtype) for k, input_shape in enumerate(FUSED[name][3](shape))]


@pytest.mark.parametrize("name", FUSED)
@given(shape=nchw, seed=seeds)
def test_fused_op_equals_the_chain(name, shape, seed):
    """Forward and the gradient of every input equal the same chain run as separate ops."""
    fused_op, chain, _, _ = FUSED[name]
    arrays = fused_inputs(name, shape, seed)
    grad_out = random(shape, seed + 3)
    fused = gradients_of(fused_op, arrays, grad_out)
    separate = gradients_of(chain, arrays, grad_out)
    for got, expected in zip(fused, separate):
        assert rel_error(got, expected) < TORCH_TOLERANCE[np.float64]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FUSED)
@given(shape=nchw, seed=seeds)
def test_fused_op_matches_torch(name, dtype, device, shape, seed):
    """Forward and the gradient of every input equal torch's composition of the same ops (both batch norm modes)."""
    fused_op, _, torch_fn, _ = FUSED[name]
    assert_matches_torch(fused_op, torch_fn, fused_inputs(name, shape, seed, dtype), device, seed)


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_batch_norm_relu_gradcheck(training):
    """Against finite differences, in both modes (this seed keeps every pre-ReLU value well off the kink at 0,
    and the ReLU stops a good share of them, so its mask is at work in the backward)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 3, 3))
    gamma, beta = np.array([1.3, -0.7]), np.array([0.05, 0.1])
    statistics = (None, None) if training else running_statistics(Tensor(x))
    pre_relu = F.batch_norm(Tensor(x), Tensor(gamma), Tensor(beta), *statistics, training=training).data
    assert np.abs(pre_relu).min() > 1e-3 and 0.2 < np.mean(pre_relu > 0) < 0.8
    assert gradcheck(bn_relu if training else bn_relu_eval, x, gamma, beta) < GRADCHECK_TOLERANCE


def test_batch_norm_relu_in_eval_mode_uses_running_statistics():
    rng = np.random.default_rng(6)
    x, mean, var = rng.standard_normal((4, 3, 2, 2)), rng.standard_normal(3), rng.random(3) + 0.5
    fused = F.batch_norm_relu(Tensor(x), None, None, mean, var, training=False).data
    expected = np.maximum((x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5), 0)
    assert rel_error(fused, expected) < TORCH_TOLERANCE[np.float64]


# --- SE scale + residual add + relu ----------------------------------------------------------------
@pytest.mark.parametrize("gated", [True, False], ids=["se_scale_add_relu", "add_relu"])
def test_scale_add_relu_gradcheck(gated):
    """Against finite differences, with the ReLU's input (u s + shortcut, or u + shortcut) of either sign and at
    least 0.05 off the kink at 0."""
    rng = np.random.default_rng(7)
    u, s = rng.standard_normal((2, 3, 3, 2)), rng.standard_normal((2, 3))
    pre_relu = rng.choice([-1.0, 1.0], u.shape) * rng.uniform(0.05, 2.0, u.shape)
    if gated:
        assert gradcheck(F.se_scale_add_relu, u, s, pre_relu - u * s[:, :, None, None]) < GRADCHECK_TOLERANCE
    else:
        assert gradcheck(F.add_relu, u, pre_relu - u) < GRADCHECK_TOLERANCE


def test_se_scale_add_relu_names_the_bad_shapes():
    u, s = Tensor(np.zeros((2, 3, 4, 4))), Tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"shortcut \(2, 3, 4, 5\)"):
        F.se_scale_add_relu(u, s, Tensor(np.zeros((2, 3, 4, 5))))
    with pytest.raises(ValueError, match=r"s \(3, 2\)"):
        F.se_scale_add_relu(u, Tensor(np.zeros((3, 2))), u)


# --- the GPU kernels against the NumPy path -----------------------------------------------------------
@pytest.mark.parametrize("device", [d for d in DEVICES if getattr(d, "values", [d])[0] == "gpu"])
def test_cupy_kernels_equal_the_numpy_path(device):
    """The ElementwiseKernels (bn + relu, scale + add + relu, and the ReLU's backward) give NumPy's numbers."""
    rng = np.random.default_rng(8)
    shape = (4, 5, 6, 7)
    for fused_op, _, _, input_shapes in FUSED.values():
        arrays = [rng.standard_normal(input_shape).astype(np.float32) for input_shape in input_shapes(shape)]
        grad_out = rng.standard_normal(shape).astype(np.float32)
        on_cpu = gradients_of(fused_op, arrays, grad_out)
        on_gpu = gradients_of(fused_op, [to_device(a, device) for a in arrays], to_device(grad_out, device))
        for got, expected in zip(on_gpu, on_cpu):
            assert rel_error(got, expected) < TORCH_TOLERANCE[np.float32]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gated", [False, True], ids=["add_relu", "se_scale_add_relu"])
def test_a_float64_shortcut_into_a_float32_block_gives_what_numpy_gives(device, gated):
    """NumPy writes u's dtype (float32) whatever the shortcut's; a CuPy kernel takes one dtype and would raise.
    Both devices give the float32 result, and the float64 shortcut gets a float64 gradient."""
    rng = np.random.default_rng(5)
    u = Tensor(rng.standard_normal((2, 3, 4, 4)).astype(np.float32), requires_grad=True).to(device)
    s = Tensor(rng.random((2, 3)), requires_grad=True).to(device) if gated else None  # float64 too
    shortcut = Tensor(rng.standard_normal((2, 3, 4, 4)), requires_grad=True).to(device)
    y = F.se_scale_add_relu(u, s, shortcut) if gated else F.add_relu(u, shortcut)
    expected = np.maximum(u.numpy() * (s.numpy()[:, :, None, None] if gated else 1) + shortcut.numpy(), 0)
    assert y.dtype == np.float32 and rel_error(y.numpy(), expected) < 1e-6
    y.sum().backward()
    assert u.grad.dtype == np.float32 and shortcut.grad.dtype == np.float64
    assert np.array_equal(to_device(shortcut.grad, "cpu"), (expected > 0).astype(np.float64))
