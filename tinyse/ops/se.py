"""The three ops of a Squeeze-and-Excitation block (Hu et al., 2017), each with its own backward.

For a feature map U (N, C, H, W) and reduction ratio r:
    squeeze   z = mean of U over H, W                        (N, C)
    excite    s = gate(relu(z W1^T + b1) W2^T + b2)           (N, C), W1 (C/r, C), W2 (C, C/r)
    scale     X~[n, c] = s[n, c] * U[n, c]                    (N, C, H, W)
The gate is the sigmoid in the paper's SE block; tanh and ReLU are its ablations.
"""
from tinyse.backend import get_array_module
from tinyse.ops.activation import stable_sigmoid
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

    def forward(self, z, w1, b1, w2, b2):
        self.check(z, w1, b1, w2, b2)
        xp = get_array_module(z)
        a1 = z @ w1.T if b1 is None else z @ w1.T + b1
        self.z, self.w1, self.w2 = z, w1, w2
        self.h = xp.maximum(a1, 0)
        a2 = self.h @ w2.T if b2 is None else self.h @ w2.T + b2
        if self.gate == "sigmoid":
            self.s = stable_sigmoid(a2)
        elif self.gate == "tanh":
            self.s = xp.tanh(a2)
        else:
            self.s = xp.maximum(a2, 0)
        return self.s

    def backward(self, grad_s):
        s = self.s
        if self.gate == "sigmoid":
            grad_a2 = grad_s * s * (1 - s)
        elif self.gate == "tanh":
            grad_a2 = grad_s * (1 - s * s)
        else:
            grad_a2 = grad_s * (s > 0)
        grad_h = grad_a2 @ self.w2
        grad_a1 = grad_h * (self.h > 0)
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
            grad_s = get_array_module(grad_out).einsum("nchw,nchw->nc", grad_out, self.u)
        return grad_u, grad_s
