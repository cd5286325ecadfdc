"""Pointwise nonlinearities: ReLU, sigmoid, tanh."""
import numpy as np

from tinyse.backend import elementwise_kernel, get_array_module
from tinyse.parallel import for_each_chunk_of
from tinyse.tensor import Function


def stable_sigmoid(x):
    """1 / (1 + e^-x) without overflow: with e = e^-|x|, it is 1/(1+e) for x >= 0, e/(1+e) below."""
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1, e) / (1 + e)


def relu_grad(grad_out, y):
    """dL/d(input of the ReLU) = dL/dy where y = relu(...) > 0, else 0: a new array.

    On NumPy the batch goes in chunks, on every core (``for_each_chunk_of``). Faster than every other
    NumPy form tried, on 128x16x32x32 float32 (2-core Intel Xeon, 2026-12-02, one thread): dL/dy * (y > 0)
    1.12 ms; np.where(y > 0, dL/dy, 0) 8.4 ms; copyto or putmask into zeros 10-11 ms; dL/dy * (y != 0) 1.28 ms;
    the mask as uint8 1.22 ms; masking the float's bits 1.56 ms.
    """
    if get_array_module(grad_out, y) is np:
        if y.ndim == 0:
            return grad_out * (y > 0)
        grad_in = np.empty(grad_out.shape, grad_out.dtype)
        for_each_chunk_of(
            [grad_out, y, grad_in], lambda a, b: np.multiply(grad_out[a:b], y[a:b] > 0, out=grad_in[a:b])
        )
        return grad_in
    kernel = elementwise_kernel("T grad, T y", "T grad_in", "grad_in = y > 0 ? grad : (T)0", "tinyse_relu_grad")
    return kernel(grad_out, y)


class ReLU(Function):
    """y = max(x, 0);  dL/dx = dL/dy where x > 0, else 0 (0 at the kink x = 0, as PyTorch)."""

    fresh_input_grads = True  # relu_grad makes a new array

    def forward(self, x):
        # y > 0 exactly where x > 0: y is the backward's mask, without a pass to make it
        if get_array_module(x) is np and x.ndim > 0:  # the batch in chunks, on every core
            self.y = np.empty_like(x)
            for_each_chunk_of([x, self.y], lambda a, b: np.maximum(x[a:b], 0, out=self.y[a:b]))
        else:
            self.y = get_array_module(x).maximum(x, 0)
        return self.y

    def backward(self, grad_out):
        return relu_grad(grad_out, self.y)


class Sigmoid(Function):
    """y = 1 / (1 + e^-x);  dL/dx = dL/dy * y (1 - y)."""

    fresh_input_grads = True

    def forward(self, x):
        self.y = stable_sigmoid(x)
        return self.y

    def backward(self, grad_out):
        return grad_out * self.y * (1 - self.y)


class Tanh(Function):
    """y = tanh(x);  dL/dx = dL/dy * (1 - y^2)."""

    fresh_input_grads = True

    def forward(self, x):
        self.y = get_array_module(x).tanh(x)
        return self.y

    def backward(self, grad_out):
        return grad_out * (1 - self.y * self.y)
