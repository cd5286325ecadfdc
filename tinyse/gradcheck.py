"""Check an analytic backward against central finite differences, in float64."""
import numpy as np

from tinyse.backend import get_array_module
from tinyse.tensor import Tensor, no_grad


def gradcheck(fn, *inputs, eps=1e-6, seed=2017):
    """The worst relative error between tinyse's gradients of ``fn`` and finite differences.

    ``fn`` takes Tensors and returns a Tensor. Every floating-point input is
    copied to float64 and checked; other inputs (integer labels) are passed as
    they are. The checked scalar is L = sum(fn(*inputs) * w) for a fixed random
    w (a plain sum could hide errors that cancel). For each element x_i:
        numeric_i = (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)
    and for each input
        error = max_i |analytic_i - numeric_i| / max(max_i |analytic_i|, max_i |numeric_i|, 1e-8),
    the largest difference relative to the gradient's own scale. Returns the
    worst error over the inputs (below about 1e-6 is a correct backward).
    """
    tensors = []
    for x in inputs:
        data = x.data if isinstance(x, Tensor) else x
        if hasattr(data, "dtype") and data.dtype.kind == "f":
            tensors.append(Tensor(data.astype("float64"), requires_grad=True))
        else:
            tensors.append(x)
    checked = [t for t in tensors if isinstance(t, Tensor) and t.requires_grad]

    output = fn(*tensors)
    xp = get_array_module(output.data)
    weights = xp.asarray(np.random.default_rng(seed).standard_normal(output.shape))
    (output * weights).sum().backward()

    def loss():
        with no_grad():
            return float((fn(*tensors).data * weights).sum())

    worst = 0.0
    for t in checked:
        analytic = t.grad if t.grad is not None else xp.zeros_like(t.data)
        numeric = xp.zeros_like(t.data)
        flat, numeric_flat = t.data.reshape(-1), numeric.reshape(-1)  # views into t.data, numeric
        for i in range(flat.size):
            original = float(flat[i])
            flat[i] = original + eps
            loss_plus = loss()
            flat[i] = original - eps
            loss_minus = loss()
            flat[i] = original
            numeric_flat[i] = (loss_plus - loss_minus) / (2 * eps)
        scale = max(float(abs(analytic).max()), float(abs(numeric).max()), 1e-8)
        worst = max(worst, float(abs(analytic - numeric).max()) / scale)
    return worst
