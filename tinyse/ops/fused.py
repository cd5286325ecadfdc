"""Fused chains of elementwise ops: one pass over memory, and one GPU kernel, instead of three.

    BatchNormReLU   y = relu(batch_norm(x))                          (conv -> bn -> relu, in every block:
                                                                      F.batch_norm_relu, nn.BatchNormReLU2d)
    ScaleAddReLU    y = relu(u * s[:, :, None, None] + shortcut)     (the end of a residual unit: SE scale,
                                                                      or none, then the addition and ReLU:
                                                                      F.se_scale_add_relu, F.add_relu)

Each equals its chain of separate ops, and a test holds them equal. The backward
is the chain's backward: the ReLU passes dL/dy where y > 0 and stops it
elsewhere, then the ops before it take over.

Why: the separate ops each read and write a whole activation, and allocate
one more. On NumPy the fused op works in place in its output array; on CuPy
the forward and the ReLU's backward are each one ``ElementwiseKernel``.
"""
import numpy as np

from tinyse.backend import elementwise_kernel, get_array_module
from tinyse.ops.activation import relu_grad
from tinyse.ops.norm import BatchNorm
from tinyse.ops.se import gate_grad_of_scale
from tinyse.parallel import for_each_chunk_of
from tinyse.tensor import Function


class BatchNormReLU(BatchNorm):
    """y = relu(gamma x_hat + beta): batch norm (see ``BatchNorm``) with the ReLU in its last pass.

    Passes over the activation on NumPy, besides batch norm's: the forward's max(y, 0), in place
    (R + W); the backward's mask y > 0 (R, and a new bool array) and dL/dy * mask (R + W, a new array,
    which batch norm's backward then reads as its dL/dy).
    """

    relu = True  # BatchNorm.scale_shift applies it in the same pass (on the GPU, the same kernel)

    def forward(self, x, gamma=None, beta=None):
        self.y = super().forward(x, gamma, beta)  # also the next layer's input, so keeping it costs no memory
        return self.y

    def backward(self, grad_out):
        if get_array_module(grad_out) is not np:
            return super().backward(grad_out)  # the GPU kernels mask dL/dy by y > 0 themselves (self.relu)
        return super().backward(relu_grad(grad_out, self.y))


class ScaleAddReLU(Function):
    """y = relu(u * s[n, c] + shortcut): the SE scale, the residual addition and the ReLU in one op.

    With s = None it is relu(u + shortcut), the end of a residual unit without SE.
    Shapes: u (N, C, H, W), s (N, C) or None, shortcut (N, C, H, W) -> y (N, C, H, W).
    Backward, with g = dL/dy where y > 0, else 0:
        dL/du = g * s[n, c],   dL/ds[n, c] = sum over h, w of g * u,   dL/dshortcut = g.
    Passes over the activation on NumPy (R reads it, W writes it), with s: forward u * s (R + W, the
    new output), + shortcut (2R + W), max(y, 0) (R + W), all in place after the first; backward the
    mask (R, a bool array), g (R + W, new), g * s (R + W, new), dL/ds (2R). g goes to the shortcut as it
    is, so dL/du cannot be written into it.
    """

    def forward(self, u, s, shortcut):
        if u.ndim != 4 or (s is not None and s.shape != u.shape[:2]) or shortcut.shape != u.shape:
            raise ValueError(
                f"se_scale_add_relu expects u (N, C, H, W), s (N, C) and a shortcut shaped as u, "
                f"got u {u.shape}, s {None if s is None else s.shape}, shortcut {shortcut.shape}"
            )
        if get_array_module(u, s, shortcut) is np:  # each chunk of the batch through the three passes, on every core
            y = np.empty_like(u)

            def scale_add_relu(a, b):
                if s is None:
                    np.add(u[a:b], shortcut[a:b], out=y[a:b])
                else:
                    np.multiply(u[a:b], s[a:b, :, None, None], out=y[a:b])
                    y[a:b] += shortcut[a:b]
                np.maximum(y[a:b], 0, out=y[a:b])

            for_each_chunk_of([u, shortcut, y], scale_add_relu)
        elif s is None:  # a CuPy kernel takes one dtype where NumPy casts: u's, as the NumPy branch writes
            shortcut = shortcut.astype(u.dtype, copy=False)
            y = elementwise_kernel(
                "T u, T shortcut", "T y", "T v = u + shortcut; y = v > 0 ? v : (T)0", "tinyse_add_relu"
            )(u, shortcut)
        else:
            s, shortcut = s.astype(u.dtype, copy=False), shortcut.astype(u.dtype, copy=False)
            y = elementwise_kernel(
                "T u, T s, T shortcut", "T y", "T v = u * s + shortcut; y = v > 0 ? v : (T)0", "tinyse_scale_add_relu"
            )(u, s[:, :, None, None], shortcut)
        self.u, self.s, self.y = u, s, y
        return y

    def backward(self, grad_out):
        u, s, y, need = self.u, self.s, self.y, self.needs_input_grad
        if get_array_module(grad_out, y) is not np:  # one kernel for g and dL/du, one reduction for dL/ds
            if need[0] and s is not None:
                g, grad_u = elementwise_kernel(
                    "T grad_out, T y, T s", "T g, T grad_u", "g = y > 0 ? grad_out : (T)0; grad_u = g * s",
                    "tinyse_scale_add_relu_grad")(grad_out, y, s[:, :, None, None])
            else:
                g = relu_grad(grad_out, y)
                grad_u = g if need[0] else None  # without s, dL/du = g
            grad_s = gate_grad_of_scale(g, u) if need[1] else None
            return grad_u, grad_s, g if need[2] else None
        # NumPy: each chunk of the batch through g, dL/du and dL/ds while it is in the cache, on every core
        g = np.empty(y.shape, y.dtype)
        grad_u = np.empty_like(g) if need[0] and s is not None else None
        grad_s = np.empty(s.shape, s.dtype) if need[1] else None

        def gradients(a, b):
            np.multiply(grad_out[a:b], y[a:b] > 0, out=g[a:b])  # g = relu_grad(grad_out, y)
            if grad_u is not None:
                np.multiply(g[a:b], s[a:b, :, None, None], out=grad_u[a:b])
            if grad_s is not None:
                grad_s[a:b] = np.einsum("nchw,nchw->nc", g[a:b], u[a:b])

        for_each_chunk_of([grad_out, y, g] if grad_u is None else [grad_out, y, g, grad_u], gradients)
        if need[0] and s is None:
            grad_u = g
        return grad_u, grad_s, g if need[2] else None
