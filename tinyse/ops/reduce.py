"""Sum and mean over axes.

Backward spreads the upstream gradient back over the reduced axes: the
gradient has the reduced axes put back as size 1 and is broadcast to the
input's shape (divided by the count for the mean).
"""
import math

from tinyse.backend import get_array_module
from tinyse.tensor import Function


def _normalize_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
    return tuple(sorted(a % ndim for a in axes))


class Sum(Function):
    """y = sum of x over ``axis``;  dL/dx[i] = dL/dy[i with the summed axes dropped]."""

    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.x_shape = x.shape
        self.axes = _normalize_axes(self.axis, x.ndim)
        return x.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, grad_out):
        xp = get_array_module(grad_out)
        kept_shape = tuple(1 if i in self.axes else n for i, n in enumerate(self.x_shape))
        return xp.broadcast_to(grad_out.reshape(kept_shape), self.x_shape)


class Mean(Sum):
    """y = mean of x over ``axis`` (count m values);  dL/dx[i] = dL/dy[...] / m."""

    def forward(self, x):
        total = super().forward(x)
        self.count = math.prod(x.shape[a] for a in self.axes)
        return total / self.count

    def backward(self, grad_out):
        return super().backward(grad_out / self.count)
