"""Pooling: finite differences, PyTorch parity, dtypes, edge cases, errors, and the max-pool tie rule.

Covers max_pool2d, avg_pool2d, global_avg_pool2d and global_max_pool2d. The
references are PyTorch (CPU, same dtype) and central finite differences
(tinyse.gradcheck, float64). Max pooling is checked on distinct values
(conftest.distinct_values) wherever a tie would make the gradient ambiguous;
ties themselves are tested against PyTorch's rule (the first maximum wins).
"""
import re

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tinyse.functional as F
from tinyse.gradcheck import gradcheck
from tinyse.ops import pool
from tinyse.tensor import Tensor
from tinyse.testing import emulated_cupy

from conftest import DEVICES, DTYPES, GRADCHECK_TOLERANCE, assert_matches_torch, distinct_values, random_array

NO_LIMIT = 10**9


# name -> (tinyse op, torch reference); windowed pools take (x, kernel_size, stride, padding)
WINDOWED = {
    "max": (F.max_pool2d, torch.nn.functional.max_pool2d),
    "avg": (F.avg_pool2d, torch.nn.functional.avg_pool2d),
}
GLOBAL = {
    "global_avg": (F.global_avg_pool2d, lambda x: x.mean(dim=(2, 3))),
    "global_max": (F.global_max_pool2d, lambda x: x.amax(dim=(2, 3))),
}


# --- random cases ------------------------------------------------------------------------
@st.composite
def pool_cases(draw, max_input=NO_LIMIT):
    """A random valid windowed-pool setting: x shape, kernel_size, stride, padding, seed.

    Batch 1-4, channels 1-8, spatial 1-9; kernel 1-5 (square as an int, or a
    (KH, KW) pair), stride 1-3 or None (= the kernel), padding 0..min(KH, KW)//2.
    ``max_input`` caps N*C*H*W by shrinking the ranges drawn.
    """
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh = draw(st.integers(1, 5))
    square = draw(st.booleans())
    kw = kh if square else draw(st.integers(1, 5))
    stride = draw(st.one_of(st.none(), st.integers(1, 3)))
    padding = draw(st.integers(0, min(kh, kw) // 2))
    assume(kh <= h + 2 * padding and kw <= w + 2 * padding)
    c = draw(st.integers(1, max(1, min(8, max_input // (h * w)))))
    n = draw(st.integers(1, max(1, min(4, max_input // (c * h * w)))))
    return {
        "x_shape": (n, c, h, w),
        "kernel_size": kh if square else (kh, kw),
        "stride": stride,
        "padding": padding,
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@st.composite
def global_cases(draw, max_input=NO_LIMIT):
    """(N, C, H, W) with batch 1-4, channels 1-8, spatial 1-9 (N*C*H*W capped at ``max_input``), and a seed."""
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    c = draw(st.integers(1, max(1, min(8, max_input // (h * w)))))
    n = draw(st.integers(1, max(1, min(4, max_input // (c * h * w)))))
    return {"x_shape": (n, c, h, w), "seed": draw(st.integers(0, 2**32 - 1))}


def pool_input(name, shape, seed, dtype=np.float64):
    """Input for pool ``name``: distinct values for the max pools (one winner per window), normal otherwise."""
    rng = np.random.default_rng(seed)
    if "max" in name:
        return distinct_values(rng, shape, dtype)
    return random_array(rng, shape, dtype)


def window_args(case):
    return {"kernel_size": case["kernel_size"], "stride": case["stride"], "padding": case["padding"]}


def pool_cases_for(name, max_input=NO_LIMIT):
    """The random cases of pool ``name``: shape, window and seed for max / avg, shape and seed for the global ones."""
    return pool_cases(max_input) if name in WINDOWED else global_cases(max_input)


def pool_functions(name, case):
    """(tinyse function, torch function) of pool ``name`` on one tensor, with ``case``'s window for max / avg."""
    if name in GLOBAL:
        return GLOBAL[name]
    ours, theirs = WINDOWED[name]
    args = window_args(case)
    return lambda t: ours(t, **args), lambda t: theirs(t, **args)


# --- running one op in both libraries (conftest.assert_matches_torch: output, dL/dx, dtypes) -------------------
def compare_windowed(name, x, kernel_size, stride=None, padding=0, device="cpu", seed=0):
    """max_pool2d / avg_pool2d with the same settings in both libraries."""
    case = {"kernel_size": kernel_size, "stride": stride, "padding": padding}
    assert_matches_torch(*pool_functions(name, case), [x], device, seed)


# --- 1. gradients against finite differences --------------------------------------------------
@settings(max_examples=40)
@pytest.mark.parametrize("name", [*WINDOWED, *GLOBAL])
@given(data=st.data())
def test_pool_gradcheck(name, data):
    """Every pool: analytic dL/dx matches central finite differences (overlapping windows too)."""
    case = data.draw(pool_cases_for(name, max_input=250))
    x = pool_input(name, case["x_shape"], case["seed"])
    assert gradcheck(pool_functions(name, case)[0], x) < GRADCHECK_TOLERANCE


# --- 2. parity with PyTorch ----------------------------------------------------------------
@settings(max_examples=80)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", [*WINDOWED, *GLOBAL])
@given(data=st.data())
def test_pool_matches_torch(name, dtype, device, data):
    """Random shapes and windows: output and dL/dx equal torch's max_pool2d / avg_pool2d, and its mean / amax
    over (H, W) for the global pools."""
    case = data.draw(pool_cases_for(name))
    x = pool_input(name, case["x_shape"], case["seed"], dtype)
    assert_matches_torch(*pool_functions(name, case), [x], device, case["seed"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pool_matches_adaptive_avg_pool(dtype, device):
    """global_avg_pool2d is torch's adaptive_avg_pool2d to 1x1, flattened to (N, C)."""
    x = random_array(np.random.default_rng(8), (3, 5, 6, 7), dtype)
    assert_matches_torch(
        F.global_avg_pool2d, lambda t: torch.nn.functional.adaptive_avg_pool2d(t, 1).flatten(1), [x], device
    )


POOL_TABLE = [
    # (x shape, kernel_size, stride, padding)
    pytest.param((2, 3, 8, 8), 2, None, 0, id="k2-default-stride"),
    pytest.param((2, 3, 9, 9), 3, 2, 1, id="k3-s2-p1-overlapping"),
    pytest.param((2, 4, 6, 6), 3, 1, 1, id="k3-s1-p1-same"),
    pytest.param((1, 2, 9, 7), 5, 2, 2, id="k5-s2-p2"),
    pytest.param((2, 3, 7, 7), (2, 3), None, 0, id="nonsquare-default-stride"),
    pytest.param((2, 3, 7, 8), (3, 5), 2, 1, id="nonsquare-stride2-pad1"),
    pytest.param((2, 3, 7, 8), (4, 2), (1, 2), 1, id="nonsquare-stride-pair"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", WINDOWED)
@pytest.mark.parametrize("x_shape, kernel_size, stride, padding", POOL_TABLE)
def test_windowed_pool_table_matches_torch(x_shape, kernel_size, stride, padding, name, dtype, device):
    """A fixed table (typical layers; non-square kernels, whose default stride is the kernel per axis) equals torch."""
    x = pool_input(name, x_shape, 9, dtype)
    compare_windowed(name, x, kernel_size, stride, padding, device)


# --- 4. dtypes ------------------------------------------------------------------------------
OPS = {
    "max": lambda: pool.MaxPool2d(3, 2, 1),
    "avg": lambda: pool.AvgPool2d(3, 2, 1),
    "global_avg": pool.GlobalAvgPool2d,
    "global_max": pool.GlobalMaxPool2d,
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPS)
def test_pool_keeps_dtype(name, dtype):
    """float32 in -> float32 output and gradient; float64 stays float64 (every pool).

    Checked on the op's own backward too: autograd casts gradients to the input's
    dtype, which would hide a backward that silently computes in float64.
    """
    rng = np.random.default_rng(10)
    x = Tensor(pool_input(name, (2, 3, 5, 5), 10, dtype), requires_grad=True)
    op = OPS[name]()
    y = op(x)
    grad_out = random_array(rng, y.shape, dtype)
    assert y.dtype == dtype and op.backward(grad_out).dtype == dtype
    y.backward(grad_out)
    assert x.grad.dtype == dtype


# --- 5. edge cases, each against PyTorch ----------------------------------------------------------
POOL_EDGES = [
    # (x shape, kernel_size, stride, padding)
    pytest.param((2, 3, 7, 7), 3, 2, 0, id="7x7-k3-stride2-not-dividing"),
    pytest.param((2, 3, 8, 8), 3, 3, 0, id="8x8-k3-stride3-not-dividing"),
    pytest.param((2, 3, 8, 8), 3, 3, 1, id="8x8-k3-stride3-pad1"),
    pytest.param((2, 3, 7, 7), 2, None, 0, id="7x7-k2-default-stride-not-dividing"),
    pytest.param((3, 4, 1, 1), 1, 1, 0, id="1x1-map-k1"),
    pytest.param((3, 4, 1, 1), 2, 1, 1, id="1x1-map-k2-pad1"),
    pytest.param((3, 4, 1, 1), 3, 1, 1, id="1x1-map-k3-pad1"),
    pytest.param((2, 3, 5, 5), 5, 1, 0, id="kernel-equals-input"),
    pytest.param((2, 3, 3, 3), 5, 2, 1, id="kernel-equals-padded-input"),
    pytest.param((2, 3, 2, 4), (4, 6), 1, 1, id="kernel-equals-padded-nonsquare"),
    pytest.param((1, 3, 6, 6), 2, 2, 0, id="batch-1"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", WINDOWED)
@pytest.mark.parametrize("x_shape, kernel_size, stride, padding", POOL_EDGES)
def test_windowed_pool_edge_cases_match_torch(x_shape, kernel_size, stride, padding, name, dtype, device):
    """Strides that leave pixels over, 1x1 maps (windows mostly padding), a kernel as large as the padded input,
    batch 1."""
    x = pool_input(name, x_shape, 11, dtype)
    compare_windowed(name, x, kernel_size, stride, padding, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", GLOBAL)
@pytest.mark.parametrize("x_shape", [(3, 4, 1, 1), (1, 3, 5, 5), (2, 3, 1, 7), (1, 1, 1, 1)], ids=str)
def test_global_pool_edge_cases_match_torch(x_shape, name, dtype, device):
    """1x1 maps, batch 1, a single row, a single pixel: equal to torch."""
    ours, theirs = GLOBAL[name]
    assert_matches_torch(ours, theirs, [pool_input(name, x_shape, 12, dtype)], device)


# --- 6. bad input: clear errors that name the shapes and values ----------------------------------
ALL_POOLS = {
    "MaxPool2d": lambda x: F.max_pool2d(x, 2),
    "AvgPool2d": lambda x: F.avg_pool2d(x, 2),
    "GlobalAvgPool2d": F.global_avg_pool2d,
    "GlobalMaxPool2d": F.global_max_pool2d,
}


@pytest.mark.parametrize("name", ALL_POOLS)
def test_pool_error_wrong_rank(name):
    """A 3-D input (a forgotten batch axis) is refused by every pool, naming the pool and the shape."""
    with pytest.raises(ValueError, match=re.escape(f"{name} expects input of shape (N, C, H, W), got (3, 5, 5)")):
        ALL_POOLS[name](Tensor(np.zeros((3, 5, 5))))


@pytest.mark.parametrize("name", WINDOWED)
def test_pool_error_kernel_larger_than_padded_input(name):
    """A window that does not fit in the padded input: the error gives both sizes and the input shape."""
    op = WINDOWED[name][0]
    message = "kernel 5x5 is larger than the padded input 4x4 (input (1, 2, 2, 2)"
    with pytest.raises(ValueError, match=re.escape(message)):
        op(Tensor(np.zeros((1, 2, 2, 2))), 5, 1, 1)
    with pytest.raises(ValueError, match=re.escape("kernel 2x6 is larger than the padded input 5x5")):
        op(Tensor(np.zeros((1, 2, 5, 5))), (2, 6))


@pytest.mark.parametrize("name", WINDOWED)
def test_pool_error_padding_more_than_half_kernel(name):
    """padding > kernel // 2 (windows of padding only) is refused, naming padding and kernel."""
    op = WINDOWED[name][0]
    with pytest.raises(ValueError, match=re.escape("padding=2 must be at most half the kernel (3, 3)")):
        op(Tensor(np.zeros((1, 2, 6, 6))), 3, 1, 2)
    with pytest.raises(ValueError, match=re.escape("padding=1 must be at most half the kernel (1, 4)")):
        op(Tensor(np.zeros((1, 2, 6, 6))), (1, 4), 1, 1)


@pytest.mark.parametrize("name", WINDOWED)
def test_pool_error_bad_stride(name):
    """stride < 1 is refused, naming the stride given."""
    with pytest.raises(ValueError, match=re.escape("needs stride >= 1 and padding >= 0, got stride=(0, 0)")):
        WINDOWED[name][0](Tensor(np.zeros((1, 2, 6, 6))), 2, 0)


# --- 7. max pooling ties: the first maximum takes the gradient, as in PyTorch ---------------------------
TIE_CASES = [
    # (kernel_size, stride, padding)
    pytest.param(2, None, 0, id="k2-s2"),
    pytest.param(3, 1, 1, id="k3-s1-p1-overlapping"),
    pytest.param(3, 2, 1, id="k3-s2-p1"),
    pytest.param((2, 3), (1, 2), 1, id="nonsquare"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill", ["all-equal", "all-equal-negative", "few-levels"])
@pytest.mark.parametrize("kernel_size, stride, padding", TIE_CASES)
def test_max_pool_ties_go_to_first_maximum(kernel_size, stride, padding, fill, dtype, device):
    """Equal values in a window send the gradient to the first of them (row-major), as torch.max_pool2d does.

    "all-equal-negative" also checks that padding never wins a tie (it counts as -inf, not 0);
    "few-levels" (values in {0, 1, 2}) mixes ties with clear winners.
    """
    rng = np.random.default_rng(13)
    shape = (2, 3, 6, 7)
    x = {
        "all-equal": np.full(shape, 0.5),
        "all-equal-negative": np.full(shape, -2.0),
        "few-levels": rng.integers(0, 3, shape).astype(np.float64),
    }[fill].astype(dtype)
    compare_windowed("max", x, kernel_size, stride, padding, device)


def test_max_pool_tie_gradient_by_hand():
    """On an all-equal 4x4 map, 2x2 windows with stride 2 pass the gradient to each window's top-left pixel."""
    x = Tensor(np.ones((1, 1, 4, 4)), requires_grad=True)
    grad_out = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    F.max_pool2d(x, 2).backward(grad_out)
    expected = np.zeros((1, 1, 4, 4))
    expected[0, 0, ::2, ::2] = grad_out[0, 0]
    np.testing.assert_array_equal(x.grad, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill", ["all-equal", "few-levels"])
def test_global_max_pool_ties_go_to_first_maximum(fill, dtype, device):
    """global_max_pool2d with ties equals torch's max_pool2d over the whole map (first maximum wins)."""
    rng = np.random.default_rng(14)
    shape = (2, 3, 4, 5)
    x = (np.full(shape, 1.5) if fill == "all-equal" else rng.integers(0, 3, shape).astype(np.float64)).astype(dtype)
    assert_matches_torch(
        F.global_max_pool2d, lambda t: torch.nn.functional.max_pool2d(t, shape[2:]).flatten(1), [x], device
    )


@pytest.mark.gpu
@pytest.mark.skipif(not emulated_cupy.installed(), reason="host waits are counted on the emulated CuPy only")
def test_max_pool_never_waits_for_the_device():
    """The argmax of each window is kept with ``where``: a boolean-mask assignment (argmax[larger] = k) made CuPy
    scan the mask and read its count back, one host wait per kernel offset (9 for a 3x3 window)."""
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32), requires_grad=True)
    x = x.to("gpu")
    with emulated_cupy.counting() as counts:
        F.max_pool2d(x, 3, 2, 1).sum().backward()
    assert counts["host_syncs"] == 0, counts
