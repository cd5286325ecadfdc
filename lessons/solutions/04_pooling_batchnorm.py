"""Worked solutions to the exercises of lesson 4 (04_pooling_batchnorm.ipynb): Function, pooling, batch norm.

Each ``exercise_<k>()`` runs the solution of exercise k and asserts its result. The file runs on its own,
``python lessons/solutions/04_pooling_batchnorm.py``, once lessons 3 and 4 have written ``lessons/mine/``
(``conv.py``, ``function.py``, ``ops.py``).
"""
import sys
from pathlib import Path

import numpy as np

LESSONS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(LESSONS))  # lessons/: checks.py and the student's own modules in mine/
if not (LESSONS / "mine" / "ops.py").exists():
    raise FileNotFoundError("run lessons 3 and 4 first: they write lessons/mine/conv.py, function.py and ops.py")

import torch  # noqa: E402
import torch.nn.functional as TF  # noqa: E402
from checks import check_function, numerical_gradients  # noqa: E402
from mine.function import Function  # noqa: E402
from mine.ops import batch_norm2d, max_pool2d  # noqa: E402

import tinyse  # noqa: E402
import tinyse.functional as F  # noqa: E402


class GlobalMaxPool2d(Function):
    """x (N, C, H, W) -> z (N, C): the maximum of each channel; dL/dx = dL/dz at the first maximum, 0 elsewhere."""

    def forward(self, x):
        n, c, h, w = self.x_shape = x.shape
        flat = x.reshape(n, c, h * w)  # (N, C, H*W)
        self.argmax = flat.argmax(axis=2)  # (N, C): where in its channel each (first) maximum sits
        return flat.max(axis=2)

    def backward(self, grad_z):  # grad_z (N, C) -> grad_x (N, C, H, W)
        n, c, h, w = self.x_shape
        grad_flat = np.zeros((n, c, h * w), grad_z.dtype)
        np.put_along_axis(grad_flat, self.argmax[:, :, None], grad_z[:, :, None], axis=2)  # one pixel per channel
        return grad_flat.reshape(self.x_shape)


def exercise_1():
    """Write GlobalMaxPool2d's backward ((N, C, H, W) -> (N, C), gradient to each channel's first maximum); check
    it with finite differences and PyTorch on a tie-free input, and against F.global_max_pool2d."""
    rng = np.random.default_rng(0)
    tie_free = rng.permutation(2 * 3 * 4 * 5).reshape(2, 3, 4, 5) / 120.0  # a shuffled ramp: no ties
    errors = check_function(GlobalMaxPool2d, [tie_free], torch_fn=lambda x: x.amax(dim=(2, 3)))
    assert max(errors.values()) < 1e-6

    # tinyse's op gives the gradient to the first maximum as well: on a tie-heavy input the two agree exactly
    ties = rng.integers(0, 3, size=(2, 3, 4, 5)).astype(np.float64)
    grad_z = rng.standard_normal((2, 3))
    grads = []
    for op in (GlobalMaxPool2d(), F.global_max_pool2d):
        x = tinyse.Tensor(ties.copy(), requires_grad=True)
        op(x).backward(grad_z)
        grads.append(x.grad)
    assert np.array_equal(grads[0], grads[1])
    print("  with ties: the same gradient as F.global_max_pool2d (the first maximum of each channel)")


def exercise_2():
    """Run tinyse.gradcheck on max_pool2d over a window with two equal maxima: what error, and why no bug?"""
    x = np.array([[1.0, 3.0], [3.0, 0.0]])[None, None]  # (1, 1, 2, 2): one 2x2 window, two 3s
    error = tinyse.gradcheck(lambda t: max_pool2d(t, 2), x)
    print(f"  gradcheck on a tied window: relative error {error:.2f}")

    # why: L = w * max(window); nudging the first 3 up raises the max by eps, nudging it down leaves the
    # other 3 as the max: the central difference is (w eps - 0) / (2 eps) = w / 2, for either tied pixel.
    grad_y = np.array([[[[1.0]]]])
    numeric = numerical_gradients(lambda a: float(np.sum(max_pool2d(a, 2).data * grad_y)), [x.copy()])[0]
    t = tinyse.Tensor(x.copy(), requires_grad=True)
    max_pool2d(t, 2).backward(grad_y)
    print(f"  finite differences {numeric.ravel()}, backward {t.grad.ravel()}")
    assert np.allclose(numeric.ravel(), [0, 0.5, 0.5, 0])  # the mean of the slopes on either side of the kink
    assert np.array_equal(t.grad.ravel(), [0, 1, 0, 0])  # the whole gradient to the first maximum
    assert abs(error - 0.5) < 1e-6
    # Not a bug: at a tie max has no derivative; any split of dL/dy between the tied pixels (1 and 0, or 0.5
    # and 0.5) is a valid subgradient. The backward picks the first one, as PyTorch does.


class LayerNorm(Function):
    """x (N, C, H, W), gamma and beta (C, H, W) -> y: each sample normalised over its m = C H W values.

    x_hat = (x - mu) / sqrt(var + eps) with mu, var per sample;  y = gamma x_hat + beta.
    Backward, g = dL/dy gamma:  dL/dx = (g - mean(g) - x_hat mean(g x_hat)) / sqrt(var + eps), the means over
    the sample's axes (1, 2, 3) instead of batch norm's (0, 2, 3);  dL/dgamma, dL/dbeta sum over the batch only.
    """

    eps = 1e-5

    def forward(self, x, gamma, beta):
        self.axes = tuple(range(1, x.ndim))  # every axis but the batch
        mu = x.mean(axis=self.axes, keepdims=True)  # (N, 1, 1, 1)
        var = x.var(axis=self.axes, keepdims=True)
        self.inv_std = 1 / np.sqrt(var + self.eps)
        self.x_hat = (x - mu) * self.inv_std
        self.gamma = gamma
        return gamma * self.x_hat + beta

    def backward(self, grad_y):
        g = grad_y * self.gamma  # dL/dx_hat
        mean_g = g.mean(axis=self.axes, keepdims=True)
        mean_g_x_hat = (g * self.x_hat).mean(axis=self.axes, keepdims=True)
        grad_x = (g - mean_g - self.x_hat * mean_g_x_hat) * self.inv_std
        return grad_x, (grad_y * self.x_hat).sum(axis=0), grad_y.sum(axis=0)


def exercise_3():
    """Derive and write layer norm's backward (each sample normalised over its (C, H, W) values); check it with
    check_function against torch.nn.functional.layer_norm. Which axes change in the compact formula?"""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 3, 3)) * 2 + 1
    gamma, beta = rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 3, 3))
    errors = check_function(LayerNorm, [x, gamma, beta],
                            torch_fn=lambda x, g, b: TF.layer_norm(x, x.shape[1:], g, b, eps=1e-5))
    assert max(errors.values()) < 1e-6
    # The answer: the means run over axes (1, 2, 3), one sample's values, instead of (0, 2, 3); dgamma and dbeta
    # sum over axis 0 only, since gamma and beta are (C, H, W).


def exercise_4():
    """What do the running statistics hold after a training-mode call with momentum=1.0? And with momentum=0.0?"""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 3, 4, 4)) * 2 + 1
    m = x.size // 3
    ones, zeros = np.ones(3), np.zeros(3)
    for momentum in (1.0, 0.0):
        running_mean, running_var = np.zeros(3), np.ones(3)
        batch_norm2d(x, ones, zeros, running_mean, running_var, training=True, momentum=momentum)
        print(f"  momentum {momentum}: running_mean {running_mean.round(3)}, running_var {running_var.round(3)}")
        if momentum == 1.0:  # all of the new batch, nothing of the past: this batch's mean and unbiased variance
            assert np.allclose(running_mean, x.mean(axis=(0, 2, 3)))
            assert np.allclose(running_var, x.var(axis=(0, 2, 3)) * m / (m - 1))
        else:  # nothing of the new batch: the starting values stay, 0 and 1
            assert np.array_equal(running_mean, zeros) and np.array_equal(running_var, ones)


def exercise_5():
    """Work out x_hat and dL/dx of batch norm in training mode for a batch of one (1, C) input (m = 1)."""
    rng = np.random.default_rng(3)
    x, gamma, beta = rng.standard_normal((1, 4)), rng.standard_normal(4), rng.standard_normal(4)
    t = tinyse.Tensor(x.copy(), requires_grad=True)
    y = batch_norm2d(t, gamma, beta)  # no running statistics
    y.backward(rng.standard_normal((1, 4)))
    # m = 1: mu = x, so d = x - mu = 0 and x_hat = 0 whatever x is: y = beta, and dL/dx = 0 for any upstream
    # gradient (the formula gives g - mean(g) - 0 = g - g = 0). The layer learns nothing from x.
    print(f"  m = 1: y - beta = {np.abs(y.data - beta).max():.1e}, dL/dx = {t.grad}")
    assert np.allclose(y.data, beta) and np.array_equal(t.grad, np.zeros((1, 4)))

    # and the running variance's unbiased factor m / (m - 1) divides by zero: 0 * 1 / 0 = nan
    running_mean, running_var = np.zeros(4), np.ones(4)
    with np.errstate(divide="ignore", invalid="ignore"):
        batch_norm2d(x, gamma, beta, running_mean, running_var, training=True)
    print(f"  running_var after the update: {running_var}")
    assert np.all(np.isnan(running_var))

    try:  # so tinyse refuses, as PyTorch does ("Expected more than 1 value per channel when training")
        F.batch_norm(tinyse.Tensor(x), tinyse.Tensor(gamma), tinyse.Tensor(beta), training=True)
        raise AssertionError("F.batch_norm accepted a batch of one")
    except ValueError as error:
        print(f"  F.batch_norm: ValueError: {error}")
    with torch.no_grad():
        try:
            TF.batch_norm(torch.tensor(x), None, None, torch.tensor(gamma), torch.tensor(beta), training=True)
            raise AssertionError("PyTorch accepted a batch of one")
        except ValueError:
            pass


if __name__ == "__main__":
    for exercise in (exercise_1, exercise_2, exercise_3, exercise_4, exercise_5):
        print(f"{exercise.__name__}: {exercise.__doc__.splitlines()[0]}")
        exercise()
    print("all exercises of lesson 4 pass")
