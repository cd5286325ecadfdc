"""Pointwise nonlinearities: ReLU, sigmoid, tanh."""
from tinyse.backend import get_array_module
from tinyse.tensor import Function


def stable_sigmoid(x):
    """1 / (1 + e^-x) without overflow: with e = e^-|x|, it is 1/(1+e) for x >= 0, e/(1+e) below."""
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1, e) / (1 + e)


class ReLU(Function):
    """y = max(x, 0);  dL/dx = dL/dy where x > 0, else 0 (0 at the kink x = 0, as PyTorch)."""

    def forward(self, x):
        self.mask = x > 0
        return get_array_module(x).maximum(x, 0)

    def backward(self, grad_out):
        return grad_out * self.mask


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
