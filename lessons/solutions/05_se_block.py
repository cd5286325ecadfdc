"""Worked solutions to the exercises of lesson 5 (05_se_block.ipynb): the SE block.

Each ``exercise_<k>()`` runs the solution of exercise k and asserts its result. The file runs on its own,
``python lessons/solutions/05_se_block.py``, once lessons 3 to 5 have written ``lessons/mine/``
(``conv.py``, ``function.py``, ``ops.py``, ``activations.py``, ``se.py``).
"""
import math
import sys
from pathlib import Path

import numpy as np

LESSONS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(LESSONS))  # lessons/: checks.py and the student's own modules in mine/
if not (LESSONS / "mine" / "se.py").exists():
    raise FileNotFoundError("run lessons 3 to 5 first: they write lessons/mine/ (conv, function, ops, activations, se)")

import torch  # noqa: E402
from checks import check_function  # noqa: E402
from mine.function import Function  # noqa: E402
from mine.se import excite, scale, squeeze  # noqa: E402

import tinyse  # noqa: E402
import tinyse.functional as F  # noqa: E402
from tinyse.nn import SEBlock  # noqa: E402


def random_weights(rng, c, hidden):
    """W1 (hidden, C), b1 (hidden,), W2 (C, hidden), b2 (C,), at the scale of a linear layer's initialisation."""
    return [rng.standard_normal((hidden, c)) / np.sqrt(c), rng.standard_normal(hidden) * 0.1,
            rng.standard_normal((c, hidden)) / np.sqrt(hidden), rng.standard_normal(c) * 0.1]


class GlobalMaxPool2d(Function):
    """U (N, C, H, W) -> z (N, C): the maximum of each channel; dL/dU = dL/dz at the first maximum, 0 elsewhere."""

    def forward(self, u):
        n, c, h, w = self.u_shape = u.shape
        flat = u.reshape(n, c, h * w)
        self.argmax = flat.argmax(axis=2)  # (N, C)
        return flat.max(axis=2)

    def backward(self, grad_z):
        n, c, h, w = self.u_shape
        grad_flat = np.zeros((n, c, h * w), grad_z.dtype)
        np.put_along_axis(grad_flat, self.argmax[:, :, None], grad_z[:, :, None], axis=2)
        return grad_flat.reshape(self.u_shape)


def max_se_block(u, w1, b1, w2, b2):
    """The SE block with a max squeeze: U * excite(global max pool(U))."""
    return scale(u, excite(GlobalMaxPool2d()(u), w1, b1, w2, b2))


def torch_max_se_block(u, w1, b1, w2, b2):
    gates = torch.sigmoid(torch.relu(u.amax(dim=(2, 3)) @ w1.T + b1) @ w2.T + b2)  # (N, C)
    return u * gates[:, :, None, None]


def exercise_1():
    """Max squeeze: replace the squeeze by global max pooling; check it on a tie-free input, and compare the whole
    block with SEBlock(c, squeeze="max") holding the same weights."""
    rng = np.random.default_rng(0)
    n, c, h, w, hidden = 2, 8, 3, 3, 2
    u = rng.permutation(n * c * h * w).reshape(n, c, h, w) / (n * c * h * w) * 4 - 2  # distinct values: no ties
    weights = random_weights(rng, c, hidden)
    print("  the max squeeze alone:")
    errors = check_function(GlobalMaxPool2d, [u], torch_fn=lambda x: x.amax(dim=(2, 3)))
    print("  the whole block with a max squeeze:")
    errors.update(check_function(lambda: max_se_block, [u, *weights], torch_fn=torch_max_se_block))
    assert max(errors.values()) < 1e-6

    block = SEBlock(c, reduction=c // hidden, squeeze="max")
    block.load_state_dict(dict(zip(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"], weights)))  # float32
    u32 = u.astype(np.float32)
    ours = max_se_block(u32, *(p.astype(np.float32) for p in weights)).data
    theirs = block(tinyse.Tensor(u32)).data
    error = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    print(f"  vs SEBlock(squeeze='max'), float32: {error:.1e}")
    assert error < 1e-6


class ExciteTanh(Function):
    """z (N, C), W1 (C/r, C), b1 (C/r,), W2 (C, C/r), b2 (C,) -> s = tanh(relu(z W1^T + b1) W2^T + b2) (N, C).

    The backward is Excite's with one step changed: dL/da2 = dL/ds (1 - s^2), as tanh' = 1 - tanh^2.
    """

    def forward(self, z, w1, b1, w2, b2):
        self.z, self.w1, self.w2 = z, w1, w2
        self.a1 = z @ w1.T + b1  # (N, C/r)
        self.h = np.maximum(self.a1, 0)  # (N, C/r)
        self.s = np.tanh(self.h @ w2.T + b2)  # (N, C)
        return self.s

    def backward(self, grad_s):
        grad_a2 = grad_s * (1 - self.s * self.s)  # (N, C): the only line that differs from the sigmoid gate
        grad_h = grad_a2 @ self.w2  # (N, C/r)
        grad_a1 = grad_h * (self.a1 > 0)  # (N, C/r)
        return grad_a1 @ self.w1, grad_a1.T @ self.z, grad_a1.sum(axis=0), grad_a2.T @ self.h, grad_a2.sum(axis=0)


def exercise_2():
    """Write the backward of the excitation with a tanh gate (s = tanh(a2)); which gates can amplify a channel?"""
    rng = np.random.default_rng(1)
    n, c, hidden = 3, 8, 2
    inputs = [rng.standard_normal((n, c)), *random_weights(rng, c, hidden)]
    errors = check_function(ExciteTanh, inputs,
                            torch_fn=lambda z, w1, b1, w2, b2: torch.tanh(torch.relu(z @ w1.T + b1) @ w2.T + b2))
    assert max(errors.values()) < 1e-6

    # the same as tinyse's op with gate="tanh", output and every gradient
    grad_s = rng.standard_normal((n, c))
    results = []
    for op in (ExciteTanh(), lambda *t: F.se_excite(*t, gate="tanh")):
        tensors = [tinyse.Tensor(x, requires_grad=True) for x in inputs]
        s = op(*tensors)
        s.backward(grad_s)
        results.append([s.data] + [t.grad for t in tensors])
    assert all(np.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(*results))
    print("  the same output and gradients as F.se_excite(..., gate='tanh')")

    # Which gates amplify? |s| > 1 multiplies a channel up. tanh lies in (-1, 1): it can flip a channel's sign
    # but never amplify it. A ReLU gate lies in [0, inf): it can amplify. The sigmoid lies in (0, 1): it can only damp.
    a = np.linspace(-6, 6, 101)
    tanh_gate, relu_gate, sigmoid_gate = np.tanh(a), np.maximum(a, 0), 1 / (1 + np.exp(-a))
    assert np.abs(tanh_gate).max() < 1 and tanh_gate.min() < 0
    assert relu_gate.max() > 1
    assert sigmoid_gate.min() > 0 and sigmoid_gate.max() < 1
    print("  amplify (|s| > 1): only the ReLU gate; tanh can flip a channel's sign, the sigmoid only damps")


def exercise_3():
    """For a 64-channel SE block on an 8x8 map, count parameters and multiply-adds for r = 1, 2, 4, ..., 128 and
    check them with tinyse.summary. Where does the parameter count stop falling, and why?"""
    c, size = 64, 8
    params = {}
    for r in [2**k for k in range(8)]:
        hidden = max(1, c // r)
        se_params, se_macs = 2 * c * hidden + hidden + c, 2 * c * hidden + c * size * size
        counted = tinyse.summary(SEBlock(c, reduction=r), (1, c, size, size), show=False)
        assert (counted["total_params"], counted["total_macs"]) == (se_params, se_macs)
        params[r] = se_params
        print(f"  r = {r:>3}: hidden {hidden:>2}, {se_params:>5} parameters, {se_macs:>5} multiply-adds")
    # It stops falling at r = C = 64: the hidden width max(1, C // r) cannot go below one unit, so r = 64 and
    # r = 128 give the same block (2C + 1 + C = 193 parameters). The multiply-adds level off at C H W = 4,096,
    # the scale's, long before.
    assert params[64] == params[128] == 2 * c + 1 + c
    assert all(params[r] > params[2 * r] for r in (1, 2, 4, 8, 16, 32))


def exercise_4():
    """Below which width C does the SE block's multiply-add cost exceed 1% of the 3x3 conv it follows, whatever r
    and the map size?"""
    # ratio = (2 C hidden + C H W) / (9 C^2 H W) >= 1 / (9 C): the scale alone. 1 / (9 C) > 1% for C < 100 / 9 = 11.1.
    threshold = math.floor(100 / 9)
    assert threshold == 11

    def ratio(c, r, size):
        hidden = max(1, c // r)
        return (2 * c * hidden + c * size * size) / (9 * c * c * size * size)

    settings = [(r, size) for r in (1, 2, 4, 8, 16, 32, 64, 128) for size in (1, 2, 4, 8, 16, 32, 64, 128)]
    for c in range(1, threshold + 1):  # C <= 11: above 1% in every setting
        assert min(ratio(c, r, size) for r, size in settings) > 0.01
    assert min(ratio(12, r, size) for r, size in settings) < 0.01  # C = 12: below 1% with a large map and r
    print(f"  the scale's C H W multiply-adds alone are 1 / (9 C) of the conv's: above 1% for C <= {threshold}")


def exercise_5():
    """Set W2 = 0, b2 = 0 and backpropagate once: which gradients are zero? Why does training still move the block
    away from "every gate 0.5"?"""
    rng = np.random.default_rng(2)
    n, c, h, w, hidden = 4, 16, 4, 4, 4
    u = rng.standard_normal((n, c, h, w)) + 0.5
    w1, b1, _, _ = random_weights(rng, c, hidden)
    w2, b2 = np.zeros((c, hidden)), np.zeros(c)
    tensors = [tinyse.Tensor(x, requires_grad=True) for x in (w1, b1, w2, b2)]
    z = squeeze(u)
    s = excite(z, *tensors)
    assert np.all(s.data == 0.5)
    s.backward(rng.standard_normal((n, c)))  # some upstream dL/ds
    grad_w1, grad_b1, grad_w2, grad_b2 = (t.grad for t in tensors)
    norms = {name: float(np.abs(g).max()) for name, g in
             [("dW1", grad_w1), ("db1", grad_b1), ("dW2", grad_w2), ("db2", grad_b2)]}
    print("  largest |gradient|: " + ", ".join(f"{k} {v:.2e}" for k, v in norms.items()))
    # dL/dh = dL/da2 W2 = 0, so dW1, db1 (and dL/dz: nothing reaches U through the squeeze) are exactly zero.
    # dW2 = dL/da2^T h is not: h = relu(W1 z + b1) carries the squeeze's information, and W2 learns from it.
    assert norms["dW1"] == 0 and norms["db1"] == 0
    assert norms["dW2"] > 0 and norms["db2"] > 0
    # one gradient step on W2 alone already makes the gates depend on the image
    w2_after, b2_after = w2 - 0.5 * grad_w2, b2 - 0.5 * grad_b2
    gates = excite(z, w1, b1, w2_after, b2_after).data
    spread = float(gates.std(axis=0).max())
    print(f"  after one step on W2, b2: gates from {gates.min():.3f} to {gates.max():.3f}, "
          f"spread over images {spread:.3f}")
    assert spread > 1e-3


def exercise_6():
    """In float32 and float64, from which a does each formula return exactly 0: 1/(1 + e^-a), the tanh form and the
    e^-|a| form? Explain each number from the floating-point format."""

    def naive(a):
        with np.errstate(over="ignore"):
            return 1 / (1 + np.exp(-a))

    def tanh_form(a):
        return 0.5 * (1 + np.tanh(a / 2))

    def exp_form(a):
        with np.errstate(under="ignore"):
            e = np.exp(-np.abs(a))
        return np.where(a >= 0, 1, e) / (1 + e)

    for dtype in (np.float32, np.float64):
        info = np.finfo(dtype)
        grid = -np.arange(0, 800, 0.01).astype(dtype)
        first_zero = {name: float(grid[form(grid) == 0].max()) for name, form in
                      [("1/(1+e^-a)", naive), ("tanh form", tanh_form), ("e^-|a| form", exp_form)]}
        predicted = {
            # e^-a overflows to inf past the largest number: 1 / inf = 0
            "1/(1+e^-a)": -math.log(float(info.max)),
            # tanh(a/2) rounds to -1 when 1 - |tanh| = 2 e^-|a| falls below half the spacing of numbers just below 1
            # (eps / 4): |a| > ln(8 / eps)
            "tanh form": -math.log(8 / float(info.eps)),
            # e^a underflows to 0 below half the smallest subnormal number
            "e^-|a| form": math.log(float(info.smallest_subnormal)) - math.log(2),
        }
        print(f"  {np.dtype(dtype).name}: " + ";  ".join(f"{name} exactly 0 from a = {first_zero[name]:.2f} "
                                                       f"(predicted {predicted[name]:.2f})" for name in first_zero))
        assert abs(first_zero["1/(1+e^-a)"] - predicted["1/(1+e^-a)"]) < 0.05
        assert abs(first_zero["e^-|a| form"] - predicted["e^-|a| form"]) < 0.05
        # NumPy's float32 tanh returns the float just below 1 until |x| = 10, a little past where correct rounding
        # would give 1 (|x| = 9.0): the float32 tanh form reaches 0 at a = -20 rather than -18.
        assert predicted["tanh form"] - 2.5 < first_zero["tanh form"] <= predicted["tanh form"] + 0.2
    assert first_zero["tanh form"] > -40  # float64: the tanh form gives up near -38, the e^-|a| form near -745


if __name__ == "__main__":
    for exercise in (exercise_1, exercise_2, exercise_3, exercise_4, exercise_5, exercise_6):
        print(f"{exercise.__name__}: {exercise.__doc__.splitlines()[0]}")
        exercise()
    print("all exercises of lesson 5 pass")
