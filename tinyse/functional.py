"""The functions users call, with PyTorch-like names; each one creates its op and applies it.

Arguments may be Tensors, arrays, or Python numbers (numbers take the dtype of
the tensor they meet, so float32 stays float32).
"""
from tinyse.backend import get_array_module
from tinyse.ops import activation, conv, elementwise, fused, linalg, loss, norm, pool, reduce, se
from tinyse.ops import shape as shape_ops
from tinyse.tensor import Tensor


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def _is_number(value):
    return isinstance(value, (int, float))


def _lift(a, b):
    """Turn a Python number among (a, b) into a 0-d array of the other's dtype and device.

    Two numbers become float32 tensors.
    """
    if _is_number(a) and _is_number(b):
        return Tensor(a), Tensor(b)

    def lift(value, other):
        if _is_number(value):
            other = _data(other)
            dtype = other.dtype if other.dtype.kind == "f" else None  # integer labels + 0.5 is not an integer
            return get_array_module(other).asarray(value, dtype=dtype)
        return value

    return lift(a, b), lift(b, a)


# --- elementwise -------------------------------------------------------------------
def add(a, b):
    return elementwise.Add()(*_lift(a, b))


def sub(a, b):
    return elementwise.Sub()(*_lift(a, b))


def mul(a, b):
    return elementwise.Mul()(*_lift(a, b))


def div(a, b):
    return elementwise.Div()(*_lift(a, b))


def neg(x):
    return elementwise.Neg()(x)


def pow(x, exponent):
    """x ** exponent for a constant number exponent."""
    return elementwise.PowConst(float(exponent))(x)


# --- reductions and shapes -----------------------------------------------------------
def sum(x, axis=None, keepdims=False):
    return reduce.Sum(axis, keepdims)(x)


def mean(x, axis=None, keepdims=False):
    return reduce.Mean(axis, keepdims)(x)


def reshape(x, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return shape_ops.Reshape(shape)(x)


def flatten(x, start_dim=1):
    """Keep the first ``start_dim`` axes, merge the rest: (N, C, H, W) -> (N, C*H*W)."""
    return reshape(x, *_data(x).shape[:start_dim], -1)


def transpose(x, axes=None):
    return shape_ops.Transpose(axes)(x)


def concat(tensors, axis=1):
    """Join tensors along ``axis`` (channels by default, as the branches of an Inception module)."""
    return shape_ops.Concat(axis)(*tensors)


def pad(x, pad_width):
    """Zero padding; ``pad_width`` is ((before, after), ...) for every axis, as in np.pad."""
    return shape_ops.Pad(pad_width)(x)


# --- linear algebra -------------------------------------------------------------------
def matmul(a, b):
    return linalg.MatMul()(a, b)


def linear(x, weight, bias=None):
    """x (N, in) @ weight (out, in)^T + bias (out,), as torch.nn.functional.linear."""
    return linalg.Linear()(x, weight, bias)


# --- activations ---------------------------------------------------------------------
def relu(x):
    return activation.ReLU()(x)


def sigmoid(x):
    return activation.Sigmoid()(x)


def tanh(x):
    return activation.Tanh()(x)


# --- convolution and pooling -------------------------------------------------------------
def conv2d(x, weight, bias=None, stride=1, padding=0, groups=1):
    """x (N, C, H, W), weight (O, C/groups, KH, KW), bias (O,) -> (N, O, OH, OW)."""
    return conv.Conv2d(stride, padding, groups)(x, weight, bias)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    return pool.MaxPool2d(kernel_size, stride, padding)(x)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    return pool.AvgPool2d(kernel_size, stride, padding)(x)


def global_avg_pool2d(x):
    """(N, C, H, W) -> (N, C): the mean of each channel."""
    return pool.GlobalAvgPool2d()(x)


def global_max_pool2d(x):
    """(N, C, H, W) -> (N, C): the maximum of each channel."""
    return pool.GlobalMaxPool2d()(x)


# --- normalisation and loss ---------------------------------------------------------------
def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
    """As torch.nn.functional.batch_norm; ``running_mean`` and ``running_var`` are updated in place."""
    return norm.BatchNorm(_data(running_mean), _data(running_var), training, momentum, eps)(x, weight, bias)


def batch_norm_relu(x, weight=None, bias=None, running_mean=None, running_var=None, training=True, momentum=0.1,
                    eps=1e-5):
    """relu(batch_norm(x, ...)) as one op (``tinyse.ops.fused``): the same numbers, one pass less."""
    return fused.BatchNormReLU(_data(running_mean), _data(running_var), training, momentum, eps)(x, weight, bias)


def cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean softmax cross-entropy of logits (N, K) against integer labels (N,) (array or Tensor).

    ``label_smoothing`` eps in [0, 1] aims at (1 - eps) on the label and eps / K on every class, as
    torch.nn.functional.cross_entropy's ``label_smoothing`` (the maths: ``tinyse.ops.loss.CrossEntropy``).
    """
    return loss.CrossEntropy(_data(labels), label_smoothing)(logits)


# --- squeeze and excitation ---------------------------------------------------------------
def se_squeeze(u):
    """U (N, C, H, W) -> z (N, C), the channel means."""
    return se.SESqueeze()(u)


def se_excite(z, w1, b1, w2, b2, gate="sigmoid"):
    """z (N, C) -> s = gate(relu(z w1^T + b1) w2^T + b2) (N, C); sigmoid gates lie in (0, 1)."""
    return se.SEExcite(gate)(z, w1, b1, w2, b2)


def se_scale(u, s):
    """U (N, C, H, W) times gates s (N, C), channel by channel."""
    return se.SEScale()(u, s)


def se_scale_add_relu(u, s, shortcut):
    """relu(se_scale(u, s) + shortcut) as one op (``tinyse.ops.fused``): the end of an SE residual unit."""
    return fused.ScaleAddReLU()(u, s, shortcut)


def add_relu(u, shortcut):
    """relu(u + shortcut) as one op (``tinyse.ops.fused``): the end of a residual unit."""
    return fused.ScaleAddReLU()(u, None, shortcut)
