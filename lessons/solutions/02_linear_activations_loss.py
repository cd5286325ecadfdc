"""Worked solutions to the exercises of lesson 2 (02_linear_activations_loss.ipynb): linear, activations, loss.

Run from anywhere: ``python lessons/solutions/02_linear_activations_loss.py``. Each ``exercise_<k>`` works
one exercise and asserts its result. The file starts with the lesson's pieces (linear, ReLU, the stable
sigmoid, softmax cross-entropy, the MLP and the spirals), copied so that it runs on its own.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # lessons/, for checks.py
from checks import check_backward, relative_error

import tinyse
import tinyse.functional as F


# --- the lesson's pieces ----------------------------------------------------------------------------
def linear_forward(x, weight, bias):
    return x @ weight.T + bias, (x, weight)


def linear_backward(grad_out, cache):
    x, weight = cache
    return grad_out @ weight, grad_out.T @ x, grad_out.sum(axis=0)


def relu_forward(x):
    mask = x > 0
    return np.where(mask, x, 0.0), mask


def relu_backward(grad_out, mask):
    return grad_out * mask


def away_from_kink(x, margin=1e-2):
    return np.where(np.abs(x) < margin, np.where(x < 0, -margin, margin), x)


def stable_sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1 + e)


def log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy_forward(logits, labels):
    log_probs = log_softmax(logits)
    return -log_probs[np.arange(len(logits)), labels].mean(), (np.exp(log_probs), labels)


def cross_entropy_backward(grad_out, cache):
    probs, labels = cache
    grad = probs.copy()
    grad[np.arange(len(labels)), labels] -= 1
    return grad * (grad_out / len(labels))


def spirals(points_per_class, classes, rng, turns=1.0, noise=0.2):
    radius = np.linspace(0.15, 1.0, points_per_class)
    points, labels = [], []
    for k in range(classes):
        angle = 2 * np.pi * (turns * radius + k / classes) + noise * rng.standard_normal(points_per_class)
        points.append(2.5 * np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1))
        labels.append(np.full(points_per_class, k))
    return np.concatenate(points), np.concatenate(labels)


def train_on_spirals(forward, backward, params, steps=2000, learning_rate=0.3):
    """Full-batch gradient descent on the lesson's spirals; returns the final loss and the accuracy."""
    points, labels = spirals(80, 3, np.random.default_rng(1))
    for _ in range(steps):
        logits, cache = forward(points, *params)
        _, loss_cache = cross_entropy_forward(logits, labels)
        _, *grads = backward(cross_entropy_backward(1.0, loss_cache), cache)
        for param, grad in zip(params, grads):
            param -= learning_rate * grad
    logits = forward(points, *params)[0]
    return cross_entropy_forward(logits, labels)[0], float((logits.argmax(axis=1) == labels).mean())


def initial_mlp_params(hidden_units=32, seed=2):
    init = np.random.default_rng(seed)
    return [init.standard_normal((hidden_units, 2)), np.zeros(hidden_units),
            init.standard_normal((3, hidden_units)) * np.sqrt(1 / hidden_units), np.zeros(3)]


# --- the exercises ----------------------------------------------------------------------------------
def leaky_relu_forward(x, slope=0.01):
    """Leaky ReLU y = x where x > 0, slope * x elsewhere; any shape. The cache: the mask x > 0 and the slope."""
    return np.where(x > 0, x, slope * x), (x > 0, slope)


def leaky_relu_backward(grad_out, cache):
    """grad_out (shaped like x) -> grad_x: the local slope is 1 where x > 0 and `slope` elsewhere."""
    mask, slope = cache
    return grad_out * np.where(mask, 1.0, slope)


def leaky_mlp_forward(x, w1, b1, w2, b2):
    a, first_cache = linear_forward(x, w1, b1)
    h, leaky_cache = leaky_relu_forward(a)
    logits, second_cache = linear_forward(h, w2, b2)
    return logits, (first_cache, leaky_cache, second_cache)


def leaky_mlp_backward(grad_logits, cache):
    first_cache, leaky_cache, second_cache = cache
    grad_h, grad_w2, grad_b2 = linear_backward(grad_logits, second_cache)
    grad_x, grad_w1, grad_b1 = linear_backward(leaky_relu_backward(grad_h, leaky_cache), first_cache)
    return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


def exercise_1():
    """Write this backward: leaky ReLU (slope 0.01 for x <= 0); then train the MLP with it."""
    import torch

    x = away_from_kink(np.random.default_rng(1).standard_normal((4, 5)))
    errors = check_backward(leaky_relu_forward, leaky_relu_backward, [x],
                            torch_fn=lambda x: torch.nn.functional.leaky_relu(x, 0.01))
    assert errors["finite differences"] < 1e-7
    loss, accuracy = train_on_spirals(leaky_mlp_forward, leaky_mlp_backward, initial_mlp_params())
    print(f"the MLP with leaky ReLU on the spirals: loss {loss:.4f}, accuracy {accuracy:.0%}")
    assert accuracy > 0.95


def log_sigmoid(z):
    """log sigma(z) = -(max(-z, 0) + log(1 + e^-|z|)): only e^-|z| <= 1 is ever computed."""
    return -(np.maximum(-z, 0) + np.log1p(np.exp(-np.abs(z))))


def binary_cross_entropy_forward(logits, targets):
    """Mean of -t log sigma(z) - (1 - t) log(1 - sigma(z)) over z (N,), t (N,) in {0, 1}; 1 - sigma(z) = sigma(-z)."""
    loss = -(targets * log_sigmoid(logits) + (1 - targets) * log_sigmoid(-logits)).mean()
    return loss, (logits, targets)


def binary_cross_entropy_backward(grad_out, cache):
    """dL/dz = grad_out * (sigma(z) - t) / N."""
    logits, targets = cache
    return grad_out * (stable_sigmoid(logits) - targets) / len(logits)


def exercise_2():
    """Binary logistic regression: dL/dz = sigma(z) - t, through a stable log sigma."""
    import torch

    rng = np.random.default_rng(2)
    targets = rng.integers(0, 2, size=6).astype(np.float64)
    logits = 3 * rng.standard_normal(6)
    errors = check_backward(
        lambda z: binary_cross_entropy_forward(z, targets), binary_cross_entropy_backward, [logits],
        torch_fn=lambda z: torch.nn.functional.binary_cross_entropy_with_logits(z, torch.from_numpy(targets)),
    )
    assert errors["finite differences"] < 1e-7
    extreme, extreme_targets = np.array([-1000.0, 1000.0, -1000.0, 1000.0]), np.array([1.0, 0.0, 0.0, 1.0])
    ours = binary_cross_entropy_forward(extreme, extreme_targets)[0]
    theirs = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(extreme), torch.from_numpy(extreme_targets)).item()
    print(f"at z = +-1000: ours {ours}, PyTorch {theirs} (two wrong answers at 1000 each, two right at 0)")
    assert ours == theirs == 500.0


def tanh_forward(x):
    """y = tanh(x) = 2 sigma(2x) - 1, through the stable sigmoid; the cache is y."""
    y = 2 * stable_sigmoid(2 * x) - 1
    return y, y


def tanh_backward(grad_out, y):
    """dL/dx = grad_out * (1 - y^2)."""
    return grad_out * (1 - y * y)


def exercise_3():
    """tanh: derivative 1 - tanh^2, and tanh(x) = 2 sigma(2x) - 1, stable but less accurate near 0."""
    import torch

    x = 2 * np.random.default_rng(3).standard_normal((4, 5))
    errors = check_backward(tanh_forward, tanh_backward, [x], torch_fn=torch.tanh)
    assert errors["finite differences"] < 1e-7
    with np.errstate(over="raise", invalid="raise"):  # no overflow, even far out
        far = tanh_forward(np.array([-1000.0, 1000.0]))[0]
    assert np.array_equal(far, [-1.0, 1.0])
    tiny = np.array([1e-8])
    near_zero = abs(tanh_forward(tiny)[0][0] - np.tanh(tiny[0])) / np.tanh(tiny[0])
    print(f"at x = 1e-8, 2 sigma(2x) - 1 is off by {near_zero:.1e} (relative): 2 sigma(2x) and 1 cancel")
    assert near_zero > 1e-10  # the cancellation: np.tanh is exact to 1e-16 there


def linear_gradcheck_error(dtype, h):
    """The largest relative error of linear_backward vs central differences, with every array in dtype."""
    rng = np.random.default_rng(4)
    x, weight, bias = (rng.standard_normal(shape).astype(dtype) for shape in ((5, 4), (3, 4), (3,)))
    grad_y = rng.standard_normal((5, 3)).astype(dtype)
    analytic = linear_backward(grad_y, linear_forward(x, weight, bias)[1])
    worst = 0.0
    for array, grad in zip((x, weight, bias), analytic):
        numeric = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            original = array[index]
            array[index] = original + dtype(h)
            plus = np.sum(linear_forward(x, weight, bias)[0] * grad_y)
            array[index] = original - dtype(h)
            minus = np.sum(linear_forward(x, weight, bias)[0] * grad_y)
            array[index] = original
            numeric[index] = (plus - minus) / (2 * dtype(h))
        worst = max(worst, relative_error(grad, numeric))
    return worst


def exercise_4():
    """Why float64 for checks: in float32 the central differences are mostly rounding."""
    errors = {(name, h): linear_gradcheck_error(dtype, h)
              for name, dtype in (("float64", np.float64), ("float32", np.float32)) for h in (1e-6, 1e-3)}
    for (name, h), error in errors.items():
        print(f"{name}, h = {h:.0e}: largest relative error {error:.1e}")
    # float32 at h = 1e-6: the step is a few float32 spacings of the inputs, so the difference is rounding noise
    assert errors["float32", 1e-6] > 1e-2 and errors["float32", 1e-3] < errors["float32", 1e-6]
    assert errors["float64", 1e-6] < 1e-8
    # the linear layer is linear in each input: no truncation error, so a big h is exact in float64
    assert errors["float64", 1e-3] < 1e-8


def smoothed_cross_entropy_forward(logits, labels, eps):
    """-(1/N) sum_n sum_k q_nk log p_nk with q = (1 - eps) onehot(t) + eps / K."""
    n, k = logits.shape
    target = np.full((n, k), eps / k)
    target[np.arange(n), labels] += 1 - eps
    log_probs = log_softmax(logits)
    return -(target * log_probs).sum(axis=1).mean(), (np.exp(log_probs), target)


def smoothed_cross_entropy_backward(grad_out, cache):
    """dL/dZ = grad_out * (P - q) / N: only the target changes, since the q_k of a row sum to 1."""
    probs, target = cache
    return grad_out * (probs - target) / len(probs)


def exercise_5():
    """Label smoothing: the backward becomes (P - q) / N; checked against PyTorch and tinyse."""
    import torch

    rng = np.random.default_rng(5)
    logits, labels, eps = 2 * rng.standard_normal((6, 4)), rng.integers(0, 4, size=6), 0.1
    errors = check_backward(
        lambda z: smoothed_cross_entropy_forward(z, labels, eps), smoothed_cross_entropy_backward, [logits],
        torch_fn=lambda z: torch.nn.functional.cross_entropy(z, torch.from_numpy(labels), label_smoothing=eps),
    )
    assert errors["finite differences"] < 1e-7
    z = tinyse.Tensor(logits.copy(), requires_grad=True)
    loss_t = F.cross_entropy(z, labels, label_smoothing=eps)
    loss_t.backward()
    loss, cache = smoothed_cross_entropy_forward(logits, labels, eps)
    grad = smoothed_cross_entropy_backward(1.0, cache)
    error = max(relative_error(loss, loss_t.item()), relative_error(grad, z.grad))
    print(f"vs tinyse's cross_entropy(label_smoothing={eps}): loss and gradient {error:.1e}")
    assert error < 1e-12


def linear_linear_forward(x, w1, b1, w2, b2):
    hidden, first_cache = linear_forward(x, w1, b1)
    logits, second_cache = linear_forward(hidden, w2, b2)
    return logits, (first_cache, second_cache)


def linear_linear_backward(grad_logits, cache):
    first_cache, second_cache = cache
    grad_hidden, grad_w2, grad_b2 = linear_backward(grad_logits, second_cache)
    grad_x, grad_w1, grad_b1 = linear_backward(grad_hidden, first_cache)
    return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


def exercise_6():
    """Without the ReLU the MLP is one linear layer, W = W2 W1 and b = W2 b1 + b2, and cannot learn the spirals."""
    params = initial_mlp_params()
    loss, accuracy = train_on_spirals(linear_linear_forward, linear_linear_backward, params)
    w1, b1, w2, b2 = params
    points, _ = spirals(80, 3, np.random.default_rng(1))
    collapsed = linear_forward(points, w2 @ w1, w2 @ b1 + b2)[0]
    error = relative_error(linear_linear_forward(points, *params)[0], collapsed)
    print(f"linear -> linear on the spirals: loss {loss:.3f}, accuracy {accuracy:.0%}; "
          f"its logits vs one linear layer (W2 W1, W2 b1 + b2): {error:.1e}")
    assert error < 1e-12 and accuracy < 0.7


if __name__ == "__main__":
    for number in range(1, 7):
        print(f"--- exercise {number}")
        globals()[f"exercise_{number}"]()
    print("all exercises of lesson 2 check out")
