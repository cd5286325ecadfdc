"""Ops that move values around without arithmetic: reshape, transpose, concat, pad.

Their backward moves the gradient back the same way: reshape it back, transpose
it back, split it, or crop the padding off.
"""
from tinyse.backend import get_array_module
from tinyse.tensor import Function


class Reshape(Function):
    """y = x viewed with a new shape;  dL/dx = dL/dy reshaped to x's shape."""

    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.x_shape = x.shape
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ValueError(f"cannot reshape a tensor of shape {x.shape} into {self.shape}") from None

    def backward(self, grad_out):
        return grad_out.reshape(self.x_shape)


class Transpose(Function):
    """y = x with its axes permuted (reversed by default);  dL/dx = dL/dy permuted back."""

    def __init__(self, axes=None):
        self.axes = axes

    def forward(self, x):
        self.axes = tuple(reversed(range(x.ndim))) if self.axes is None else tuple(self.axes)
        return x.transpose(self.axes)

    def backward(self, grad_out):
        inverse = [0] * len(self.axes)
        for i, a in enumerate(self.axes):
            inverse[a] = i
        return grad_out.transpose(inverse)


class Concat(Function):
    """y = [x_1, x_2, ...] joined along ``axis``;  dL/dx_k = the slice of dL/dy that x_k filled."""

    def __init__(self, axis=1):
        self.axis = axis

    def forward(self, *xs):
        if len({x.ndim for x in xs}) != 1 or not -xs[0].ndim <= self.axis < xs[0].ndim:
            raise ValueError(f"concat along axis {self.axis} got shapes {[x.shape for x in xs]}")
        self.axis %= xs[0].ndim
        if len({x.shape[: self.axis] + x.shape[self.axis + 1 :] for x in xs}) != 1:
            shapes = ", ".join(str(x.shape) for x in xs)
            raise ValueError(f"concat along axis {self.axis} needs equal sizes on the other axes, got {shapes}")
        self.sizes = [x.shape[self.axis] for x in xs]
        return get_array_module(*xs).concatenate(xs, axis=self.axis)

    def backward(self, grad_out):
        grads, start = [], 0
        index = [slice(None)] * grad_out.ndim
        for size in self.sizes:
            index[self.axis] = slice(start, start + size)
            grads.append(grad_out[tuple(index)])
            start += size
        return tuple(grads)


class Pad(Function):
    """y = x with zeros added: ``pad_width`` is ((before, after), ...) per axis, as in np.pad.

    dL/dx = dL/dy with the padded border cropped off.
    """

    def __init__(self, pad_width):
        self.pad_width = tuple((int(before), int(after)) for before, after in pad_width)

    def forward(self, x):
        if len(self.pad_width) != x.ndim or any(b < 0 or a < 0 for b, a in self.pad_width):
            raise ValueError(f"pad widths {self.pad_width} do not fit a tensor of shape {x.shape}")
        return get_array_module(x).pad(x, self.pad_width)

    def backward(self, grad_out):
        return grad_out[tuple(slice(b, n - a) for (b, a), n in zip(self.pad_width, grad_out.shape))]
