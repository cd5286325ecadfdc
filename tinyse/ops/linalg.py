"""Matrix products: ``matmul`` and the fully connected layer ``linear``."""
import numpy as np

from tinyse.ops.elementwise import sum_to_shape
from tinyse.tensor import Function


def _broadcastable(shape_a, shape_b):
    try:
        np.broadcast_shapes(shape_a, shape_b)
        return True
    except ValueError:
        return False


class MatMul(Function):
    """Y = A @ B (batch axes broadcast, as in np.matmul);  dL/dA = dL/dY @ B^T,  dL/dB = A^T @ dL/dY.

    A: (..., n, k), B: (..., k, m) -> Y: (..., n, m); the batch axes "..." broadcast
    against each other (sizes equal or 1, missing leading axes count as 1).
    """

    def forward(self, a, b):
        if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2] or not _broadcastable(a.shape[:-2], b.shape[:-2]):
            raise ValueError(
                f"matmul needs (..., n, k) @ (..., k, m) with broadcastable batch axes, got {a.shape} @ {b.shape}"
            )
        self.a, self.b = a, b
        return a @ b

    def backward(self, grad_out):
        grad_a = grad_b = None
        if self.needs_input_grad[0]:
            grad_a = sum_to_shape(grad_out @ self.b.swapaxes(-1, -2), self.a.shape)
        if self.needs_input_grad[1]:
            grad_b = sum_to_shape(self.a.swapaxes(-1, -2) @ grad_out, self.b.shape)
        return grad_a, grad_b


class Linear(Function):
    """y = x W^T + b, as torch.nn.Linear.

    Shapes: x (N, in), W (out, in), b (out,) or None -> y (N, out).
    Backward: dL/dx = dL/dy W,  dL/dW = dL/dy^T x,  dL/db = sum over N of dL/dy.
    """

    fresh_input_grads = True  # each gradient is a new array (a matrix product or a sum)

    def forward(self, x, weight, bias=None):
        if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[1]:
            raise ValueError(f"linear needs x (N, in) and weight (out, in), got x {x.shape}, weight {weight.shape}")
        if bias is not None and bias.shape != (weight.shape[0],):
            raise ValueError(f"linear bias must have shape ({weight.shape[0]},), got {bias.shape}")
        self.x, self.weight = x, weight
        y = x @ weight.T
        return y if bias is None else y + bias

    def backward(self, grad_out):
        grad_x = grad_out @ self.weight if self.needs_input_grad[0] else None
        grad_weight = grad_out.T @ self.x if self.needs_input_grad[1] else None
        grad_bias = grad_out.sum(axis=0) if self.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias
