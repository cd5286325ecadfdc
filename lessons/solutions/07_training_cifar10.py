"""Worked solutions to the exercises of lesson 7, "Training on CIFAR-10" (lessons/07_training_cifar10.ipynb).

Each ``exercise_<k>()`` runs the solution and asserts its result. They use the pieces the lesson writes into
lessons/mine/ (``mine/optim.py``, ``mine/augment.py``, ``mine/data.py``; ``mine/se_resnet.py`` from lesson 6):
run lessons 3-7 first (the test suite writes mine/ from the lessons' cells itself). Run them all with

    python lessons/solutions/07_training_cifar10.py
"""
import math
import sys
from pathlib import Path

LESSONS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(LESSONS))  # for mine/ and checks.py, wherever this file is run from

import numpy as np  # noqa: E402

import tinyse  # noqa: E402
import tinyse.functional as F  # noqa: E402
import tinyse.optim  # noqa: E402


def _mine(module):
    """mine.<module>, with a clear message when the lesson that writes it has not been run."""
    if not (LESSONS / "mine" / f"{module}.py").exists():
        writer = "lesson 6" if module in ("se_resnet", "module") else "lesson 7"
        raise FileNotFoundError(f"lessons/mine/{module}.py is missing: run {writer} first (it writes it)")
    import importlib

    return importlib.import_module(f"mine.{module}")


def exercise_1():
    """Forget zero_grad: two backward passes without clearing leave twice the gradient in p.grad; in a loop
    without zero_grad the step uses the sum of every gradient so far, and training stops converging."""
    from tinyse import models

    SGD = _mine("optim").SGD
    se_resnet20 = _mine("se_resnet").se_resnet20

    # One batch, a fresh network (tinyse's initial weights, as in the lesson), two forward and backward passes.
    rng = np.random.default_rng(0)
    images = tinyse.Tensor(rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    labels = np.arange(8) % 10
    model = se_resnet20()
    model.load_state_dict(models.create("se_resnet20", seed=0).state_dict())
    model.train()
    optimizer = SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    once = [p.grad.copy() for p in model.parameters()]
    F.cross_entropy(model(images), labels).backward()  # no zero_grad in between: added to .grad
    twice = [p.grad for p in model.parameters()]
    ratio_error = max(float(np.abs(b - 2 * a).max() / max(np.abs(a).max(), 1e-30)) for a, b in zip(once, twice))
    print(f"p.grad after two backward passes vs 2 x the gradient of one: largest relative difference {ratio_error:.1e}")
    assert ratio_error < 1e-5  # the same batch twice (batch norm uses its statistics in training mode): 2 g

    # In a loop: minimise L(w) = w^2 / 2 (gradient w) with lr 0.1, with and without zero_grad. Without it the
    # gradient used at step k is w_1 + ... + w_k: a heavy ball with no friction, which swings and never settles.
    def last_values(clear, steps=200):
        w = tinyse.Tensor(np.array([1.0]), requires_grad=True)
        optimizer = SGD([w], lr=0.1)
        values = []
        for _ in range(steps):
            if clear:
                optimizer.zero_grad()
            (w * w * 0.5).sum().backward()
            optimizer.step()
            values.append(float(w.data[0]))
        return np.abs(values[-40:])

    with_clearing, without = last_values(True), last_values(False)
    print(f"|w| over the last 40 of 200 steps: with zero_grad at most {with_clearing.max():.1e}, "
          f"without it up to {without.max():.2f} (it swings: the summed gradients act as momentum 1)")
    assert with_clearing.max() < 1e-6 and without.max() > 0.3  # 0.9^k: below 1e-7 by step 160


def exercise_2():
    """How far does momentum carry: with a constant gradient g, v_k = g (1 - mu^k) / (1 - mu) and the step is
    -lr v_k, which tends to -lr g / (1 - mu): ten times lr g for mu = 0.9."""
    SGD = _mine("optim").SGD
    lr, momentum, g = 0.01, 0.9, 2.0
    w = tinyse.Tensor(np.array([0.0]), requires_grad=True)
    optimizer = SGD([w], lr=lr, momentum=momentum)
    steps = []
    for _ in range(60):
        before = float(w.data[0])
        w.grad = np.array([g])
        optimizer.step()
        steps.append(float(w.data[0]) - before)
    predicted = [-lr * g * (1 - momentum**k) / (1 - momentum) for k in range(1, 61)]
    error = max(abs(a - b) for a, b in zip(steps, predicted))
    limit = -lr * g / (1 - momentum)
    print(f"step k = -lr g (1 - mu^k) / (1 - mu): largest difference over 60 steps {error:.1e}; "
          f"step 60 = {steps[-1]:.5f}, the limit -lr g / (1 - mu) = {limit:.5f} (= {limit / (-lr * g):.0f} x lr g)")
    assert error < 1e-12 and abs(steps[-1] - limit) < 0.01 * abs(limit)


def exercise_3():
    """Weight decay is an L2 penalty: SGD with weight_decay=lam on L gives the same weights as SGD without weight
    decay on L + lam/2 |w|^2 (its gradient computed by autograd) -- without momentum and with it."""
    SGD = _mine("optim").SGD
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((16, 5)), rng.standard_normal((16, 1))  # a least-squares problem
    w0 = rng.standard_normal((5, 1))
    lam = 0.05

    def loss_of(w):
        residual = tinyse.Tensor(x) @ w - tinyse.Tensor(y)  # (16, 1)
        return (residual * residual).mean()

    for momentum in (0.0, 0.9):
        decayed = tinyse.Tensor(w0.copy(), requires_grad=True)
        penalised = tinyse.Tensor(w0.copy(), requires_grad=True)
        by_decay = SGD([decayed], lr=0.1, momentum=momentum, weight_decay=lam)
        by_penalty = SGD([penalised], lr=0.1, momentum=momentum)
        for _ in range(5):
            by_decay.zero_grad()
            loss_of(decayed).backward()
            by_decay.step()
            by_penalty.zero_grad()
            (loss_of(penalised) + (penalised * penalised).sum() * (lam / 2)).backward()
            by_penalty.step()
        difference = float(np.abs(decayed.data - penalised.data).max())
        print(f"momentum {momentum}: weight_decay={lam} vs the penalty lam/2 |w|^2, after 5 steps: "
              f"max |difference| = {difference:.1e}")
        assert difference < 1e-12


def warmup(lr, epoch, warmup_epochs, start_factor=0.1):
    """lr * (start_factor + (1 - start_factor) * min(1, epoch / warmup_epochs)); warmup_epochs 0: no warm-up."""
    if warmup_epochs == 0:
        return lr
    return lr * (start_factor + (1 - start_factor) * min(1.0, epoch / warmup_epochs))


def exercise_4():
    """A warm-up: warmup(lr, epoch, warmup_epochs, start_factor=0.1), checked against tinyse.optim.warmup,
    make_schedule("cosine", 0.1, 10, warmup_epochs=2) and PyTorch's LinearLR at whole epochs."""
    cosine_lr = _mine("optim").cosine_lr
    progress = np.linspace(0, 10, 81)
    versus_tinyse = max(abs(warmup(0.1, t, 2) - tinyse.optim.warmup(0.1, t, 2)) for t in progress)
    schedule = tinyse.optim.make_schedule("cosine", 0.1, 10, warmup_epochs=2)
    versus_schedule = max(abs(warmup(cosine_lr(0.1, t, 10), t, 2) - schedule(t)) for t in progress)
    print(f"warmup vs tinyse.optim.warmup: {versus_tinyse:.1e}; "
          f"warm-up x cosine vs make_schedule: {versus_schedule:.1e}")
    assert versus_tinyse < 1e-15 and versus_schedule < 1e-15
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: the comparison with LinearLR is skipped")
        return
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=2)
    theirs = []
    for _ in range(6):
        theirs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    ours = [warmup(0.1, epoch, 2) for epoch in range(6)]
    versus_torch = max(abs(a - b) for a, b in zip(ours, theirs))
    print(f"epochs 0-5: {np.round(ours, 4).tolist()}; vs torch LinearLR: {versus_torch:.1e}")
    assert versus_torch < 1e-12


def exercise_5():
    """How much of what the network sees is padding: E|t - 4| = 20/9 rows (and columns) of zeros, so a fraction
    1 - (1 - 20/9/32)^2 = 13.4% of the pixels; measured with the loader's augmentation on all-white images."""
    BatchLoader = _mine("data").BatchLoader
    shift = sum(abs(t - 4) for t in range(9)) / 9  # E|t - 4| for t uniform on 0..8: 20/9
    expected = 1 - (1 - shift / 32) ** 2
    white = np.full((20000, 1, 32, 32), 255, dtype=np.uint8)
    loader = BatchLoader(white, np.zeros(20000), 1000, mean=[0.0], std=[1.0], shuffle=True, augment=True, seed=0)
    zeros = sum(int((x.data == 0).sum()) for x, _ in loader.batches(0))  # x = u / 255: 0 exactly where padded
    measured = zeros / white.size
    print(f"padding: expected {100 * expected:.2f}% of the pixels, measured {100 * measured:.2f}% "
          f"on {len(white):,} augmented white images")
    assert math.isclose(shift, 20 / 9) and abs(measured - expected) < 0.003


if __name__ == "__main__":
    for name, function in list(globals().items()):
        if name.startswith("exercise_"):
            print(f"--- {name}: {' '.join(function.__doc__.split())}")
            function()
