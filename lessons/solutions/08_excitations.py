"""Worked solutions to the exercises of lesson 8, "What the excitations learn" (lessons/08_excitations.ipynb).

Each ``exercise_<k>()`` runs the solution and asserts its result. Exercise 2 reads CIFAR-10 (found through
TINYSE_DATA, as in the lesson). Run them all with

    python lessons/solutions/08_excitations.py
"""
import sys
from pathlib import Path

LESSONS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(LESSONS))  # for checks.py and mine/, wherever this file is run from

import numpy as np  # noqa: E402

import tinyse  # noqa: E402
from tinyse import models  # noqa: E402


def specificity(gates):
    """gates (K, n, C) -> between-class variance of the class means / mean within-class variance (the lesson's)."""
    between = gates.mean(axis=1).var(axis=0)  # (C,)
    within = gates.var(axis=1).mean(axis=0)  # (C,)
    return between.mean() / within.mean()


def exercise_1():
    """The chance level, exactly: for gates that ignore the class, E[specificity] = (K - 1) / (K (n - 1)), which
    is 0.129 for n = 8 and 0.0184 for n = 50 with K = 10 (1/n: 0.125 and 0.02); checked by simulation."""
    rng = np.random.default_rng(0)
    classes, channels, repeats = 10, 32, 400
    for n in (8, 50):
        simulated = np.mean([specificity(rng.uniform(0.2, 0.8, size=(classes, n, channels))) for _ in range(repeats)])
        exact = (classes - 1) / (classes * (n - 1))
        print(f"n = {n:2d}: simulated {simulated:.4f}, (K-1)/(K(n-1)) = {exact:.4f}, 1/n = {1 / n:.4f}")
        assert abs(simulated / exact - 1) < 0.03
        # The one-way ANOVA F statistic, K(n-1)/(K-1) times the specificity, is then about 1.
        assert abs(classes * (n - 1) / (classes - 1) * simulated - 1) < 0.03


def exercise_2():
    """What do the images alone give: the specificity of each image's mean colour (3 channels) over 10 classes x 50
    test images is about 0.17, far above chance (0.018) and above the untrained network's gates (0.05-0.08)."""
    from tinyse.data import load_cifar, normalize

    data = load_cifar("cifar10")
    per_class = 50
    index = np.stack([np.flatnonzero(data.test_labels == k)[:per_class] for k in range(10)])  # (K, n)
    images = normalize(data.test_images[index.ravel()], data.mean, data.std)  # (K*n, 3, 32, 32)
    colours = images.mean(axis=(2, 3)).reshape(10, per_class, 3)  # (K, n, 3): the squeeze of the input
    value, chance = specificity(colours), 9 / (10 * (per_class - 1))
    print(f"specificity of the mean colours: {value:.3f} (chance {chance:.4f}: {value / chance:.0f} x)")
    by_class = colours.mean(axis=1)  # (K, 3)
    bluest = data.classes[int(np.argmax(by_class[:, 2] - by_class[:, 0]))]
    print(f"the class with the most blue relative to red, on average: {bluest}")
    assert value > 5 * chance
    assert bluest in ("airplane", "ship")


def exercise_3():
    """A gate of 1 is no gate: with fc2.weight = 0 and fc2.bias = 40 in every SE block, every gate is exactly 1.0
    (sigmoid(40) rounds to 1 in float32), and SE-ResNet-20 gives exactly the outputs of ResNet-20 with the same
    other weights."""
    se_model = models.create("se_resnet20", seed=0)
    for name, module in se_model.named_modules():
        if name.endswith(".se"):
            module.fc2.weight.data[...] = 0
            module.fc2.bias.data[...] = 40
    plain = models.create("resnet20")
    weights = {key: value for key, value in se_model.state_dict().items() if ".se." not in key}
    plain.load_state_dict(weights)
    se_model.eval()
    plain.eval()
    x = tinyse.Tensor(np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32))
    with tinyse.no_grad():
        se_out, plain_out = se_model(x).data, plain(x).data
    gates = [module.gates for name, module in se_model.named_modules() if name.endswith(".se")]
    print(f"{len(gates)} SE blocks, every gate == 1.0: {all((g == 1).all() for g in gates)}; "
          f"max |SE-ResNet-20 - ResNet-20| = {np.abs(se_out - plain_out).max():.1e}")
    print(f"sigmoid(40) in float32 = 1 - {1 - np.float32(1) / (np.float32(1) + np.exp(np.float32(-40))):.1e}")
    assert all((g == 1).all() for g in gates)
    assert np.array_equal(se_out, plain_out)


def exercise_4():
    """The ratio is relative: s -> a s + b leaves the specificity as it is and multiplies the spread between the
    class curves by |a|; so a high ratio at a block whose gates hardly move says little on its own."""
    rng = np.random.default_rng(4)
    gates = rng.uniform(0.3, 0.7, size=(10, 20, 16)) + rng.uniform(-0.05, 0.05, size=(10, 1, 16))  # (K, n, C)

    def spread(g):
        return np.sqrt(g.mean(axis=1).var(axis=0).mean())

    for a, b in ((0.001, 0.5), (-3.0, 1.0), (10.0, -2.0)):
        moved = a * gates + b
        ratio_change = abs(specificity(moved) / specificity(gates) - 1)
        spread_factor = spread(moved) / spread(gates)
        print(f"a = {a:6}, b = {b:4}: specificity {specificity(moved):.4f} (was {specificity(gates):.4f}), "
              f"spread x {spread_factor:.4f}")
        assert ratio_change < 1e-9 and abs(spread_factor - abs(a)) < 1e-9 * abs(a)


if __name__ == "__main__":
    for name, function in list(globals().items()):
        if name.startswith("exercise_"):
            print(f"--- {name}: {' '.join(function.__doc__.split())}")
            function()
