"""Worked solutions to the exercises of lesson 6 (06_se_resnet.ipynb): SE-ResNet-20 from the student's own pieces.

Each ``exercise_<k>()`` runs the solution of exercise k and asserts its result. The file runs on its own,
``python lessons/solutions/06_se_resnet.py``, once lessons 3 to 6 have written ``lessons/mine/``
(``conv.py``, ``function.py``, ``ops.py``, ``activations.py``, ``se.py``, ``module.py``, ``se_resnet.py``).
"""
import sys
from pathlib import Path

import numpy as np

LESSONS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(LESSONS))  # lessons/: checks.py and the student's own modules in mine/
if not (LESSONS / "mine" / "se_resnet.py").exists():
    raise FileNotFoundError("run lessons 3 to 6 first: they write lessons/mine/, up to module.py and se_resnet.py")

import torch  # noqa: E402
from checks import check_function  # noqa: E402
from mine.function import Function  # noqa: E402
from mine.module import Sequential  # noqa: E402
from mine.se_resnet import AddReLU, BasicBlock, BatchNorm2d, Conv2d, SEBlock, se_resnet  # noqa: E402

import tinyse  # noqa: E402
import tinyse.functional as F  # noqa: E402
from tinyse import models  # noqa: E402
from tinyse.testing import twins  # noqa: E402


def rel_error(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


def count(model):
    return sum(p.size for p in model.parameters())


def same_logits(ours, theirs, batch=2, seed=0):
    """Load tinyse model `theirs` into `ours`, both in float64, and compare their logits in training mode."""
    theirs.to(dtype=np.float64)
    ours.to(np.float64).load_state_dict(theirs.state_dict())
    images = np.random.default_rng(seed).standard_normal((batch, 3, 32, 32))
    with tinyse.no_grad():
        return rel_error(ours(images).data, theirs(tinyse.Tensor(images)).data)


def replace_units(model, make_unit):
    """Swap every unit of the three stages for make_unit(old unit) (the attribute keeps its place and name)."""
    for stage in (1, 2, 3):
        sequential = getattr(model, f"layer{stage}")
        for index, unit in enumerate(sequential):
            setattr(sequential, str(index), make_unit(unit))
    return model


def exercise_1():
    """Deeper: se_resnet(32) and se_resnet(56); check parameter counts and state dict keys against
    models.create("se_resnet32") and models.create("se_resnet56")."""
    for depth, expected in [(32, 468_109), (56, 860_137)]:
        ours, theirs = se_resnet(depth), models.create(f"se_resnet{depth}")
        print(f"  se_resnet({depth}): {count(ours):,} parameters, tinyse's {theirs.num_parameters():,}")
        assert count(ours) == theirs.num_parameters() == expected
        assert list(ours.state_dict()) == list(theirs.state_dict())


def exercise_2():
    """Reduction: build the network with reduction=4 and reduction=32 and compare with
    models.create("se_resnet20", reduction=...): parameter counts, then logits with the same weights."""
    for reduction, expected in [(4, 278_206), (32, 271_126)]:
        ours, theirs = se_resnet(20, reduction=reduction), models.create("se_resnet20", reduction=reduction, seed=0)
        error = same_logits(ours, theirs)
        print(f"  reduction {reduction}: {count(ours):,} parameters (tinyse {theirs.num_parameters():,}), "
              f"logits vs tinyse {error:.1e}")
        assert count(ours) == theirs.num_parameters() == expected and error < 1e-10


class PreBasicBlock(BasicBlock):
    """SE-PRE: relu(F(SE(x)) + shortcut(x)): the SE block on the unit's input, before the branch."""

    def __init__(self, in_channels, out_channels, stride=1, reduction=16):
        super().__init__(in_channels, out_channels, stride, reduction)
        self.se = SEBlock(in_channels, reduction)  # on the input's channels (the attribute keeps its place)

    def forward(self, x):
        return AddReLU()(self.residual(self.se(x)), self.shortcut(x))


def exercise_3():
    """SE-PRE: which SE blocks change channel count? Check the parameter count against
    models.create("se_resnet20", integration="pre"), then load its weights and compare logits."""
    ours = replace_units(se_resnet(20), lambda unit: PreBasicBlock(
        unit.conv1.in_channels, unit.conv1.out_channels, unit.conv1.stride))
    theirs = models.create("se_resnet20", integration="pre", seed=0)
    changed = [name for name, module in ours.named_modules() if isinstance(module, SEBlock)
               and module.channels != dict(ours.named_modules())[name.rsplit(".", 1)[0]].conv1.out_channels]
    error = same_logits(ours, theirs)
    print(f"  SE blocks on the input's width: {changed}; {count(ours):,} parameters "
          f"(tinyse {theirs.num_parameters():,}); logits vs tinyse {error:.1e}")
    # only the first unit of stages 2 and 3 changes width (16 -> 32, 32 -> 64): its SE block now acts on 16 and
    # 32 channels, which costs fewer parameters (271,564 instead of 272,095)
    assert changed == ["layer2.0.se", "layer3.0.se"]
    assert count(ours) == theirs.num_parameters() == 271_564 and error < 1e-10


def exercise_4():
    """Option B: a 1x1 conv (stride 2) and a batch norm on the shortcut of the first unit of stages 2 and 3. How many
    parameters does that add? Compare with models.create("se_resnet20", shortcut="B")."""
    ours = se_resnet(20)
    for stage in (2, 3):
        unit = getattr(ours, f"layer{stage}")[0]
        c_in, c_out = unit.conv1.in_channels, unit.conv1.out_channels
        unit.shortcut = Sequential(Conv2d(c_in, c_out, 1, stride=2), BatchNorm2d(c_out))  # keeps its place
    theirs = models.create("se_resnet20", shortcut="B", seed=0)
    added = count(ours) - 272_095
    by_hand = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # 1x1 conv weights and batch norm gamma, beta, per shortcut
    error = same_logits(ours, theirs)
    print(f"  option B adds {added:,} parameters (by hand {by_hand:,}); {count(ours):,} in all "
          f"(tinyse {theirs.num_parameters():,}); logits vs tinyse {error:.1e}")
    assert added == by_hand == 2_752 and count(ours) == theirs.num_parameters()
    assert list(ours.state_dict()) == list(theirs.state_dict()) and error < 1e-10


class ScaleAddReLU(Function):
    """U (N, C, H, W), s (N, C), shortcut (N, C, H, W) -> y = relu(U * s[n, c] + shortcut).

    g = dL/dy [y > 0];  dL/dshortcut = g,  dL/dU = g s[n, c],  dL/ds[n, c] = sum over h, w of g U.
    """

    def forward(self, u, s, shortcut):
        self.u, self.s = u, s
        self.y = np.maximum(u * s[:, :, None, None] + shortcut, 0)
        return self.y

    def backward(self, grad_y):
        g = grad_y * (self.y > 0)  # through the ReLU
        return g * self.s[:, :, None, None], (g * self.u).sum(axis=(2, 3)), g


def exercise_5():
    """Write the backward of tinyse's fused end of an SE unit, relu(U * s + shortcut), and check it."""
    rng = np.random.default_rng(5)
    u, s, shortcut = rng.standard_normal((2, 3, 4, 4)), rng.uniform(0.1, 0.9, (2, 3)), rng.standard_normal((2, 3, 4, 4))
    shortcut += np.where(np.abs(u * s[:, :, None, None] + shortcut) < 0.05, 0.1, 0)  # off the ReLU's kink
    errors = check_function(ScaleAddReLU, [u, s, shortcut],
                            torch_fn=lambda u, s, b: torch.relu(u * s[:, :, None, None] + b))
    assert max(errors.values()) < 1e-6

    grad_y = rng.standard_normal(u.shape)  # and the same numbers as tinyse's fused op
    results = []
    for op in (ScaleAddReLU(), F.se_scale_add_relu):
        tensors = [tinyse.Tensor(x, requires_grad=True) for x in (u, s, shortcut)]
        op(*tensors).backward(grad_y)
        results.append([t.grad for t in tensors])
    error = max(rel_error(a, b) for a, b in zip(*results))
    print(f"  vs F.se_scale_add_relu: gradients {error:.1e}")
    assert error < 1e-12


def exercise_6():
    """Break it on purpose: give the twin's option-A shortcut x[:, :, 1::2, 1::2] instead of ::2. Which checks of
    section 6 fail, and by how much?"""
    ours = se_resnet(20).to(np.float64)
    twin = twins.load_into_twin(ours, twins.twin_for_name("se_resnet20"), np.float64)  # strict: still loads

    def odd_pixels(self, x):
        x = x[:, :, 1 :: self.stride, 1 :: self.stride]
        return torch.nn.functional.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))

    broken = [m for m in twin.modules() if isinstance(m, twins.TorchShortcutA)]
    for module in broken:
        module.forward = odd_pixels.__get__(module)
    images = np.random.default_rng(6).standard_normal((2, 3, 32, 32))
    labels = np.array([3, 7])
    ours.train()
    twin.train()
    logits = ours(images)
    F.cross_entropy(logits, labels).backward()
    torch_logits = twin(torch.from_numpy(images))
    torch.nn.functional.cross_entropy(torch_logits, torch.from_numpy(labels)).backward()
    logit_error = rel_error(logits.data, torch_logits.detach().numpy())
    torch_grads = dict(twin.named_parameters())
    grad_errors = {k: rel_error(p.grad, torch_grads[k].grad.numpy()) for k, p in ours.named_parameters()}
    wrong = sorted(k for k, e in grad_errors.items() if e > 1e-6)
    print(f"  {len(broken)} shortcuts broken; the keys and the strict load still pass; logits differ by "
          f"{logit_error:.1e}; {len(wrong)} of {len(grad_errors)} gradients differ (worst "
          f"{max(grad_errors.values()):.1e}; {wrong[0]} among them)")
    # The parameter count and the state dict keys cannot notice: the shortcut has no parameters. The logits, the
    # loss and the gradients fail by orders of magnitude more than round-off (1e-16): every layer from stage 2 on
    # sees different numbers, and the gradients of every layer (stage 1 too, through the backward) change.
    assert len(broken) == 2 and logit_error > 1e-3
    assert max(grad_errors.values()) > 1e-3 and any(k.startswith("layer1") for k in wrong)


if __name__ == "__main__":
    for exercise in (exercise_1, exercise_2, exercise_3, exercise_4, exercise_5, exercise_6):
        print(f"{exercise.__name__}: {exercise.__doc__.splitlines()[0]}")
        exercise()
    print("all exercises of lesson 6 pass")
