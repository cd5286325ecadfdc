"""Pointwise nonlinearities: relu, sigmoid, tanh.

Checked against PyTorch (forward and gradient, random upstream gradient),
against finite differences, for dtype discipline, and sigmoid's numerical
stability far out in its tails (|x| = 1000: no overflow warning, no nan).
"""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import tinyse.functional as F
from tinyse import gradcheck
from tinyse.backend import to_device

from conftest import (
    DEVICES,
    DTYPES,
    GRADCHECK_TOLERANCE,
    TORCH_TOLERANCE,
    assert_matches_torch,
    away_from_zero,
    rel_error,
)

seeds = st.integers(0, 2**32 - 1)
nchw = st.tuples(st.integers(1, 4), st.integers(1, 8), st.integers(1, 9), st.integers(1, 9))
shapes_1_to_4d = st.integers(1, 4).flatmap(lambda ndim: nchw.map(lambda s: s[4 - ndim :]))


ACTIVATIONS = {  # name: (tinyse op, torch op)
    "relu": (F.relu, torch.relu),
    "sigmoid": (F.sigmoid, torch.sigmoid),
    "tanh": (F.tanh, torch.tanh),
}


def inputs(name, shape, seed, dtype=np.float64, scale=1.0):
    """Normal values times ``scale``; for relu kept off the kink at 0, where the derivative jumps."""
    x = np.random.default_rng(seed).standard_normal(shape) * scale
    return (away_from_zero(x) if name == "relu" else x).astype(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
@given(shape=shapes_1_to_4d, seed=seeds, scale=st.sampled_from([1.0, 10.0]))
def test_activation_matches_torch(name, dtype, device, shape, seed, scale):
    """relu, sigmoid and tanh match torch in value and gradient, for inputs of scale 1 and 10."""
    ours, theirs = ACTIVATIONS[name]
    assert_matches_torch(ours, theirs, [inputs(name, shape, seed, dtype, scale)], device, seed)


@pytest.mark.parametrize("name", ACTIVATIONS)
@given(shape=shapes_1_to_4d, seed=seeds)
def test_activation_gradcheck(name, shape, seed):
    """relu's, sigmoid's and tanh's backward match finite differences."""
    assume(np.prod(shape) <= 400)
    assert gradcheck(ACTIVATIONS[name][0], inputs(name, shape, seed)) < GRADCHECK_TOLERANCE


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_keeps_dtype_in_expressions(name, dtype, device):
    """An activation inside an expression with Python numbers keeps float32 as float32 (and float64 as float64)."""
    x = inputs(name, (2, 3, 4), seed=0, dtype=dtype)
    ours, theirs = ACTIVATIONS[name]
    assert_matches_torch(lambda t: ours(t * 2.0 + 1) * 3 - 0.5, lambda t: theirs(t * 2.0 + 1) * 3 - 0.5, [x], device)


def test_relu_gradient_at_the_kink_is_zero():
    """At x = 0 exactly, relu's gradient is 0, as in torch (the convention the docstring states)."""
    x = np.array([-1.0, 0.0, 2.0])
    assert_matches_torch(F.relu, torch.relu, [x])


EXTREMES = [-1000.0, -200.0, -100.0, -50.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 50.0, 100.0, 200.0, 1000.0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_saturating_activations_are_stable_far_out(name, dtype, device):
    """At |x| up to 1000 sigmoid (and tanh) give no overflow/invalid warning and no nan: the values
    and gradients are finite, agree with torch, and sigmoid saturates to 0 and 1 with 1 - sigmoid(x) = sigmoid(-x)."""
    x = np.array(EXTREMES, dtype=dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        out, (t,) = assert_matches_torch(*ACTIVATIONS[name], [x], device)
    y, grad = to_device(out.data, "cpu"), to_device(t.grad, "cpu")
    assert np.isfinite(y).all() and np.isfinite(grad).all()
    if name == "sigmoid":
        assert y[0] == 0 and y[-1] == 1  # exp(-1000) underflows to 0 in both precisions
        assert np.all((y >= 0) & (y <= 1))
        assert rel_error(1 - y, y[::-1]) < TORCH_TOLERANCE[dtype]
