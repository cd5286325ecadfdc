"""Matrix products: matmul (plain, batched, broadcast batch axes) and linear (with and without bias).

Checked against PyTorch (forward and every gradient, random upstream gradient),
against finite differences, for dtype discipline, batch of 1, and clear errors.
"""

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import tinyse.functional as F
from tinyse import Tensor, gradcheck

from conftest import DEVICES, DTYPES, GRADCHECK_TOLERANCE, TORCH_TOLERANCE, assert_matches_torch, rel_error

seeds = st.integers(0, 2**32 - 1)


def arrays(shapes, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [None if s is None else rng.standard_normal(s).astype(dtype) for s in shapes]


# --- matmul ---------------------------------------------------------------------------------------
sizes = st.integers(1, 8)
batch = st.integers(1, 4)


@st.composite
def matmul_shapes(draw):
    """(..., n, k) and (..., k, m): no batch axes, equal batch axes, or batch axes that broadcast
    (size 1 against size B, or missing leading axes on either side)."""
    n, k, m = draw(sizes), draw(sizes), draw(sizes)
    b1, b2 = draw(batch), draw(batch)
    batch_a, batch_b = draw(
        st.sampled_from(
            [
                ((), ()),  # plain matrices
                ((b1,), (b1,)),  # a batch of products
                ((b1, b2), (b1, b2)),
                ((b1, 1), (b2,)),  # (B1, 1, n, k) @ (B2, k, m) -> (B1, B2, n, m)
                ((), (b1,)),  # one matrix times a batch
                ((b1, b2), ()),  # a batch times one matrix
                ((1, b2), (b1, 1)),
            ]
        )
    )
    return (*batch_a, n, k), (*batch_b, k, m)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@given(shapes=matmul_shapes(), seed=seeds)
@example(shapes=((2, 1, 3, 4), (3, 4, 5)), seed=0)
@example(shapes=((3, 4), (2, 4, 5)), seed=0)
def test_matmul_matches_torch(dtype, device, shapes, seed):
    """matmul, plain, batched and with broadcast batch axes, matches torch.matmul in value and both gradients
    (the gradient of a broadcast operand is summed over the batch axes it was stretched along)."""
    assert_matches_torch(F.matmul, torch.matmul, arrays(shapes, seed, dtype), device, seed)
    assert_matches_torch(lambda a, b: a @ b, lambda a, b: a @ b, arrays(shapes, seed, dtype), device, seed)


@given(shapes=matmul_shapes(), seed=seeds)
def test_matmul_gradcheck(shapes, seed):
    """matmul's backward matches finite differences."""
    assert gradcheck(F.matmul, *arrays(shapes, seed)) < GRADCHECK_TOLERANCE


@pytest.mark.parametrize("device", DEVICES)
def test_matmul_tensor_used_twice(device):
    """x @ x^T uses x twice: its gradient is the sum of both paths, as in torch."""
    x = arrays([(3, 5)], seed=4)[0]
    assert_matches_torch(lambda t: t @ t.T, lambda t: t @ t.T, [x], device)
    assert gradcheck(lambda t: t @ t.T, x) < GRADCHECK_TOLERANCE


def test_matmul_shape_mismatch():
    """Inner sizes that differ, batch axes that do not broadcast, or a 1-D operand are errors naming both shapes."""
    with pytest.raises(ValueError, match=r"got \(2, 3\) @ \(4, 5\)"):
        F.matmul(Tensor(np.ones((2, 3))), Tensor(np.ones((4, 5))))
    with pytest.raises(ValueError, match=r"broadcastable batch axes, got \(2, 2, 3\) @ \(3, 3, 4\)"):
        F.matmul(Tensor(np.ones((2, 2, 3))), Tensor(np.ones((3, 3, 4))))
    with pytest.raises(ValueError, match=r"got \(3,\) @ \(3, 4\)"):
        F.matmul(Tensor(np.ones(3)), Tensor(np.ones((3, 4))))


# --- linear -----------------------------------------------------------------------------------------
@st.composite
def linear_shapes(draw):
    """x (N, in), weight (out, in), and bias (out,) or None."""
    n, fan_in, fan_out = draw(batch), draw(sizes), draw(sizes)
    bias = (fan_out,) if draw(st.booleans()) else None
    return (n, fan_in), (fan_out, fan_in), bias


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@given(shapes=linear_shapes(), seed=seeds)
@example(shapes=((1, 8), (3, 8), (3,)), seed=0)  # batch of 1
@example(shapes=((1, 8), (3, 8), None), seed=0)
def test_linear_matches_torch(dtype, device, shapes, seed):
    """linear with and without bias matches torch.nn.functional.linear in value and in the x, weight, bias gradients."""
    assert_matches_torch(F.linear, torch.nn.functional.linear, arrays(shapes, seed, dtype), device, seed)


@given(shapes=linear_shapes(), seed=seeds)
def test_linear_gradcheck(shapes, seed):
    """linear's backward matches finite differences, with and without bias."""
    assert gradcheck(F.linear, *[a for a in arrays(shapes, seed) if a is not None]) < GRADCHECK_TOLERANCE


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_batch_of_one(dtype):
    """A batch of one sample gives one output row, equal to W x + b computed by NumPy."""
    x, w, b = arrays([(1, 6), (4, 6), (4,)], seed=2, dtype=dtype)
    out = F.linear(Tensor(x), Tensor(w), Tensor(b))
    assert out.shape == (1, 4) and out.dtype == dtype
    assert rel_error(out.data[0], w.astype(np.float64) @ x[0] + b) < TORCH_TOLERANCE[dtype]


def test_linear_shape_mismatch():
    """x and weight that disagree on the input size, a 1-D x, or a bias of the wrong size: errors naming the shapes."""
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"got x \(2, 3\), weight \(4, 5\)"):
        F.linear(x, Tensor(np.ones((4, 5))))
    with pytest.raises(ValueError, match=r"got x \(3,\), weight \(4, 3\)"):
        F.linear(Tensor(np.ones(3)), Tensor(np.ones((4, 3))))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\), got \(3,\)"):
        F.linear(x, Tensor(np.ones((4, 3))), Tensor(np.ones(3)))
