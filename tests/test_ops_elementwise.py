"""Elementwise ops: add, sub, mul, div, neg, pow by a constant, with NumPy broadcasting.

Every op is checked three ways: against PyTorch (forward and every gradient,
same inputs and the same random upstream gradient), against central finite
differences (tinyse.gradcheck, float64), and for dtype discipline (float32 in,
float32 out, Python numbers included).
"""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

import tinyse.functional as F
from tinyse import Tensor, gradcheck

from conftest import DEVICES, DTYPES, GRADCHECK_TOLERANCE, assert_matches_torch, away_from_zero

seeds = st.integers(0, 2**32 - 1)


# --- shapes --------------------------------------------------------------------------------
# (N, C, H, W) with batch 1-4, channels 1-8, spatial 1-9; fewer axes take the trailing ones.
nchw = st.tuples(st.integers(1, 4), st.integers(1, 8), st.integers(1, 9), st.integers(1, 9))


@st.composite
def broadcast_pairs(draw):
    """Two shapes that broadcast together: each is a full shape with some leading axes
    dropped and some axes set to 1, so either side may have fewer axes or size-1 axes."""
    ndim = draw(st.integers(1, 4))
    full = draw(nchw)[4 - ndim :]

    def one_side():
        dropped = draw(st.integers(0, ndim - 1))
        return tuple(1 if draw(st.booleans()) else n for n in full[dropped:])

    return one_side(), one_side()


def small(shapes):
    """Gradcheck runs two forwards per input element: keep those tests quick."""
    return all(np.prod(s) <= 300 for s in shapes)


BINARY = {  # name: (tinyse op, torch op)
    "add": (F.add, torch.add),
    "sub": (F.sub, torch.sub),
    "mul": (F.mul, torch.mul),
    "div": (F.div, torch.div),
    "a + b": (lambda a, b: a + b, lambda a, b: a + b),
    "a - b": (lambda a, b: a - b, lambda a, b: a - b),
    "a * b": (lambda a, b: a * b, lambda a, b: a * b),
    "a / b": (lambda a, b: a / b, lambda a, b: a / b),
}


def binary_inputs(name, shapes, seed, dtype=np.float64):
    """Standard-normal a and b; for division b is pushed to |b| >= 0.5 (away from the pole)."""
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(s) for s in shapes)
    if "div" in name or "/" in name:
        b = away_from_zero(b, margin=0.5)
    return a.astype(dtype), b.astype(dtype)


BROADCAST_EXAMPLES = [((3, 1, 4), (4,)), ((4,), (3, 1, 4)), ((2, 3, 1, 1), (1, 3, 1, 1)), ((2, 3, 4, 5), (3, 1, 1))]


def with_broadcast_examples(test):
    for shapes in BROADCAST_EXAMPLES:
        test = example(shapes=shapes, seed=0)(test)
    return test


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BINARY)
@given(shapes=broadcast_pairs(), seed=seeds)
@with_broadcast_examples
def test_binary_matches_torch(name, dtype, device, shapes, seed):
    """Each binary op, broadcasting any pair of compatible shapes, matches torch in value and both gradients."""
    ours, theirs = BINARY[name]
    assert_matches_torch(ours, theirs, binary_inputs(name, shapes, seed, dtype), device, seed)


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div"])
@given(shapes=broadcast_pairs(), seed=seeds)
@with_broadcast_examples
def test_binary_gradcheck(name, shapes, seed):
    """Each binary op's backward (incl. summing over broadcast axes) matches finite differences."""
    assume(small(shapes))
    assert gradcheck(BINARY[name][0], *binary_inputs(name, shapes, seed)) < GRADCHECK_TOLERANCE


# --- unary ops: neg and pow by a constant ---------------------------------------------------
def pow_base(x, exponent):
    """A base where x^p and its derivative are defined and smooth: > 0 for fractional p, |x| >= 0.5 else."""
    return np.abs(x) + 0.5 if float(exponent) != int(exponent) else away_from_zero(x, margin=0.5)


EXPONENTS = [2, 3, 1, 0, -1, -2, 0.5, 1.5, -0.5, 2.0]

UNARY = {  # name: (tinyse op, torch op, input transform)
    "neg": (F.neg, torch.neg, lambda x: x),
    "-x": (lambda x: -x, lambda x: -x, lambda x: x),
    **{
        f"pow {p}": (lambda x, p=p: F.pow(x, p), lambda x, p=p: torch.pow(x, p), lambda x, p=p: pow_base(x, p))
        for p in EXPONENTS
    },
    "x ** 3": (lambda x: x**3, lambda x: x**3, lambda x: x),
}

shapes_1_to_4d = st.integers(1, 4).flatmap(lambda ndim: nchw.map(lambda s: s[4 - ndim :]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", UNARY)
@given(shape=shapes_1_to_4d, seed=seeds)
def test_unary_matches_torch(name, dtype, device, shape, seed):
    """neg and pow (integer, negative and fractional exponents) match torch in value and gradient."""
    ours, theirs, transform = UNARY[name]
    x = transform(np.random.default_rng(seed).standard_normal(shape)).astype(dtype)
    assert_matches_torch(ours, theirs, [x], device, seed)


@pytest.mark.parametrize("name", UNARY)
@given(shape=shapes_1_to_4d, seed=seeds)
def test_unary_gradcheck(name, shape, seed):
    """neg's and pow's backward match finite differences."""
    assume(small([shape]))
    ours, _, transform = UNARY[name]
    x = transform(np.random.default_rng(seed).standard_normal(shape))
    assert gradcheck(ours, x) < GRADCHECK_TOLERANCE


@pytest.mark.parametrize("dtype", DTYPES)
def test_pow_zero_has_zero_gradient_at_zero(dtype):
    """x ** 0 is the constant 1: its gradient is 0 everywhere, also at x = 0 (not nan), as in torch."""
    x = np.array([0.0, -1.5, 2.0], dtype=dtype)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        assert_matches_torch(lambda t: F.pow(t, 0), lambda t: torch.pow(t, 0), [x])


# --- Python numbers as operands, and dtype discipline ----------------------------------------
SCALAR_EXPRESSIONS = {  # each works on tinyse and torch tensors alike
    "x * 2.0 + 1": lambda x: x * 2.0 + 1,
    "2 * x - 0.5": lambda x: 2 * x - 0.5,
    "1 - x": lambda x: 1 - x,
    "3.0 + x": lambda x: 3.0 + x,
    "x / 4": lambda x: x / 4,
    "2 / x": lambda x: 2 / x,
    "(x * 2.0 + 1) ** 2 / 3 - x": lambda x: (x * 2.0 + 1) ** 2 / 3 - x,
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SCALAR_EXPRESSIONS)
@given(shape=shapes_1_to_4d, seed=seeds)
def test_python_number_operands(name, dtype, device, shape, seed):
    """Python ints and floats on either side keep the tensor's dtype (float32 stays float32,
    float64 stays float64) for the output and the gradient, and the values match torch."""
    x = away_from_zero(np.random.default_rng(seed).standard_normal(shape), margin=0.5).astype(dtype)
    expression = SCALAR_EXPRESSIONS[name]
    assert_matches_torch(expression, expression, [x], device, seed)  # also asserts the dtypes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["add", "sub", "mul", "div"])
def test_binary_keeps_dtype(name, dtype):
    """Two inputs of one float dtype give an output and gradients of that dtype, with broadcasting."""
    a, b = binary_inputs(name, [(2, 3, 1, 4), (3, 5, 1)], seed=1, dtype=dtype)
    ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    out = BINARY[name][0](ta, tb)
    out.sum().backward()
    assert out.dtype == dtype and ta.grad.dtype == dtype and tb.grad.dtype == dtype
    assert ta.grad.shape == a.shape and tb.grad.shape == b.shape


# --- a tensor used twice in one graph ---------------------------------------------------------
REUSE = {  # name: (tinyse expression, torch expression) of one input used more than once
    "x * x": (lambda x: x * x, lambda x: x * x),
    "add(x, x)": (lambda x: F.add(x, x), lambda x: torch.add(x, x)),
    "sub(x, x)": (lambda x: F.sub(x, x), lambda x: torch.sub(x, x)),
    "x * x + x": (lambda x: x * x + x, lambda x: x * x + x),
    "x / (x * x + 1)": (lambda x: x / (x * x + 1), lambda x: x / (x * x + 1)),
    "mul(x, x.sum(axis=0))": (lambda x: F.mul(x, x.sum(axis=0)), lambda x: torch.mul(x, x.sum(dim=0))),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REUSE)
@given(shape=shapes_1_to_4d, seed=seeds)
def test_tensor_used_twice(name, dtype, device, shape, seed):
    """A tensor feeding two inputs of the graph collects the sum of both gradients, as in torch."""
    ours, theirs = REUSE[name]
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    assert_matches_torch(ours, theirs, [x], device, seed)


@pytest.mark.parametrize("name", REUSE)
def test_tensor_used_twice_gradcheck(name):
    """The same graphs' gradients agree with finite differences."""
    x = np.random.default_rng(3).standard_normal((2, 3, 4))
    assert gradcheck(REUSE[name][0], x) < GRADCHECK_TOLERANCE
