"""The three ops of a Squeeze-and-Excitation block (Hu et al., 2017), each with its own backward.

For a feature map U (N, C, H, W) and reduction ratio r:
    squeeze   z = mean of U over H, W                        (N, C)
    excite    s = gate(relu(z W1^T + b1) W2^T + b2)           (N, C), W1 (C/r, C), W2 (C, C/r)
    scale     X~[n, c] = s[n, c] * U[n, c]                    (N, C, H, W)
The gate is the sigmoid in the paper's SE block; tanh and ReLU are its ablations.
"""
import numpy as np

from tinyse.backend import elementwise_kernel, get_array_module, reduction_kernel
from tinyse.ops.activation import relu_grad, stable_sigmoid
from tinyse.ops.pool import GlobalAvgPool2d
from tinyse.tensor import Function


class SESqueeze(GlobalAvgPool2d):
    """z[n, c] = 1/(H W) sum over h, w of U[n, c, h, w]: the squeeze is global average pooling.

    Each channel's whole spatial extent is summarised in one number, so the
    excitation can use information from outside each unit's receptive field.
    dL/dU[n, c, h, w] = dL/dz[n, c] / (H W).
    """


GATES = ("sigmoid", "tanh", "relu")


class SEExcite(Function):
    """s = gate(a2),  a2 = h W2^T + b2,  h = relu(a1),  a1 = z W1^T + b1.

    Shapes: z (N, C), W1 (Cr, C), b1 (Cr,), W2 (C, Cr), b2 (C,) (biases may be None) -> s (N, C).
    Backward, from dL/ds:
        dL/da2 = dL/ds * gate'(a2)     sigmoid: s (1 - s);  tanh: 1 - s^2;  relu: [s > 0]
        dL/dW2 = dL/da2^T h,   dL/db2 = sum over N of dL/da2,   dL/dh = dL/da2 W2
        dL/da1 = dL/dh * [a1 > 0]
        dL/dW1 = dL/da1^T z,   dL/db1 = sum over N of dL/da1,   dL/dz = dL/da1 W1
    """

    def __init__(self, gate="sigmoid"):
        if gate not in GATES:
            raise ValueError(f"unknown SE gate {gate!r}: choose one of {GATES}")
        self.gate = gate

    fresh_input_grads = True  # each gradient is a new array (a matrix product or a sum)

    def forward(self, z, w1, b1, w2, b2):
        self.check(z, w1, b1, w2, b2)
        self.z, self.w1, self.w2 = z, w1, w2
        self.h = add_bias_then(z @ w1.T, b1, "relu")
        self.s = add_bias_then(self.h @ w2.T, b2, self.gate)
        return self.s

    def backward(self, grad_s):
        grad_a2 = gate_grad(grad_s, self.s, self.gate)
        grad_h = grad_a2 @ self.w2
        grad_a1 = relu_grad(grad_h, self.h)
        need = self.needs_input_grad
        return (
            grad_a1 @ self.w1 if need[0] else None,
            grad_a1.T @ self.z if need[1] else None,
            grad_a1.sum(axis=0) if need[2] else None,
            grad_a2.T @ self.h if need[3] else None,
            grad_a2.sum(axis=0) if need[4] else None,
        )

    @staticmethod
    def check(z, w1, b1, w2, b2):
        if z.ndim != 2:
            raise ValueError(f"se_excite expects z of shape (N, C), got {z.shape}")
        c = z.shape[1]
        if w1.ndim != 2 or w1.shape[1] != c or w2.shape != (c, w1.shape[0]):
            raise ValueError(
                f"se_excite: for z {z.shape} expected w1 (hidden, {c}) and w2 ({c}, hidden), "
                f"got w1 {w1.shape}, w2 {w2.shape}"
            )
        for name, bias, size in [("b1", b1, w1.shape[0]), ("b2", b2, c)]:
            if bias is not None and bias.shape != (size,):
                raise ValueError(f"se_excite: {name} must have shape ({size},), got {bias.shape}")


def add_bias_then(v, bias, gate):
    """gate(v + bias) for v (N, K) a fresh product, bias (K,) or None: in place on NumPy; on the GPU one
    kernel for the ReLU and the sigmoid (the paper's gate; its sigmoid in the overflow-free form of
    ``stable_sigmoid``), CuPy's own calls for the tanh ablation."""
    xp = get_array_module(v)
    if xp is np:
        if bias is not None:
            v += bias
        if gate == "sigmoid":
            return stable_sigmoid(v)
        return np.maximum(v, 0, out=v) if gate == "relu" else np.tanh(v, out=v)
    bias = 0.0 if bias is None else bias.astype(v.dtype, copy=False)
    if gate == "relu":
        return elementwise_kernel("T v, T bias", "T y", "const T x = v + bias; y = x > 0 ? x : (T)0",
                                  "tinyse_bias_relu")(v, bias)
    if gate == "sigmoid":
        return elementwise_kernel("T v, T bias", "T y", SIGMOID_CUDA, "tinyse_bias_sigmoid")(v, bias)
    return xp.tanh(v + bias)


def gate_grad(grad_y, y, gate):
    """dL/dv from dL/dy and y = gate(v): a new array (one kernel on the GPU for the sigmoid and the ReLU)."""
    if gate == "relu":
        return relu_grad(grad_y, y)
    if gate == "sigmoid" and get_array_module(grad_y, y) is not np:
        return elementwise_kernel("T grad_y, T y", "T grad_v", "grad_v = grad_y * y * ((T)1 - y)",
                                  "tinyse_sigmoid_grad")(grad_y, y)
    return grad_y * y * (1 - y) if gate == "sigmoid" else grad_y * (1 - y * y)


def gate_grad_of_scale(grad, u):
    """dL/ds[n, c] = sum over h, w of grad * u, for a scale X~ = s[n, c] u (grad = dL/dX~): (N, C).

    One pass, no (N, C, H, W) temporary: an einsum on NumPy; on the GPU one ReductionKernel (CuPy's
    two-operand einsum would copy a transposed operand, then run a batched matrix product)."""
    if get_array_module(grad, u) is np:
        return np.einsum("nchw,nchw->nc", grad, u)
    return reduction_kernel("T grad, T u", "T grad_s", "grad * u", "a + b", "grad_s = a", "0",
                            "tinyse_se_scale_grad_s")(grad, u, axis=(2, 3))


# y = sigmoid(v + bias) without overflow: with e = exp(-|x|), 1 / (1 + e) for x >= 0 and e / (1 + e) below.
SIGMOID_CUDA = """
    const T x = v + bias;
    const T e = exp(-fabs(x));
    y = (x >= 0 ? (T)1 : e) / ((T)1 + e);
"""


class SEScale(Function):
    """X~[n, c, h, w] = s[n, c] * U[n, c, h, w].

    dL/dU = dL/dX~ * s[n, c],   dL/ds[n, c] = sum over h, w of dL/dX~ * U.
    Shapes: U (N, C, H, W), s (N, C) -> (N, C, H, W).
    """

    fresh_input_grads = True  # both gradients are new arrays

    def forward(self, u, s):
        if u.ndim != 4 or s.shape != u.shape[:2]:
            raise ValueError(f"se_scale expects u (N, C, H, W) and s (N, C), got u {u.shape}, s {s.shape}")
        self.u, self.s = u, s
        return u * s[:, :, None, None]

    def backward(self, grad_out):
        grad_u = grad_out * self.s[:, :, None, None] if self.needs_input_grad[0] else None
        grad_s = None
        if self.needs_input_grad[1]:  # one pass, no (N, C, H, W) temporary
            grad_s = gate_grad_of_scale(grad_out, self.u)
        return grad_u, grad_s
