"""conv2d: finite differences, PyTorch parity, the naive loop, im2col/col2im, dtypes, edges, errors.

References are independent of the code under test: PyTorch (CPU, same dtype, through
conftest's ``assert_matches_torch``), central finite differences (tinyse.gradcheck, float64),
the obvious loops ``conv2d_naive`` / ``conv2d_naive_backward``, the plain matrix-product version
``conv2d_im2col`` / ``conv2d_im2col_backward``, and the inner-product identity that defines an adjoint.
"""
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import tinyse.functional as F
from tinyse import parallel
from tinyse.backend import device_of, to_device
from tinyse.gradcheck import gradcheck
from tinyse.ops.conv import (
    Conv2d,
    col2im,
    conv2d_im2col,
    conv2d_im2col_backward,
    conv2d_naive,
    conv2d_naive_backward,
    conv_input_grad,
    im2col,
    image_rows,
    output_size,
    row_width,
    shifted,
)
from tinyse.tensor import Tensor

from conftest import (
    DEVICES,
    DTYPES,
    GRADCHECK_TOLERANCE,
    TORCH_TOLERANCE,
    assert_matches_torch,
    random_array,
    rel_error,
    requires_gpu,
    torch_run,
)

NO_LIMIT = 10**9


@pytest.fixture(autouse=True, scope="module")
def shifted_rows_for_few_channels_too():
    """The random cases have 1-8 channels, mostly below conv.MIN_SHIFTED_CHANNELS, under which the CPU takes
    im2col at stride 1 for speed; the threshold changes no number, so here it is 1 and every stride-1 case
    runs the shifted rows. test_few_input_channels_take_im2col checks the real threshold."""
    from tinyse.ops import conv

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv, "MIN_SHIFTED_CHANNELS", 1)
        yield


# --- random cases ------------------------------------------------------------------------
@st.composite
def conv_cases(draw, max_input=NO_LIMIT, max_weight=NO_LIMIT):
    """A random valid conv2d setting: shapes of x, weight, bias, stride, padding, groups, seed.

    Batch 1-4, channels 1-8, spatial 1-9, kernel 1-5 per axis (KH != KW allowed),
    stride 1-3, padding 0-2; groups 1 (dense), any divisor of the channels
    (grouped), or the channels themselves (depthwise). ``max_input`` /
    ``max_weight`` cap the element counts (finite differences cost two forwards
    per element); the caps shrink the ranges drawn, so no example is thrown away.
    """
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride, padding = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    assume(kh <= h + 2 * padding and kw <= w + 2 * padding)
    c = draw(st.integers(1, max(1, min(8, max_input // (h * w)))))
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    if kind == "dense":
        groups = 1
    elif kind == "grouped":
        groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    else:
        groups = c
    # c * kh * kw <= 8 * 25 = 200, so a weight cap of at least 200 always leaves og >= 1
    og = draw(st.integers(1, max(1, min(8 // groups, max_weight // (c * kh * kw)))))  # output channels per group
    n = draw(st.integers(1, max(1, min(4, max_input // (c * h * w)))))
    return {
        "x_shape": (n, c, h, w),
        "weight_shape": (groups * og, c // groups, kh, kw),
        "bias": draw(st.booleans()),
        "stride": stride,
        "padding": padding,
        "groups": groups,
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def conv_arrays(case, dtype=np.float64):
    """x, weight and (maybe) bias for a case, from np.random.default_rng(seed)."""
    rng = np.random.default_rng(case["seed"])
    x = random_array(rng, case["x_shape"], dtype)
    weight = random_array(rng, case["weight_shape"], dtype)
    bias = random_array(rng, case["weight_shape"][:1], dtype) if case["bias"] else None
    return x, weight, bias


# --- running one op in both libraries --------------------------------------------------------
def compare_conv(x, weight, bias, stride=1, padding=0, groups=1, device="cpu", seed=0):
    """conv2d (bias an array or None) in tinyse on ``device`` against torch.nn.functional.conv2d.

    ``assert_matches_torch`` checks the output, every gradient, their dtype and the output's device;
    the gradients' device is checked here.
    """
    conv_args = {"stride": stride, "padding": padding, "groups": groups}
    _, inputs = assert_matches_torch(
        lambda x, w, b: F.conv2d(x, w, b, **conv_args),
        lambda x, w, b: torch.nn.functional.conv2d(x, w, b, **conv_args),
        [x, weight, bias], device, seed,
    )
    for i, t in enumerate(inputs):
        if t is not None:
            assert device_of(t.grad) == device, f"gradient of input {i} is on {device_of(t.grad)}, not {device}"


def fast_conv2d(x, weight, bias, grad_out, **conv_args):
    """The Conv2d op on raw arrays: (y, dL/dx, dL/dW, dL/db) for this dL/dy (dL/db even without a bias)."""
    op = Conv2d(**conv_args)
    op.needs_input_grad = (True, True, True)
    y = op.forward(x, weight, bias)
    return (y, *op.backward(grad_out))


def assert_all_close(actual, expected, names=("y", "dL/dx", "dL/dW", "dL/db")):
    """Each array of ``actual`` equals the one of ``expected`` to float64's torch tolerance (None: not compared)."""
    for name, a, e in zip(names, actual, expected):
        if e is not None:
            assert rel_error(a, e) < TORCH_TOLERANCE[np.float64], name


def case_args(case):
    """The keyword arguments of conv2d that a case sets."""
    return {"stride": case["stride"], "padding": case["padding"], "groups": case["groups"]}


# --- 1. gradients against finite differences --------------------------------------------------
@settings(max_examples=40)
@given(case=conv_cases(max_input=300, max_weight=250))
def test_conv2d_gradcheck(case):
    """Analytic dL/dx, dL/dW, dL/db (with and without bias) match central finite differences."""
    x, weight, bias = conv_arrays(case)
    conv_args = case_args(case)
    inputs = [x, weight] if bias is None else [x, weight, bias]
    error = gradcheck(lambda *t: F.conv2d(*t, **conv_args), *inputs)
    assert error < GRADCHECK_TOLERANCE


def test_conv2d_gradcheck_depthwise_nonsquare():
    """Finite differences on a fixed depthwise (groups == C, channel multiplier 2), 2x3-kernel, strided case."""
    rng = np.random.default_rng(1)
    x, weight, bias = random_array(rng, (2, 3, 6, 7)), random_array(rng, (6, 1, 2, 3)), random_array(rng, (6,))
    error = gradcheck(lambda *t: F.conv2d(*t, stride=2, padding=1, groups=3), x, weight, bias)
    assert error < GRADCHECK_TOLERANCE


# --- 2. parity with PyTorch ----------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=80)
@given(case=conv_cases())
def test_conv2d_matches_torch(case, dtype, device):
    """Random shapes/settings: output and all gradients equal PyTorch's (float64 1e-10, float32 1e-4)."""
    x, weight, bias = conv_arrays(case, dtype)
    compare_conv(x, weight, bias, **case_args(case), device=device, seed=case["seed"])


CONV_TABLE = [
    # (x shape, weight shape, stride, padding, groups)
    pytest.param((2, 3, 8, 8), (4, 3, 3, 3), 1, 1, 1, id="3x3-same"),
    pytest.param((2, 4, 9, 7), (6, 2, 3, 3), 2, 1, 2, id="groups2-stride2"),
    pytest.param((3, 4, 6, 6), (4, 1, 3, 3), 1, 1, 4, id="depthwise"),
    pytest.param((2, 3, 6, 6), (6, 1, 5, 5), 3, 2, 3, id="depthwise-multiplier2-5x5"),
    pytest.param((2, 4, 7, 9), (5, 4, 2, 5), 2, 0, 1, id="nonsquare-2x5"),
    pytest.param((1, 8, 5, 5), (8, 8, 1, 1), 1, 0, 1, id="pointwise-1x1"),
    pytest.param((4, 8, 4, 6), (8, 2, 4, 1), 3, 2, 4, id="groups4-4x1-stride3"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("x_shape, weight_shape, stride, padding, groups", CONV_TABLE)
def test_conv2d_table_matches_torch(x_shape, weight_shape, stride, padding, groups, with_bias, dtype, device):
    """A fixed table of typical layers (same-padding, grouped, depthwise, 1x1, non-square) equals PyTorch."""
    rng = np.random.default_rng(7)
    x, weight = random_array(rng, x_shape, dtype), random_array(rng, weight_shape, dtype)
    bias = random_array(rng, weight_shape[:1], dtype) if with_bias else None
    compare_conv(x, weight, bias, stride, padding, groups, device)


# --- 3. the obvious version and the plain im2col version equal the fast one ---------------------------
def torch_conv2d(x, weight, bias, grad_out, **conv_args):
    """torch.nn.functional.conv2d's (y, dL/dx, dL/dW, dL/db) for this dL/dy (dL/db None without a bias)."""
    return torch_run(lambda *t: torch.nn.functional.conv2d(*t, **conv_args), [x, weight, bias], grad_out)


PLAIN_VERSIONS = {  # name: (forward, backward) on raw arrays, whole batch at once
    "naive loop": (conv2d_naive, conv2d_naive_backward),  # one small product per output pixel and group
    "im2col": (conv2d_im2col, conv2d_im2col_backward),  # y = W @ cols, dL/dW = dL/dy @ cols^T, col2im(W^T dL/dy)
}


@pytest.fixture(params=["images in a row", "one image per product"])
def product_pixels(request):
    """Both weight gradients of the shifted rows: small images (all the random cases) one after another in each
    product (the default), or one product per image, as larger images run (MIN_PRODUCT_PIXELS 0)."""
    from tinyse.ops import conv

    with pytest.MonkeyPatch.context() as patch:
        if request.param == "one image per product":
            patch.setattr(conv, "MIN_PRODUCT_PIXELS", 0)
        yield request.param


@pytest.mark.parametrize("version", PLAIN_VERSIONS)
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=conv_cases())
def test_plain_versions_forward_and_backward_equal_the_fast_op_and_torch(version, case, product_pixels):
    """conv2d_naive / conv2d_naive_backward and conv2d_im2col / conv2d_im2col_backward == the Conv2d op (in chunks,
    shifted rows at stride 1) == torch: y, dL/dx, dL/dW, dL/db.

    The cases (strides 1-3, padding 0-2, dense, grouped, depthwise, KH != KW) meet every fast algorithm:
    shifted rows and im2col, the flipped-kernel and the col2im input gradient.
    """
    forward, backward = PLAIN_VERSIONS[version]
    x, weight, bias = conv_arrays(case)
    conv_args = case_args(case)
    y = forward(x, weight, bias, **conv_args)
    grad_out = np.random.default_rng([case["seed"], 1]).standard_normal(y.shape)
    plain = (y, *backward(x, weight, grad_out, **conv_args))
    assert_all_close(fast_conv2d(x, weight, bias, grad_out, **conv_args), plain)
    assert_all_close(plain, torch_conv2d(x, weight, bias, grad_out, **conv_args))


def test_conv2d_naive_backward_on_a_small_case_by_hand():
    """One input pixel, one 1x1 filter: dL/dx = w dL/dy, dL/dw = x dL/dy, dL/db = dL/dy (the product rule)."""
    x, weight, grad_out = np.array([[[[3.0]]]]), np.array([[[[2.0]]]]), np.array([[[[5.0]]]])
    grad_x, grad_weight, grad_bias = conv2d_naive_backward(x, weight, grad_out)
    assert grad_x.item() == 10.0 and grad_weight.item() == 15.0 and grad_bias.tolist() == [5.0]


@settings(max_examples=60)
@given(
    n=st.integers(1, 4), c=st.integers(1, 8), h=st.integers(1, 9), w=st.integers(1, 9),
    kh=st.integers(1, 5), kw=st.integers(1, 5), stride=st.integers(1, 3), padding=st.integers(0, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_col2im_is_adjoint_of_im2col(n, c, h, w, kh, kw, stride, padding, seed):
    """<im2col(x), cols> == <x, col2im(cols)> for random x and cols: col2im is im2col's transpose.

    This is exactly what makes the backward of the convolution's input correct.
    """
    assume(kh <= h + 2 * padding and kw <= w + 2 * padding)
    rng = np.random.default_rng(seed)
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    x = rng.standard_normal((n, c, h, w))
    cols = rng.standard_normal((n, c, kh, kw, oh, ow))

    x_cols = im2col(x, kh, kw, stride, padding)
    back = col2im(cols, x.shape, stride, padding)
    assert x_cols.shape == cols.shape and back.shape == x.shape
    lhs, rhs = np.vdot(x_cols, cols), np.vdot(x, back)
    # Cauchy-Schwarz bounds both sides by |x_cols| |cols|: the scale of rounding errors
    assert abs(lhs - rhs) <= 1e-12 * np.linalg.norm(x_cols) * np.linalg.norm(cols)


def test_im2col_columns_are_receptive_fields():
    """Each column of im2col is the padded receptive field it claims to be, read straight from x."""
    rng = np.random.default_rng(3)
    x, kh, kw, stride, padding = rng.standard_normal((2, 3, 7, 6)), 3, 2, 2, 1
    cols = im2col(x, kh, kw, stride, padding)  # (N, C, KH, KW, OH, OW)
    x_pad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    for row in range(cols.shape[4]):
        for col in range(cols.shape[5]):
            field = x_pad[:, :, row * stride : row * stride + kh, col * stride : col * stride + kw]  # (N, C, KH, KW)
            np.testing.assert_array_equal(cols[..., row, col], field)


@requires_gpu
@pytest.mark.gpu
@settings(max_examples=40)
@given(
    n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 9),
    kh=st.integers(1, 4), kw=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 2),
    dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16),
)
def test_im2col_and_col2im_kernels_on_the_gpu_equal_the_numpy_path(n, c, h, w, kh, kw, stride, padding, dtype, seed):
    """The CUDA kernels (one thread per value written) against the NumPy slicing loops they replace."""
    assume(kh <= h + 2 * padding and kw <= w + 2 * padding)
    rng = np.random.default_rng(seed)
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    x = random_array(rng, (n, c, h, w), dtype)
    cols = random_array(rng, (n, c, kh, kw, oh, ow), dtype)
    x_cols = im2col(to_device(x, "gpu"), kh, kw, stride, padding)
    assert device_of(x_cols) == "gpu" and x_cols.dtype == dtype
    np.testing.assert_array_equal(to_device(x_cols, "cpu"), im2col(x, kh, kw, stride, padding))  # copies: exact
    back = col2im(to_device(cols, "gpu"), x.shape, stride, padding)
    assert device_of(back) == "gpu" and back.dtype == dtype
    assert rel_error(back, col2im(cols, x.shape, stride, padding)) < TORCH_TOLERANCE[dtype]  # sums, in another order


@settings(max_examples=40)
@given(
    n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7),
    kh=st.integers(1, 4), kw=st.integers(1, 4), padding=st.integers(0, 2), seed=st.integers(0, 2**16),
)
def test_shifted_row_views_equal_im2col_after_cropping(n, c, h, w, kh, kw, padding, seed):
    """The stride-1 fast path's views (one contiguous run of the row layout per kernel offset) hold im2col's columns.

    Its rows are RW = max(W + P, OW) wide (the P zeros after a row pad both it and the next);
    the first OW entries of each are the real ones.
    """
    assume(kh <= h + 2 * padding and kw <= w + 2 * padding)
    x = np.random.default_rng(seed).standard_normal((n, c, h, w))
    oh, ow, rw = output_size(h, kh, 1, padding), output_size(w, kw, 1, padding), row_width(w, kw, 1, padding)
    assert rw == max(w + padding, ow)
    x_rows = image_rows(x, kh, kw, padding)
    cols = im2col(x, kh, kw, 1, padding)  # (N, C, KH, KW, OH, OW)
    for i in range(kh):
        for j in range(kw):
            view = shifted(x_rows, i, j, oh, rw, padding, 1).reshape(n, c, oh, rw)
            np.testing.assert_array_equal(view[..., :ow], cols[:, :, i, j])


@settings(max_examples=40)
@given(
    n=st.integers(1, 3), groups=st.integers(1, 3), cg=st.integers(1, 3), og=st.integers(1, 3),
    k=st.integers(1, 5), extra_h=st.integers(0, 4), extra_w=st.integers(0, 4), data=st.data(),
)
def test_stride1_input_grad_as_flipped_conv_equals_col2im(n, groups, cg, og, k, extra_h, extra_w, data):
    """The stride-1 shortcut for dL/dx (a convolution with the flipped, transposed kernel) equals col2im(W^T dL/dy)."""
    padding = data.draw(st.integers(0, k - 1), label="padding")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    x_shape = (n, groups * cg, max(1, k - 2 * padding) + extra_h, max(1, k - 2 * padding) + extra_w)
    weight = rng.standard_normal((groups * og, cg, k, k))
    oh, ow = output_size(x_shape[2], k, 1, padding), output_size(x_shape[3], k, 1, padding)
    grad_out = rng.standard_normal((n, groups * og, oh, ow))
    grad_y = grad_out.reshape(n, groups, og, oh * ow)
    grad_cols = weight.reshape(groups, og, cg * k * k).transpose(0, 2, 1) @ grad_y
    obvious = col2im(grad_cols.reshape(n, groups * cg, k, k, oh, ow), x_shape, 1, padding)
    fast = conv_input_grad(grad_out, weight, x_shape, 1, padding, groups)
    assert fast.shape == x_shape
    assert rel_error(fast, obvious) < TORCH_TOLERANCE[np.float64]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_in_many_chunks_equals_naive(monkeypatch, threads, stride, product_pixels):
    """Forward and both gradients are the same whether the batch runs whole or in uneven chunks on a thread pool."""
    monkeypatch.setenv("TINYSE_NUM_THREADS", str(threads))
    monkeypatch.setattr(parallel, "CACHE_BYTES", 1)  # one image per chunk
    rng = np.random.default_rng(11)
    x, weight = rng.standard_normal((7, 4, 6, 5)), rng.standard_normal((6, 2, 3, 3))
    grad_out = rng.standard_normal(conv2d_naive(x, weight, None, stride, 1, 2).shape)
    op = Conv2d(stride=stride, padding=1, groups=2)
    op.needs_input_grad = (True, True, False)
    y = op.forward(x, weight)
    grad_x, grad_weight, _ = op.backward(grad_out)
    assert rel_error(y, conv2d_naive(x, weight, None, stride, 1, 2)) < TORCH_TOLERANCE[np.float64]
    tx, tw = torch.from_numpy(x).requires_grad_(), torch.from_numpy(weight).requires_grad_()
    torch.nn.functional.conv2d(tx, tw, stride=stride, padding=1, groups=2).backward(torch.from_numpy(grad_out))
    assert rel_error(grad_x, tx.grad.numpy()) < TORCH_TOLERANCE[np.float64]
    assert rel_error(grad_weight, tw.grad.numpy()) < TORCH_TOLERANCE[np.float64]


@pytest.mark.parametrize("x_shape, weight_shape, padding, groups", [
    ((3, 4, 7, 6), (6, 4, 3, 3), 1, 1),
    ((2, 4, 5, 5), (4, 2, 3, 2), 0, 2),
    ((2, 3, 6, 4), (3, 1, 5, 5), 2, 3),
])
def test_stride1_conv_through_im2col_as_on_the_gpu_equals_torch(monkeypatch, x_shape, weight_shape, padding, groups):
    """The GPU runs stride-1 convs through im2col (``uses_shifted_rows``); here that path runs on NumPy."""
    from tinyse.ops import conv
    monkeypatch.setattr(conv, "uses_shifted_rows", lambda xp, stride, channels_per_group: False)
    rng = np.random.default_rng(5)
    compare_conv(rng.standard_normal(x_shape), rng.standard_normal(weight_shape), None, 1, padding, groups)


def test_few_input_channels_take_im2col(monkeypatch):
    """On the CPU at stride 1, fewer than MIN_SHIFTED_CHANNELS input channels per group (a 3-channel stem) run
    im2col, more run the shifted rows; the GPU always runs im2col. Both give torch's numbers."""
    from tinyse.ops import conv

    monkeypatch.setattr(conv, "MIN_SHIFTED_CHANNELS", 8)
    assert not conv.uses_shifted_rows(np, 1, 7) and conv.uses_shifted_rows(np, 1, 8)
    assert not conv.uses_shifted_rows(np, 2, 8) and not conv.uses_shifted_rows(object(), 1, 8)
    shifted_calls = []
    original = conv.conv_forward_shifted_rows
    monkeypatch.setattr(conv, "conv_forward_shifted_rows", lambda *args: shifted_calls.append(1) or original(*args))
    rng = np.random.default_rng(13)
    for channels, groups, shifted_rows in [(3, 1, False), (8, 1, True), (16, 4, False)]:  # Cg = 3, 8, 4
        shifted_calls.clear()
        compare_conv(rng.standard_normal((2, channels, 6, 5)), rng.standard_normal((4, channels // groups, 3, 3)),
                     None, padding=1, groups=groups)
        assert bool(shifted_calls) == shifted_rows, (channels, groups)


def test_conv2d_stays_right_when_calls_of_other_shapes_reuse_the_work_arrays():
    """Work arrays are kept per thread between calls: a call must not see what an earlier one left.

    (H=30, P=2) and (H=32, P=1) lay their images out in row arrays of the same shape, with the
    data at other places; a smaller batch reuses the front of a larger one's arrays.
    """
    rng = np.random.default_rng(12)
    cases = [((4, 3, 30, 30), 2), ((4, 3, 32, 31), 1), ((2, 3, 30, 30), 2), ((4, 3, 32, 31), 1), ((3, 3, 30, 30), 2)]
    for seed, (x_shape, padding) in enumerate(cases):
        compare_conv(rng.standard_normal(x_shape), rng.standard_normal((5, 3, 3, 3)), None, padding=padding, seed=seed)


# --- 4. dtypes ------------------------------------------------------------------------------
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_keeps_dtype(dtype, with_bias):
    """float32 in -> float32 output and gradients (x, W, b); float64 stays float64 (naive and im2col versions too).

    Checked on the op's own backward too: autograd casts gradients to the input's
    dtype, which would hide a backward that silently computes in float64.
    """
    rng = np.random.default_rng(4)
    x = Tensor(random_array(rng, (2, 4, 5, 5), dtype), requires_grad=True)
    weight = Tensor(random_array(rng, (6, 2, 3, 3), dtype), requires_grad=True)
    bias = Tensor(random_array(rng, (6,), dtype), requires_grad=True) if with_bias else None
    op = Conv2d(stride=2, padding=1, groups=2)
    y = op(x, weight, bias)
    grad_out = random_array(rng, y.shape, dtype)
    assert y.dtype == dtype
    assert all(g.dtype == dtype for g in op.backward(grad_out) if g is not None)
    y.backward(grad_out)
    assert x.grad.dtype == dtype and weight.grad.dtype == dtype
    if with_bias:
        assert bias.grad.dtype == dtype
    bias_data = None if bias is None else bias.data
    assert conv2d_naive(x.data, weight.data, bias_data, 2, 1, 2).dtype == dtype
    assert all(g.dtype == dtype for g in conv2d_naive_backward(x.data, weight.data, grad_out, 2, 1, 2))
    assert conv2d_im2col(x.data, weight.data, bias_data, 2, 1, 2).dtype == dtype
    assert all(g.dtype == dtype for g in conv2d_im2col_backward(x.data, weight.data, grad_out, 2, 1, 2))


# --- 5. edge cases, each against PyTorch ----------------------------------------------------------
CONV_EDGES = [
    # (x shape, weight shape, stride, padding)
    pytest.param((2, 3, 7, 7), (4, 3, 3, 3), 2, 0, id="7x7-k3-stride2-not-dividing"),
    pytest.param((2, 3, 8, 8), (4, 3, 3, 3), 3, 0, id="8x8-k3-stride3-not-dividing"),
    pytest.param((2, 3, 8, 8), (4, 3, 3, 3), 3, 1, id="8x8-k3-stride3-pad1"),
    pytest.param((3, 4, 1, 1), (5, 4, 1, 1), 1, 0, id="1x1-map"),
    pytest.param((2, 4, 1, 1), (5, 4, 3, 3), 1, 1, id="1x1-map-k3-pad1"),
    pytest.param((2, 3, 5, 5), (4, 3, 5, 5), 1, 0, id="kernel-equals-input"),
    pytest.param((2, 3, 3, 3), (4, 3, 5, 5), 2, 1, id="kernel-equals-padded-input"),
    pytest.param((2, 3, 2, 4), (4, 3, 4, 5), 1, 1, id="kernel-equals-padded-nonsquare"),
    pytest.param((1, 3, 6, 6), (2, 3, 3, 3), 1, 1, id="batch-1"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, weight_shape, stride, padding", CONV_EDGES)
def test_conv2d_edge_cases_match_torch(x_shape, weight_shape, stride, padding, dtype, device):
    """Strides that leave pixels over, 1x1 maps, a kernel as large as the padded input (1x1 output), batch 1."""
    rng = np.random.default_rng(5)
    x, weight = random_array(rng, x_shape, dtype), random_array(rng, weight_shape, dtype)
    bias = random_array(rng, weight_shape[:1], dtype)
    compare_conv(x, weight, bias, stride, padding, device=device)


# --- 6. bad input: clear errors that name the shapes ---------------------------------------------
def conv(x_shape, weight_shape, bias_shape=None, **conv_args):
    """conv2d on zero tensors of the given shapes (only the argument checks matter here)."""
    bias = None if bias_shape is None else Tensor(np.zeros(bias_shape))
    return F.conv2d(Tensor(np.zeros(x_shape)), Tensor(np.zeros(weight_shape)), bias, **conv_args)


def test_conv2d_error_channel_mismatch():
    """Input channels that the weight does not expect: the error names both shapes and channel counts."""
    with pytest.raises(ValueError, match=re.escape("input (2, 3, 5, 5) has 3 channels but weight (4, 2, 3, 3)")):
        conv((2, 3, 5, 5), (4, 2, 3, 3))
    with pytest.raises(ValueError, match=re.escape("weight (4, 2, 3, 3) with groups=2 expects 4")):
        conv((2, 6, 5, 5), (4, 2, 3, 3), groups=2)


def test_conv2d_error_groups_not_dividing():
    """groups that do not divide the input (or output) channels: the error names groups and channels."""
    with pytest.raises(ValueError, match=re.escape("groups=2 must divide both input channels 3 and output channels 4")):
        conv((2, 3, 5, 5), (4, 1, 3, 3), groups=2)
    with pytest.raises(ValueError, match=re.escape("groups=2 must divide both input channels 4 and output channels 3")):
        conv((2, 4, 5, 5), (3, 2, 3, 3), groups=2)


def test_conv2d_error_kernel_larger_than_padded_input():
    """A kernel that does not fit in the padded input: the error gives both sizes and the input shape."""
    message = "kernel 5x5 is larger than the padded input 4x4 (input (1, 2, 2, 2)"
    with pytest.raises(ValueError, match=re.escape(message)):
        conv((1, 2, 2, 2), (3, 2, 5, 5), padding=1)
    with pytest.raises(ValueError, match=re.escape("kernel 2x6 is larger than the padded input 5x5")):
        conv((1, 2, 5, 5), (3, 2, 2, 6))


def test_conv2d_error_input_not_4d():
    """A 3-D input (a forgotten batch axis) is refused, naming its shape."""
    with pytest.raises(ValueError, match=re.escape("expects input of shape (N, C, H, W), got (3, 5, 5)")):
        conv((3, 5, 5), (4, 3, 3, 3))


def test_conv2d_error_weight_not_4d():
    """A 3-D weight is refused, naming its shape."""
    with pytest.raises(ValueError, match=re.escape("expects weight of shape (O, C/groups, KH, KW), got (4, 3, 3)")):
        conv((2, 3, 5, 5), (4, 3, 3))


def test_conv2d_error_bias_shape_and_settings():
    """A bias that is not (O,), and stride < 1 or padding < 0, are refused with the values given."""
    with pytest.raises(ValueError, match=re.escape("bias must have shape (4,), got (3,)")):
        conv((2, 3, 5, 5), (4, 3, 3, 3), bias_shape=(3,))
    with pytest.raises(ValueError, match=re.escape("got stride=0, padding=0")):
        conv((2, 3, 5, 5), (4, 3, 3, 3), stride=0)
    with pytest.raises(ValueError, match=re.escape("got stride=1, padding=-1")):
        conv((2, 3, 5, 5), (4, 3, 3, 3), padding=-1)


def test_conv2d_naive_checks_arguments_too():
    """The naive version refuses the same bad arguments with the same message."""
    with pytest.raises(ValueError, match=re.escape("input (2, 3, 5, 5) has 3 channels but weight (4, 2, 3, 3)")):
        conv2d_naive(np.zeros((2, 3, 5, 5)), np.zeros((4, 2, 3, 3)))
