"""The finite-difference checker itself: it passes a right backward and catches a wrong one."""
import numpy as np
import pytest

import tinyse
from tinyse.tensor import Function


class Cube(Function):
    """y = x^3, with a backward that can be made wrong on purpose."""

    def __init__(self, factor=3.0):
        self.factor = factor

    def forward(self, x):
        self.x = x
        return x**3

    def backward(self, grad_out):
        return grad_out * self.factor * self.x**2


def test_right_backward_passes():
    x = np.random.default_rng(0).standard_normal((3, 2))
    assert tinyse.gradcheck(lambda x: Cube()(x), x) < 1e-8


@pytest.mark.parametrize("factor", [2.9, 0.0, -3.0])
def test_wrong_backward_is_caught(factor):
    x = np.random.default_rng(0).standard_normal((3, 2))
    assert tinyse.gradcheck(lambda x: Cube(factor)(x), x) > 1e-2


def test_checks_in_float64_and_passes_integer_inputs_through():
    seen = []

    def fn(x, labels):
        seen.append((x.dtype, labels.dtype))
        return tinyse.functional.cross_entropy(x, labels)

    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    assert tinyse.gradcheck(fn, x, np.array([0, 1, 2, 0])) < 1e-6
    assert all(d == np.float64 for d, _ in seen) and all(label_dtype.kind == "i" for _, label_dtype in seen)
