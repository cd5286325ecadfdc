"""Reductions and shape ops: sum and mean over axes, reshape, flatten, transpose, concat, pad.

Each is checked against PyTorch (forward and gradient, random upstream
gradient), against finite differences, for dtype discipline, and for clear
errors on bad shapes.
"""

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

import tinyse.functional as F
from tinyse import Tensor, gradcheck

from conftest import DEVICES, DTYPES, GRADCHECK_TOLERANCE, assert_matches_torch, rel_error

seeds = st.integers(0, 2**32 - 1)
nchw = st.tuples(st.integers(1, 4), st.integers(1, 8), st.integers(1, 9), st.integers(1, 9))
shapes_1_to_4d = st.integers(1, 4).flatmap(lambda ndim: nchw.map(lambda s: s[4 - ndim :]))


def random(shape, seed, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def small(shape, limit=300):
    """Gradcheck runs two forwards per input element: keep those tests quick."""
    return int(np.prod(shape)) <= limit


# --- sum and mean ------------------------------------------------------------------------------
@st.composite
def reductions(draw):
    """A shape, and an axis: None, one axis, or a tuple of distinct axes, each possibly negative."""
    shape = draw(shapes_1_to_4d)
    ndim = len(shape)
    one_axis = st.integers(-ndim, ndim - 1)
    axis = draw(
        st.one_of(
            st.none(), one_axis, st.lists(one_axis, min_size=1, max_size=ndim, unique_by=lambda a: a % ndim).map(tuple)
        )
    )
    return shape, axis, draw(st.booleans())


def torch_dims(axis, ndim):
    return tuple(range(ndim)) if axis is None else axis


REDUCTIONS = {"sum": (F.sum, torch.sum), "mean": (F.mean, torch.mean)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REDUCTIONS)
@given(reduction=reductions(), seed=seeds)
@example(reduction=((2, 3, 4, 5), (-1, 1), True), seed=0)
@example(reduction=((2, 3, 4, 5), -2, False), seed=0)
def test_reduction_matches_torch(name, dtype, device, reduction, seed):
    """sum and mean over any axes (negative ones too), with and without keepdims, match torch."""
    (shape, axis, keepdims), (ours, theirs) = reduction, REDUCTIONS[name]
    assert_matches_torch(
        lambda x: ours(x, axis, keepdims),
        lambda x: theirs(x, dim=torch_dims(axis, len(shape)), keepdim=keepdims),
        [random(shape, seed, dtype)],
        device,
        seed,
    )


@pytest.mark.parametrize("name", REDUCTIONS)
@given(reduction=reductions(), seed=seeds)
def test_reduction_gradcheck(name, reduction, seed):
    """sum's and mean's backward match finite differences."""
    shape, axis, keepdims = reduction
    assume(small(shape))
    fn = REDUCTIONS[name][0]
    assert gradcheck(lambda x: fn(x, axis, keepdims), random(shape, seed)) < GRADCHECK_TOLERANCE


@pytest.mark.parametrize("method", ["sum", "mean"])
def test_reduction_methods_and_math(method):
    """Tensor.sum/.mean equal NumPy's sum/mean (an independent reference) for every axis choice."""
    x = random((2, 3, 4), seed=5)
    for axis in [None, 0, -1, (0, 2), (-1, -3)]:
        for keepdims in [False, True]:
            got = getattr(Tensor(x), method)(axis=axis, keepdims=keepdims).data
            assert rel_error(got, getattr(x, method)(axis=axis, keepdims=keepdims)) < 1e-14


def test_reduction_axis_out_of_range():
    """An axis the tensor does not have is an error naming the axis and the rank."""
    with pytest.raises(ValueError, match="axis 3 is out of range for a tensor with 3 dimensions"):
        F.sum(Tensor(np.ones((2, 3, 4))), axis=3)
    with pytest.raises(ValueError, match="axis -4"):
        F.mean(Tensor(np.ones((2, 3, 4))), axis=(0, -4))


# --- reshape, flatten, transpose -------------------------------------------------------------------
RESHAPES = {  # name: target shape from the (N, C, H, W) input shape; -1 lets the op work out one size
    "(N*C, H*W)": lambda n, c, h, w: (n * c, h * w),
    "(-1,)": lambda n, c, h, w: (-1,),
    "(N, -1, W)": lambda n, c, h, w: (n, -1, w),
    "(W, H, C, N)": lambda n, c, h, w: (w, h, c, n),
    "(1, N*C*H*W, 1)": lambda n, c, h, w: (1, n * c * h * w, 1),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", RESHAPES)
@given(shape=nchw, seed=seeds)
def test_reshape_matches_torch(name, dtype, device, shape, seed):
    """reshape (tuple or separate sizes, with -1) matches torch.reshape in value and gradient."""
    target = RESHAPES[name](*shape)
    assert_matches_torch(
        lambda x: F.reshape(x, target), lambda x: x.reshape(target), [random(shape, seed, dtype)], device, seed
    )
    assert_matches_torch(
        lambda x: x.reshape(*target), lambda x: x.reshape(*target), [random(shape, seed, dtype)], device, seed
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("start_dim", [0, 1, 2, 3])
@given(shape=nchw, seed=seeds)
def test_flatten_matches_torch(start_dim, dtype, device, shape, seed):
    """flatten(x, start_dim) keeps the first start_dim axes and merges the rest, as torch.flatten."""
    assert_matches_torch(
        lambda x: F.flatten(x, start_dim),
        lambda x: torch.flatten(x, start_dim),
        [random(shape, seed, dtype)],
        device,
        seed,
    )


@st.composite
def permutations(draw):
    """A shape and a permutation of its axes, some written as negative axes."""
    shape = draw(shapes_1_to_4d)
    ndim = len(shape)
    axes = draw(st.permutations(range(ndim)))
    return shape, tuple(a - ndim if draw(st.booleans()) else a for a in axes)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@given(permutation=permutations(), seed=seeds)
@example(permutation=((2, 3, 4, 5), (0, -1, 1, 2)), seed=0)
def test_transpose_matches_torch(dtype, device, permutation, seed):
    """transpose with any permutation (negative axes too) matches torch.permute; the default and .T reverse the axes."""
    shape, axes = permutation
    reverse = tuple(reversed(range(len(shape))))
    x = random(shape, seed, dtype)
    assert_matches_torch(lambda t: F.transpose(t, axes), lambda t: t.permute(axes), [x], device, seed)
    assert_matches_torch(lambda t: F.transpose(t), lambda t: t.permute(reverse), [x], device, seed)
    assert_matches_torch(lambda t: t.T, lambda t: t.permute(reverse), [x], device, seed)


@given(shape=nchw, seed=seeds, data=st.data())
def test_reshape_transpose_flatten_gradcheck(shape, seed, data):
    """The backward of reshape, transpose and flatten match finite differences."""
    assume(small(shape))
    axes = data.draw(st.permutations(range(4)))

    def fn(x):
        return F.flatten(F.transpose(F.reshape(x, shape[::-1]), axes), 2)

    assert gradcheck(fn, random(shape, seed)) < GRADCHECK_TOLERANCE


def test_reshape_to_incompatible_shape():
    """Reshaping to a shape of another size is an error naming both shapes."""
    with pytest.raises(ValueError, match=r"cannot reshape a tensor of shape \(2, 3, 4\) into \(5, 5\)"):
        F.reshape(Tensor(np.ones((2, 3, 4))), 5, 5)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        Tensor(np.ones((2, 3, 4))).reshape(5, -1)


# --- concat -------------------------------------------------------------------------------------
@st.composite
def concat_cases(draw):
    """2 or 3 shapes that agree on every axis but ``axis``, where each has its own size."""
    shape = draw(shapes_1_to_4d)
    ndim = len(shape)
    axis = draw(st.integers(-ndim, ndim - 1))
    count = draw(st.integers(2, 3))
    sizes = draw(st.lists(st.integers(1, 5), min_size=count, max_size=count))
    shapes = []
    for size in sizes:
        s = list(shape)
        s[axis] = size
        shapes.append(tuple(s))
    return shapes, axis


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@given(case=concat_cases(), seed=seeds)
@example(case=([(2, 3, 4, 4), (2, 5, 4, 4), (2, 1, 4, 4)], 1), seed=0)  # channels, as the Inception branches
def test_concat_matches_torch(dtype, device, case, seed):
    """concat along channels or any other axis (negative too) matches torch.cat; each input gets its gradient slice."""
    shapes, axis = case
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
    assert_matches_torch(lambda *xs: F.concat(xs, axis), lambda *xs: torch.cat(xs, axis), arrays, device, seed)


@pytest.mark.parametrize("device", DEVICES)
def test_concat_default_axis_and_tensor_used_twice(device):
    """concat defaults to the channel axis, and concat([x, x]) gives x twice the gradient, as in torch."""
    x = random((2, 3, 2, 2), seed=7)
    assert_matches_torch(lambda t: F.concat([t, t]), lambda t: torch.cat([t, t], 1), [x], device)
    assert_matches_torch(lambda t, u: F.concat([t, u, t]), lambda t, u: torch.cat([t, u, t], 1), [x, x[:, :1]], device)


@given(case=concat_cases(), seed=seeds)
def test_concat_gradcheck(case, seed):
    """concat's backward (splitting the gradient) matches finite differences."""
    shapes, axis = case
    assume(sum(np.prod(s) for s in shapes) <= 300)
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) for s in shapes]
    assert gradcheck(lambda *xs: F.concat(xs, axis), *arrays) < GRADCHECK_TOLERANCE


def test_concat_mismatched_shapes():
    """concat of shapes that differ off the concat axis, or in rank, is an error naming the shapes."""
    a, b = Tensor(np.ones((2, 3, 4, 4))), Tensor(np.ones((2, 5, 4, 3)))
    with pytest.raises(ValueError, match=r"equal sizes on the other axes, got \(2, 3, 4, 4\), \(2, 5, 4, 3\)"):
        F.concat([a, b], axis=1)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 3, 4\)"):
        F.concat([a, Tensor(np.ones((2, 3, 4)))], axis=1)
    with pytest.raises(ValueError, match="axis 4"):
        F.concat([a, a], axis=4)


# --- pad ----------------------------------------------------------------------------------------------
@st.composite
def pad_cases(draw):
    shape = draw(shapes_1_to_4d)
    widths = tuple(tuple(draw(st.integers(0, 2)) for _ in range(2)) for _ in shape)
    return shape, widths


def torch_pad(x, widths):
    """torch's F.pad lists (before, after) from the last axis backwards."""
    flat = [w for pair in reversed(widths) for w in pair]
    return torch.nn.functional.pad(x, flat)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@given(case=pad_cases(), seed=seeds)
@example(case=((2, 3, 4, 5), ((0, 0), (0, 0), (1, 1), (2, 0))), seed=0)
def test_pad_matches_torch(dtype, device, case, seed):
    """Zero padding with any (before, after) per axis matches torch's constant pad; the gradient is cropped back."""
    shape, widths = case
    assert_matches_torch(
        lambda x: F.pad(x, widths), lambda x: torch_pad(x, widths), [random(shape, seed, dtype)], device, seed
    )


@given(case=pad_cases(), seed=seeds)
def test_pad_gradcheck(case, seed):
    """pad's backward matches finite differences."""
    shape, widths = case
    assume(small(shape))
    assert gradcheck(lambda x: F.pad(x, widths), random(shape, seed)) < GRADCHECK_TOLERANCE


def test_pad_bad_widths():
    """Pad widths that are negative or do not give one pair per axis are an error naming widths and shape."""
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"pad widths \(\(1, 1\),\) do not fit a tensor of shape \(2, 3\)"):
        F.pad(x, [(1, 1)])
    with pytest.raises(ValueError, match=r"\(0, -1\)"):
        F.pad(x, [(0, 0), (0, -1)])
