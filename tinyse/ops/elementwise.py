"""Elementwise arithmetic with NumPy broadcasting.

When an input was broadcast in the forward pass (a bias of shape (C, 1, 1)
added to (N, C, H, W)), its gradient is the upstream gradient summed over the
broadcast axes: ``sum_to_shape`` does that.
"""
from tinyse.backend import get_array_module
from tinyse.tensor import Function


def sum_to_shape(grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched, giving ``shape``."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)  # leading axes that broadcasting prepended
    stretched = tuple(extra + i for i, size in enumerate(shape) if size == 1 and grad.shape[extra + i] != 1)
    grad = grad.sum(axis=tuple(range(extra)) + stretched, keepdims=True)
    return grad.reshape(shape)


class Add(Function):
    """y = a + b;  dL/da = dL/dy,  dL/db = dL/dy  (each summed to its own shape)."""

    def forward(self, a, b):
        self.a_shape, self.b_shape = a.shape, b.shape
        return a + b

    def backward(self, grad_out):
        return sum_to_shape(grad_out, self.a_shape), sum_to_shape(grad_out, self.b_shape)


class Sub(Function):
    """y = a - b;  dL/da = dL/dy,  dL/db = -dL/dy."""

    def forward(self, a, b):
        self.a_shape, self.b_shape = a.shape, b.shape
        return a - b

    def backward(self, grad_out):
        return sum_to_shape(grad_out, self.a_shape), sum_to_shape(-grad_out, self.b_shape)


class Mul(Function):
    """y = a * b;  dL/da = dL/dy * b,  dL/db = dL/dy * a."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, grad_out):
        grad_a = sum_to_shape(grad_out * self.b, self.a.shape) if self.needs_input_grad[0] else None
        grad_b = sum_to_shape(grad_out * self.a, self.b.shape) if self.needs_input_grad[1] else None
        return grad_a, grad_b


class Div(Function):
    """y = a / b;  dL/da = dL/dy / b,  dL/db = -dL/dy * a / b^2 = -dL/dy * y / b."""

    def forward(self, a, b):
        self.a_shape, self.b = a.shape, b
        self.y = a / b
        return self.y

    def backward(self, grad_out):
        grad_a = grad_out / self.b
        grad_b = sum_to_shape(-grad_a * self.y, self.b.shape) if self.needs_input_grad[1] else None
        return sum_to_shape(grad_a, self.a_shape), grad_b


class Neg(Function):
    """y = -x;  dL/dx = -dL/dy."""

    def forward(self, x):
        return -x

    def backward(self, grad_out):
        return -grad_out


class PowConst(Function):
    """y = x^p for a constant number p;  dL/dx = dL/dy * p * x^(p-1).

    For p = 0, y = 1 is constant and dL/dx = 0 everywhere, also at x = 0 where
    x^(p-1) = x^-1 is infinite (0 * inf would give nan), as in PyTorch.
    """

    def __init__(self, exponent):
        self.exponent = exponent

    def forward(self, x):
        self.x = x
        return x**self.exponent

    def backward(self, grad_out):
        if self.exponent == 0:
            return get_array_module(grad_out).zeros_like(self.x)
        return grad_out * self.exponent * self.x ** (self.exponent - 1)
