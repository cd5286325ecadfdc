"""PyTorch twins of tinyse's SE block and models, written from the papers, not from tinyse's code.

He et al. 2016 for the CIFAR ResNets and their option-A shortcut, Xie et al. 2017 for ResNeXt,
Szegedy et al. 2015 for the Inception module, Hu et al. 2018 for SE and where it sits in a
residual unit (the journal version's Fig. 5). Every twin uses tinyse's attribute names, so a
tinyse model's ``state_dict()`` loads into its twin with ``strict=True`` (``load_into_twin``):
the strict load itself proves that the two have the same layers.

One copy for the tests and the benchmark. torch is imported at the top: import this module
only where torch is wanted.
"""
import re

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as TF

TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}
# The SE options of the paper (reduction 16, average squeeze, sigmoid gate, on the residual branch, all stages).
PAPER_SE = {"reduction": 16, "squeeze": "avg", "excitation": "sigmoid", "integration": "standard", "stages": (1, 2, 3)}


def paper_se(**changes):
    """The paper's SE options with some changed: ``paper_se(integration="pre")``."""
    return dict(PAPER_SE, **changes)


def load_into_twin(model, twin, dtype=np.float64):
    """The twin, in ``dtype``, holding exactly tinyse ``model``'s state (strict: every key must match)."""
    twin.to(TORCH_DTYPE[np.dtype(dtype).type])
    state = {key: torch.from_numpy(np.asarray(value)) for key, value in model.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    return twin


# --- the SE block and global pooling ----------------------------------------------------------------
class TorchGlobalAvgPool(tnn.Module):
    """(N, C, H, W) -> (N, C): the mean over each channel's pixels."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


GATES = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}  # the excitation's last function


class TorchSE(tnn.Module):
    """The paper's SE block: U * gate(fc2(relu(fc1(squeeze(U))))), hidden width max(1, C // r)."""

    def __init__(self, channels, reduction=16, squeeze="avg", excitation="sigmoid"):
        super().__init__()
        self.squeeze, self.excitation = squeeze, excitation
        hidden = max(1, channels // reduction)
        self.fc1 = tnn.Linear(channels, hidden)
        self.fc2 = tnn.Linear(hidden, channels)

    def gates(self, u):
        z = u.mean(dim=(2, 3)) if self.squeeze == "avg" else u.amax(dim=(2, 3))  # (N, C)
        a = self.fc2(torch.relu(self.fc1(z)))
        return GATES[self.excitation](a)

    def forward(self, u):
        return u * self.gates(u)[:, :, None, None]


# --- residual units and the CIFAR ResNets ----------------------------------------------------------
class TorchShortcutA(tnn.Module):
    """He et al.'s option A: keep every stride-th pixel, zero-pad the new channels half before, half after."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.extra, self.stride = out_channels - in_channels, stride

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return TF.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


def torch_shortcut(in_channels, out_channels, stride, kind):
    """Identity when the shape is kept; else option A (subsample, zero channels) or B (1x1 conv + batch norm)."""
    if stride == 1 and in_channels == out_channels:
        return tnn.Identity()
    if kind == "A":
        return TorchShortcutA(in_channels, out_channels, stride)
    return tnn.Sequential(tnn.Conv2d(in_channels, out_channels, 1, stride, bias=False), tnn.BatchNorm2d(out_channels))


class TorchUnit(tnn.Module):
    """A residual unit with the SE block where the paper's Fig. 5 puts it (``self.integration``, settable):

        standard  relu(SE(residual(x)) + shortcut(x))      pre       relu(residual(SE(x)) + shortcut(x))
        post      SE(relu(residual(x) + shortcut(x)))      identity  relu(residual(x) + SE(shortcut(x)))
    """

    def add_shortcut_and_se(self, in_channels, out_channels, stride, shortcut, se, stage):
        self.shortcut = torch_shortcut(in_channels, out_channels, stride, shortcut)
        on = se is not None and stage in se["stages"]
        self.integration = se["integration"] if on else None
        if on:
            channels = in_channels if self.integration == "pre" else out_channels
            self.se = TorchSE(channels, se["reduction"], se["squeeze"], se["excitation"])
        else:
            self.se = None

    def forward(self, x):
        where = self.integration
        if where == "standard":
            return torch.relu(self.se(self.residual(x)) + self.shortcut(x))
        if where == "pre":
            return torch.relu(self.residual(self.se(x)) + self.shortcut(x))
        if where == "post":
            return self.se(torch.relu(self.residual(x) + self.shortcut(x)))
        if where == "identity":
            return torch.relu(self.residual(x) + self.se(self.shortcut(x)))
        return torch.relu(self.residual(x) + self.shortcut(x))


class TorchBasicBlock(TorchUnit):
    """residual(x) = bn2(conv2(relu(bn1(conv1(x))))), both convs 3x3, the first with the stride."""

    def __init__(self, in_channels, out_channels, stride=1, shortcut="A", se=None, stage=1):
        super().__init__()
        self.conv1 = tnn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(out_channels)
        self.conv2 = tnn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(out_channels)
        self.add_shortcut_and_se(in_channels, out_channels, stride, shortcut, se, stage)

    def residual(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class TorchBottleneck(TorchUnit):
    """1x1 down to ``width``, 3x3 (stride, ``groups`` = cardinality for ResNeXt), 1x1 up to ``out_channels``."""

    def __init__(self, in_channels, out_channels, stride=1, shortcut="B", se=None, stage=1, width=None, groups=1):
        super().__init__()
        width = width or out_channels // 4
        self.conv1 = tnn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.conv2 = tnn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = tnn.BatchNorm2d(width)
        self.conv3 = tnn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(out_channels)
        self.add_shortcut_and_se(in_channels, out_channels, stride, shortcut, se, stage)

    def residual(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


class TorchCifarResNet(tnn.Module):
    """3x3 stem (16) -> three stages (stride 1, 2, 2) -> global average pool -> linear.

    basic:      depth 6n + 2, n units per stage, widths 16, 32, 64, option A shortcuts
    bottleneck: depth 9n + 2, n units per stage, outputs 64, 128, 256, inner width out / 4, option B;
                with cardinality > 1 (ResNeXt) the inner width is cardinality * group_width * 2^(stage-1)
    """

    def __init__(self, kind, depth, num_classes=10, se=None, shortcut=None, cardinality=1, group_width=None):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(16)
        channels = 16
        for stage in (1, 2, 3):
            units = []
            for i in range(((depth - 2) // 6) if kind == "basic" else ((depth - 2) // 9)):
                stride = 2 if stage > 1 and i == 0 else 1
                if kind == "basic":
                    out = 16 * 2 ** (stage - 1)
                    units.append(TorchBasicBlock(channels, out, stride, shortcut or "A", se, stage))
                else:
                    out = 64 * 2 ** (stage - 1)
                    width = cardinality * group_width * 2 ** (stage - 1) if group_width else None
                    units.append(TorchBottleneck(channels, out, stride, shortcut or "B", se, stage, width, cardinality))
                channels = out
            setattr(self, f"layer{stage}", tnn.Sequential(*units))
        self.pool = TorchGlobalAvgPool()
        self.fc = tnn.Linear(channels, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x))


def twin_for_name(name, num_classes=10):
    """The twin of a registry name, read from the name alone (not from tinyse's registry).

    resnet20/32/44/56/110, resnet164, resnext29_4x8d, each with an ``se_`` prefix for the paper's SE.
    """
    se = paper_se() if name.startswith("se_") else None
    base = name.removeprefix("se_")
    if re.fullmatch(r"resnet(20|32|44|56|110)", base):
        return TorchCifarResNet("basic", int(base[6:]), num_classes, se)
    if base == "resnet164":
        return TorchCifarResNet("bottleneck", 164, num_classes, se)
    if base == "resnext29_4x8d":  # ResNeXt-29, cardinality 4, 8 channels per group at stage 1
        return TorchCifarResNet("bottleneck", 29, num_classes, se, cardinality=4, group_width=8)
    raise KeyError(f"no PyTorch twin for {name!r}")


# --- the CIFAR Inception ---------------------------------------------------------------------------
# (stage, (c1, c3_reduce, c3, c5_reduce, c5, pool_proj)): stage 1 at 32x32, 2 at 16x16, 3 at 8x8.
INCEPTION_ARCHITECTURE = [
    (1, (16, 16, 24, 16, 24, 16)),
    (2, (32, 32, 48, 16, 24, 24)),
    (2, (32, 32, 48, 16, 24, 24)),
    (3, (64, 48, 96, 24, 48, 48)),
]


class TorchConvBNReLU(tnn.Module):
    """relu(bn(conv(x))), a k x k conv with 'same' padding."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = tnn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = tnn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class TorchInceptionModule(tnn.Module):
    """1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | 3x3 max pool -> 1x1, concatenated; then SE when ``reduction``."""

    def __init__(self, cin, widths, reduction):
        super().__init__()
        c1, c3r, c3, c5r, c5, pool_proj = widths
        self.branch1x1 = TorchConvBNReLU(cin, c1, 1)
        self.branch3x3 = tnn.Sequential(TorchConvBNReLU(cin, c3r, 1), TorchConvBNReLU(c3r, c3, 3))
        self.branch5x5 = tnn.Sequential(
            TorchConvBNReLU(cin, c5r, 1), TorchConvBNReLU(c5r, c5, 3), TorchConvBNReLU(c5, c5, 3))
        self.branch_pool = tnn.Sequential(tnn.MaxPool2d(3, stride=1, padding=1), TorchConvBNReLU(cin, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj
        self.se = TorchSE(self.out_channels, reduction) if reduction else None

    def forward(self, x):
        out = torch.cat([self.branch1x1(x), self.branch3x3(x), self.branch5x5(x), self.branch_pool(x)], dim=1)
        return out if self.se is None else self.se(out)


class TorchInception(tnn.Module):
    """stem -> Inception modules (3x3 max pool, stride 2, between stages) -> global average pool -> linear."""

    def __init__(self, reduction=None, num_classes=10):
        super().__init__()
        self.stem = TorchConvBNReLU(3, 64, 3)
        layers, channels, stage = [], 64, 1
        for module_stage, widths in INCEPTION_ARCHITECTURE:
            if module_stage != stage:
                layers.append(tnn.MaxPool2d(3, stride=2, padding=1))
                stage = module_stage
            layers.append(TorchInceptionModule(channels, widths, reduction))
            channels = layers[-1].out_channels
        self.features = tnn.Sequential(*layers)
        self.fc = tnn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.features(self.stem(x)).mean(dim=(2, 3)))
