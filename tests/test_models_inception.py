"""The CIFAR Inception and SE-Inception against a PyTorch twin written from the architecture.

The twin below is built only from the description of the network (tinyse/models/inception.py's
docstring): every conv is conv -> batch norm -> ReLU; a module runs 1x1 | 1x1 -> 3x3 |
1x1 -> 3x3 -> 3x3 | 3x3 max pool -> 1x1 side by side and concatenates them; in
SE-Inception an SE block (avg squeeze, C -> max(1, C // r) -> C, ReLU, sigmoid) rescales
the concatenated output. Its attribute names are tinyse's, so the two state dicts have
the same keys and ``load_state_dict(strict=True)`` moves every weight across.
"""
import numpy as np
import pytest
import torch
from torch import nn

import tinyse
import tinyse.functional as F
from tinyse import models
from tinyse.backend import to_device
from tinyse.nn import Sequential

from conftest import DEVICES, rel_error

# (stage, (c1, c3_reduce, c3, c5_reduce, c5, pool_proj)): stage 1 at 32x32, 2 at 16x16, 3 at 8x8.
ARCHITECTURE = [
    (1, (16, 16, 24, 16, 24, 16)),
    (2, (32, 32, 48, 16, 24, 24)),
    (2, (32, 32, 48, 16, 24, 24)),
    (3, (64, 48, 96, 24, 48, 48)),
]
TOLERANCE = {np.float64: 1e-8, np.float32: 1e-3}  # relative error per tensor


# --- the PyTorch twin ----------------------------------------------------------------------------
class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class SE(nn.Module):
    def __init__(self, channels, reduction):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1, self.fc2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)

    def forward(self, u):
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(u.mean(dim=(2, 3))))))
        return u * s[:, :, None, None]


class InceptionModule(nn.Module):
    def __init__(self, cin, widths, reduction):
        super().__init__()
        c1, c3r, c3, c5r, c5, pool_proj = widths
        self.branch1x1 = ConvBNReLU(cin, c1, 1)
        self.branch3x3 = nn.Sequential(ConvBNReLU(cin, c3r, 1), ConvBNReLU(c3r, c3, 3))
        self.branch5x5 = nn.Sequential(ConvBNReLU(cin, c5r, 1), ConvBNReLU(c5r, c5, 3), ConvBNReLU(c5, c5, 3))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), ConvBNReLU(cin, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj
        self.se = SE(self.out_channels, reduction) if reduction else None

    def forward(self, x):
        out = torch.cat([self.branch1x1(x), self.branch3x3(x), self.branch5x5(x), self.branch_pool(x)], dim=1)
        return out if self.se is None else self.se(out)


class TorchInception(nn.Module):
    def __init__(self, reduction=None, num_classes=10):
        super().__init__()
        self.stem = ConvBNReLU(3, 64, 3)
        layers, channels, stage = [], 64, 1
        for module_stage, widths in ARCHITECTURE:
            if module_stage != stage:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
                stage = module_stage
            layers.append(InceptionModule(channels, widths, reduction))
            channels = layers[-1].out_channels
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.features(self.stem(x)).mean(dim=(2, 3)))


# --- helpers -------------------------------------------------------------------------------------
def make_pair(reduction, dtype, device="cpu", seed=0):
    """tinyse (se_)inception in ``dtype`` on ``device`` and its float64 twin (CPU) holding the same weights.

    Batch norms get random weights, biases and running statistics first (through tinyse's
    load_state_dict), so the comparison does not rest on their 1 / 0 initial values.
    The twin is float64 even for a float32 tinyse model: PyTorch's own float32 result
    differs from its float64 one by up to ~2e-3 on some gradients of this network, so
    the exact (float64) result is the reference, and float32 tinyse must be near it.
    """
    name = "se_inception" if reduction else "inception"
    model = models.create(name, seed=seed, **({"reduction": reduction} if reduction else {}))
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith(("bn.weight", "running_var")):
            state[key] = rng.uniform(0.5, 1.5, value.shape).astype(value.dtype)
        elif key.endswith(("bn.bias", "running_mean")):
            state[key] = (0.1 * rng.standard_normal(value.shape)).astype(value.dtype)
    model.load_state_dict(state)
    twin = TorchInception(reduction).double()
    state = model.to(dtype=np.float64).state_dict()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    model.to(device, dtype)
    return model, twin


def check_training_step_and_eval(reduction, dtype, device, size):
    """One training-mode forward/backward in both; compare logits, loss, every gradient, BN state, eval logits.

    Input: a batch of 4 random ``size`` x ``size`` images (16 also runs every layer: stages at 16, 8, 4).
    """
    tol = TOLERANCE[dtype]
    model, twin = make_pair(reduction, dtype, device)
    rng = np.random.default_rng(1)
    x, labels = rng.standard_normal((4, 3, size, size)), rng.integers(0, 10, 4)
    x_ours = tinyse.Tensor(to_device(x.astype(dtype), device))
    model.train()
    twin.train()

    logits = model(x_ours)
    loss = F.cross_entropy(logits, to_device(labels, device))
    model.zero_grad()
    loss.backward()
    logits_t = twin(torch.from_numpy(x))
    loss_t = torch.nn.functional.cross_entropy(logits_t, torch.from_numpy(labels))
    loss_t.backward()

    assert rel_error(logits.data, logits_t) < tol
    assert rel_error(loss.data, loss_t) < tol
    theirs = dict(twin.named_parameters())
    ours = dict(model.named_parameters())
    assert ours.keys() == theirs.keys()
    for name, p in ours.items():
        assert p.grad is not None, name
        assert rel_error(p.grad, theirs[name].grad) < tol, name
    buffers_t = dict(twin.named_buffers())
    for name, b in model.named_buffers():
        assert rel_error(b, buffers_t[name]) < tol, name

    model.eval()
    twin.eval()
    with tinyse.no_grad(), torch.no_grad():
        assert rel_error(model(x_ours).data, twin(torch.from_numpy(x))) < tol


# --- the tests -----------------------------------------------------------------------------------
def test_se_inception_matches_torch_twin_float64():
    """SE-Inception (r = 16) equals its twin in float64 on 32x32 images: logits, loss, every gradient,
    BN running statistics after the step, and eval-mode logits (each within 1e-8)."""
    check_training_step_and_eval(16, np.float64, "cpu", size=32)


def test_plain_inception_matches_torch_twin_float64():
    """Plain Inception (se=None) equals its twin without SE blocks, training step and eval."""
    check_training_step_and_eval(None, np.float64, "cpu", size=16)


@pytest.mark.parametrize("device", DEVICES)
def test_se_inception_matches_torch_twin_float32(device):
    """The same for float32 SE-Inception (r = 4) on each device (tinyse there, PyTorch on the CPU), within 1e-3."""
    check_training_step_and_eval(4, np.float32, device, size=16)


@pytest.mark.parametrize("reduction", [None, 16, 4])
def test_parameter_counts_and_keys_match_the_twin(reduction):
    """Same parameter count and exactly the same state-dict keys and shapes as the twin (plain and SE)."""
    name = "se_inception" if reduction else "inception"
    model = models.create(name, **({"reduction": reduction} if reduction else {}))
    twin = TorchInception(reduction)
    assert model.num_parameters() == sum(p.numel() for p in twin.parameters())
    ours = {k: v.shape for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in twin.state_dict().items()}


def test_se_rescales_the_joined_module_output():
    """Each module's SE block has as many channels as the four branches together (c1 + c3 + c5 + pool_proj)."""
    model = models.create("se_inception")
    modules = [m for m in model.features if type(m).__name__ == "InceptionModule"]
    assert len(modules) == len(ARCHITECTURE)
    for module, (_, (c1, _, c3, _, c5, pool_proj)) in zip(modules, ARCHITECTURE):
        joined = c1 + c3 + c5 + pool_proj
        branches = (module.branch1x1, module.branch3x3, module.branch5x5, module.branch_pool)
        branch_outputs = sum((b[-1] if isinstance(b, Sequential) else b).conv.out_channels for b in branches)
        assert module.se.channels == module.se.fc1.in_features == branch_outputs == joined


@pytest.mark.parametrize("stages", [(1,), (2,), (3,), (1, 3)])
def test_se_stages_option_follows_the_stage_of_each_module(stages):
    """se stages=(...) puts SE exactly in the modules of those stages (stage 1 at 32x32, 2 at 16x16, 3 at 8x8)."""
    model = models.create("se_inception", stages=stages)
    modules = [m for m in model.features if type(m).__name__ == "InceptionModule"]
    assert [m.se is not None for m in modules] == [stage in stages for stage, _ in ARCHITECTURE]


@pytest.mark.parametrize("integration", ["pre", "post", "identity"])
def test_inception_rejects_residual_integrations(integration):
    """An Inception module has no residual branch: integration other than 'standard' is a ValueError."""
    with pytest.raises(ValueError, match="standard"):
        models.create("se_inception", integration=integration)
    models.create("se_inception", integration="standard")  # the one that is accepted
