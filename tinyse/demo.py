"""A one-minute demo: a tiny SE network learns to fit random images.

    python -m tinyse.demo [--device cpu|gpu] [--steps 50] [--seed 0]

The network is conv 3x3 -> batch norm -> ReLU -> SE block -> global average
pooling -> linear, written with ``tinyse.functional`` alone, trained with plain
SGD on a fixed batch of random images and labels. The loss falls towards 0 as
the network memorises the batch.
"""
import argparse
import math
import time

import numpy as np

import tinyse.functional as F
from tinyse.backend import module_for_device
from tinyse.memory import keep_freed_memory
from tinyse.tensor import Tensor


def make_parameters(rng, channels=32, reduction=4, classes=10):
    """Weights of the tiny SE network, Kaiming-normal for convs and linears, as NumPy float32 arrays."""
    hidden = channels // reduction

    def kaiming(shape, fan_in):
        return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "conv": kaiming((channels, 3, 3, 3), 3 * 9),
        "bn_gamma": np.ones(channels, np.float32),
        "bn_beta": np.zeros(channels, np.float32),
        "se_w1": kaiming((hidden, channels), channels),
        "se_b1": np.zeros(hidden, np.float32),
        "se_w2": kaiming((channels, hidden), hidden),
        "se_b2": np.zeros(channels, np.float32),
        "fc_w": kaiming((classes, channels), channels),
        "fc_b": np.zeros(classes, np.float32),
    }


def forward(p, images):
    """Logits (N, classes) of the tiny SE network for images (N, 3, H, W)."""
    u = F.relu(F.batch_norm(F.conv2d(images, p["conv"], padding=1), p["bn_gamma"], p["bn_beta"]))
    gates = F.se_excite(F.se_squeeze(u), p["se_w1"], p["se_b1"], p["se_w2"], p["se_b2"])  # (N, C)
    x = F.se_scale(u, gates)  # each channel of u scaled by its gate
    return F.linear(F.global_avg_pool2d(x), p["fc_w"], p["fc_b"])


def main(argv=None):
    keep_freed_memory()  # a process-wide malloc setting, so the tool asks for it (tinyse/memory.py)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        xp = module_for_device(args.device)
    except RuntimeError as error:  # --device gpu without CuPy or a CUDA device
        raise SystemExit(f"error: {error}") from None
    rng = np.random.default_rng(args.seed)
    params = {name: Tensor(xp.asarray(value), requires_grad=True) for name, value in make_parameters(rng).items()}
    images = Tensor(xp.asarray(rng.standard_normal((32, 3, 16, 16)).astype(np.float32)))
    labels = xp.asarray(rng.integers(0, 10, size=32))

    print(f"tiny SE network, {sum(p.size for p in params.values())} parameters, device {args.device}")
    start, losses = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        loss = F.cross_entropy(forward(params, images), labels)
        losses.append(loss.item())
        for p in params.values():
            p.grad = None  # gradients accumulate across backward() calls: clear them first
        loss.backward()
        for p in params.values():
            p.data -= args.lr * p.grad  # plain SGD
        if step == 1 or step % 10 == 0:
            print(f"step {step:3d}  loss {losses[-1]:.4f}")
    print(f"{args.steps} steps in {time.perf_counter() - start:.2f} s")
    return losses


if __name__ == "__main__":
    main()
