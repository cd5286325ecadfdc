"""ResNets for CIFAR (He et al., 2016) and their SE versions (Hu et al., 2018).

A residual unit computes  out = relu(residual(x) + shortcut(x)).  The SE block
can sit in four places (the paper's Fig. 5, "integration"):
    standard   on the residual branch, before the addition:  relu(SE(residual(x)) + shortcut(x))
    pre        before the residual branch:                    relu(residual(SE(x)) + shortcut(x))
    post       after the addition and its ReLU:               SE(relu(residual(x) + shortcut(x)))
    identity   on the identity branch:                        relu(residual(x) + SE(shortcut(x)))

Networks (CIFAR, 32x32 inputs): a 3x3 stem, three stages at 1x, 1/2x, 1/4x the
resolution, global average pooling, one linear layer.
    basic blocks       depth 6n + 2 (20, 32, 44, 56, 110), widths 16, 32, 64
    bottleneck blocks  depth 9n + 2 (164), widths 64, 128, 256 (inner 16, 32, 64)
    ResNeXt blocks     bottlenecks whose 3x3 conv is grouped (cardinality groups)
"""
import numpy as np

import tinyse.functional as F
from tinyse.models import se_options
from tinyse.nn import BatchNorm2d, BatchNormReLU2d, Conv2d, GlobalAvgPool2d, Identity, Linear, Module, Sequential, init


class ShortcutA(Module):
    """He et al.'s parameter-free shortcut ("option A"): subsample by the stride, zero-pad new channels.

    (N, C_in, H, W) -> (N, C_out, H / stride, W / stride); the new channels are
    split evenly before and after the old ones.
    """

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x):
        if self.stride > 1:
            x = F.avg_pool2d(x, kernel_size=1, stride=self.stride)  # a 1x1 window: keeps every stride-th pixel
        extra = self.out_channels - self.in_channels
        return F.pad(x, ((0, 0), (extra // 2, extra - extra // 2), (0, 0), (0, 0)))

    def extra_repr(self):
        return f"{self.in_channels} -> {self.out_channels}, stride={self.stride}, zero-padded channels"


def init_convs(model):
    """Kaiming-normal (fan_out) weights for every conv of ``model``, as torchvision's ResNet does.

    Batch norms already start at weight 1, bias 0; linear layers keep PyTorch's default.
    """
    for module in model.modules():
        if isinstance(module, Conv2d):
            module.weight.data = init.kaiming_normal(module.weight.shape, mode="fan_out")


def zero_init_residuals(model):
    """Set the last batch norm's weight of every residual branch to 0 (Goyal et al., 2017), in place.

    Each unit then starts as relu(shortcut(x)): the network begins as a shallower one and its
    residual branches grow from zero. Returns the number of units changed.
    """
    units = [module for module in model.modules() if isinstance(module, ResidualUnit)]
    for unit in units:
        unit.last_norm().weight.data[...] = 0
    return len(units)


def whiten_stem(model, images):
    """Set the stem conv's filters to whiten the 3x3 patches of ``images`` (``init.whitening_filters``), in place.

    images: (N, 3, H, W), normalised as the network sees them (a few thousand training images are plenty).
    The stem's 16 filters are + and - the 8 leading principal directions of the patches, each scaled to
    unit variance (Jordan, 2024, whitens 2x2 patches the same way and freezes them; here they train on).
    """
    if not isinstance(model, CifarResNet):
        raise ValueError(f"whiten_stem: {type(model).__name__} is not a CIFAR ResNet (the stem it whitens)")
    stem = model.conv1
    out_channels, _, kernel_size, _ = stem.weight.shape
    stem.weight.data = init.whitening_filters(np.asarray(images), out_channels, kernel_size)


def make_shortcut(in_channels, out_channels, stride, kind):
    """Identity when shapes agree; else option "A" (subsample + zero pad) or "B" (1x1 conv + batch norm)."""
    if stride == 1 and in_channels == out_channels:
        return Identity()
    if kind == "A":
        return ShortcutA(in_channels, out_channels, stride)
    if kind == "B":
        return Sequential(Conv2d(in_channels, out_channels, 1, stride, bias=False), BatchNorm2d(out_channels))
    raise ValueError(f"unknown shortcut {kind!r}: choose 'A' (zero padding) or 'B' (1x1 projection)")


class ResidualUnit(Module):
    """What every residual block shares: the shortcut, and the SE block in its chosen place.

    Subclasses build their layers, then call ``add_shortcut_and_se``, and write ``residual(x)`` and
    ``last_norm()`` (the branch's last batch norm, for ``zero_init_residuals``).
    ``integration`` is where the SE block sits (the module docstring's four formulas), None without one.
    """

    def add_shortcut_and_se(self, in_channels, out_channels, stride, shortcut, se, stage):
        self.shortcut = make_shortcut(in_channels, out_channels, stride, shortcut)
        where = se["integration"] if se else None
        self.se = se_options.make_block(in_channels if where == "pre" else out_channels, se, stage)
        self.integration = where if self.se is not None else None  # no SE block in this stage: a plain unit

    def forward(self, x):
        # F.add_relu(a, b) is relu(a + b) in one op; se.scale_add_relu(u, b) is relu(SE(u) + b) in one op
        where = self.integration
        if where == "standard":  # relu(SE(residual(x)) + shortcut(x))
            return self.se.scale_add_relu(self.residual(x), self.shortcut(x))
        if where == "pre":  # relu(residual(SE(x)) + shortcut(x))
            return F.add_relu(self.residual(self.se(x)), self.shortcut(x))
        if where == "post":  # SE(relu(residual(x) + shortcut(x)))
            return self.se(F.add_relu(self.residual(x), self.shortcut(x)))
        if where == "identity":  # relu(residual(x) + SE(shortcut(x)))
            return F.add_relu(self.residual(x), self.se(self.shortcut(x)))
        return F.add_relu(self.residual(x), self.shortcut(x))  # no SE: relu(residual(x) + shortcut(x))


class BasicBlock(ResidualUnit):
    """residual(x) = bn2(conv2(relu(bn1(conv1(x))))), two 3x3 convs; the first carries the stride.

    bn1 is a ``BatchNormReLU2d``: relu(bn1(.)) in one op.
    """

    def __init__(self, in_channels, out_channels, stride=1, shortcut="A", se=None, stage=None):
        super().__init__()
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = BatchNormReLU2d(out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = BatchNorm2d(out_channels)
        self.add_shortcut_and_se(in_channels, out_channels, stride, shortcut, se, stage)

    def residual(self, x):
        return self.bn2(self.conv2(self.bn1(self.conv1(x))))

    def last_norm(self):
        return self.bn2


class Bottleneck(ResidualUnit):
    """residual(x) = bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))): 1x1 conv down to ``width``,
    3x3 conv (stride; ``groups`` for ResNeXt), 1x1 conv up. bn1 and bn2 are ``BatchNormReLU2d``.

    ResNet: width = out / 4, groups = 1.  ResNeXt: width = cardinality * group width, groups = cardinality.
    """

    def __init__(self, in_channels, out_channels, stride=1, shortcut="B", se=None, stage=None, width=None, groups=1):
        super().__init__()
        width = width or out_channels // 4
        self.conv1 = Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = BatchNormReLU2d(width)
        self.conv2 = Conv2d(width, width, 3, stride, padding=1, groups=groups, bias=False)
        self.bn2 = BatchNormReLU2d(width)
        self.conv3 = Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = BatchNorm2d(out_channels)
        self.add_shortcut_and_se(in_channels, out_channels, stride, shortcut, se, stage)

    def residual(self, x):
        x = self.bn1(self.conv1(x))
        x = self.bn2(self.conv2(x))
        return self.bn3(self.conv3(x))

    def last_norm(self):
        return self.bn3


class CifarResNet(Module):
    """stem (3x3 conv, 16 channels) -> layer1, layer2, layer3 (``blocks`` units each) -> pool -> fc.

    ``make_unit(in_channels, stage, stride)`` builds one residual unit of a stage
    (1, 2 or 3) and returns it with its output channels. Convs start Kaiming-normal
    (fan_out) and batch norms at weight 1, bias 0, as torchvision's ResNet. The stem is
    relu(bn1(conv1(x))), bn1 a ``BatchNormReLU2d``.
    """

    def __init__(self, make_unit, blocks, num_classes=10):
        super().__init__()
        self.conv1 = Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = BatchNormReLU2d(16)
        channels = 16
        for stage in (1, 2, 3):
            units = []
            for i in range(blocks):
                unit, channels = make_unit(channels, stage, stride=2 if stage > 1 and i == 0 else 1)
                units.append(unit)
            setattr(self, f"layer{stage}", Sequential(*units))
        self.pool = GlobalAvgPool2d()
        self.fc = Linear(channels, num_classes)
        init_convs(self)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x))


def resnet_basic(depth, num_classes=10, se=None, shortcut="A", **se_keywords):
    """CIFAR ResNet of basic blocks, depth 6n + 2, widths 16/32/64 (ResNet-20 ... ResNet-110)."""
    if (depth - 2) % 6:
        raise ValueError(f"a basic-block CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110), got {depth}")
    se = se_options.resolve(se, **se_keywords)

    def make_unit(in_channels, stage, stride):
        out = 16 * 2 ** (stage - 1)
        return BasicBlock(in_channels, out, stride, shortcut, se, stage), out

    return CifarResNet(make_unit, (depth - 2) // 6, num_classes)


def resnet_bottleneck(depth, num_classes=10, se=None, shortcut="B", cardinality=1, group_width=None, **se_keywords):
    """CIFAR ResNet of bottleneck blocks, depth 9n + 2 (ResNet-164), outputs 64/128/256 per stage.

    With ``cardinality`` > 1 it is a ResNeXt: each bottleneck's 3x3 conv has
    ``cardinality`` groups of ``group_width`` channels (doubled at each stage).
    """
    if (depth - 2) % 9:
        raise ValueError(f"a bottleneck CIFAR ResNet has depth 9n + 2 (29, 164, ...), got {depth}")
    se = se_options.resolve(se, **se_keywords)

    def make_unit(in_channels, stage, stride):
        out = 64 * 2 ** (stage - 1)
        width = cardinality * group_width * 2 ** (stage - 1) if group_width else out // 4
        unit = Bottleneck(in_channels, out, stride, shortcut, se, stage, width=width, groups=cardinality)
        return unit, out

    return CifarResNet(make_unit, (depth - 2) // 9, num_classes)
