"""Pointwise nonlinearities: ReLU, sigmoid, tanh."""
import numpy as np

from tinyse.backend import elementwise_kernel, get_array_module
from tinyse.tensor import Function


def stable_sigmoid(x):
    """1 / (1 + e^-x) without overflow: with e = e^-|x|, it is 1/(1+e) for x >= 0, e/(1+e) below."""
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1, e) / (1 + e)


def relu_grad(grad_out, y):
    """dL/d(input of the ReLU) = dL/dy where y = relu(...) > 0, else 0."""
    if get_array_module(grad_out, y) is np:
        return grad_out * (y > 0)
    kernel = elementwise_kernel("T grad, T y", "T grad_in", "grad_in = y > 0 ? grad : (T)0", "tinyse_relu_grad")
    return kernel(grad_out, y)


class ReLU(Function):
    """y = max(x, 0);  dL/dx = dL/dy where x > 0, else 0 (0 at the kink x = 0, as PyTorch)."""

    def forward(self, x):
        self.y = get_array_module(x).maximum(x, 0)  # y > 0 exactly where x > 0: the mask, without a pass to make it
        return self.y

    def backward(self, grad_out):
        return relu_grad(grad_out, self.y)


class Sigmoid(Function):
    """y = 1 / (1 + e^-x);  dL/dx = dL/dy * y (1 - y)."""

    def forward(self, x):
        self.y = stable_sigmoid(x)
        return self.y

    def backward(self, grad_out):
        return grad_out * self.y * (1 - self.y)


class Tanh(Function):
    """y = tanh(x);  dL/dx = dL/dy * (1 - y^2)."""

    def forward(self, x):
        self.y = get_array_module(x).tanh(x)
        return self.y

    def backward(self, grad_out):
        return grad_out * (1 - self.y * self.y)
