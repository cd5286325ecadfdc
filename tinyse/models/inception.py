"""A small Inception network for CIFAR and its SE version (the paper's SE-Inception, Fig. 2).

An Inception module runs four branches side by side and joins them along the
channels:
    1x1 conv  |  1x1 -> 3x3  |  1x1 -> 3x3 -> 3x3 (a 5x5 field, as two 3x3)  |  3x3 max pool -> 1x1
Every conv is conv -> batch norm -> ReLU. In SE-Inception the SE block
rescales the joined output of the whole module.

Network (32x32 inputs): stem 3x3 conv (64) | stage 1 at 32x32: one module |
max pool | stage 2 at 16x16: two modules | max pool | stage 3 at 8x8: one
module | global average pooling | linear.
"""
import tinyse.functional as F
from tinyse.models import se_options
from tinyse.models.resnet import init_convs
from tinyse.nn import BatchNorm2d, Conv2d, GlobalAvgPool2d, Linear, MaxPool2d, Module, Sequential


class ConvBNReLU(Module):
    """relu(bn(conv(x))), the unit every Inception branch is built from."""

    def __init__(self, in_channels, out_channels, kernel_size):
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = BatchNorm2d(out_channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class InceptionModule(Module):
    """Four parallel branches concatenated along channels, optionally followed by an SE block.

    widths = (c1, c3_reduce, c3, c5_reduce, c5, pool_proj): output channels c1 + c3 + c5 + pool_proj.
    """

    def __init__(self, in_channels, widths, se=None, stage=None):
        super().__init__()
        c1, c3_reduce, c3, c5_reduce, c5, pool_proj = widths
        self.branch1x1 = ConvBNReLU(in_channels, c1, 1)
        self.branch3x3 = Sequential(ConvBNReLU(in_channels, c3_reduce, 1), ConvBNReLU(c3_reduce, c3, 3))
        self.branch5x5 = Sequential(
            ConvBNReLU(in_channels, c5_reduce, 1), ConvBNReLU(c5_reduce, c5, 3), ConvBNReLU(c5, c5, 3)
        )
        self.branch_pool = Sequential(MaxPool2d(3, stride=1, padding=1), ConvBNReLU(in_channels, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj
        self.se = se_options.make_block(self.out_channels, se, stage)

    def forward(self, x):
        branches = [self.branch1x1(x), self.branch3x3(x), self.branch5x5(x), self.branch_pool(x)]
        out = F.concat(branches, axis=1)
        return out if self.se is None else self.se(out)


# (stage, widths) of each module: stage 1 at 32x32, stage 2 at 16x16, stage 3 at 8x8.
MODULES = [
    (1, (16, 16, 24, 16, 24, 16)),  # 64 -> 80
    (2, (32, 32, 48, 16, 24, 24)),  # 80 -> 128
    (2, (32, 32, 48, 16, 24, 24)),  # 128 -> 128
    (3, (64, 48, 96, 24, 48, 48)),  # 128 -> 256
]


class CifarInception(Module):
    """stem -> Inception modules with max-pool downsampling between stages -> pool -> fc."""

    def __init__(self, num_classes=10, se=None, **se_keywords):
        super().__init__()
        se = se_options.resolve(se, **se_keywords)
        if se is not None and se["integration"] != "standard":
            raise ValueError("an Inception module has no residual branch: SE integration must be 'standard'")
        self.stem = ConvBNReLU(3, 64, 3)
        layers, channels, stage = [], 64, 1
        for module_stage, widths in MODULES:
            if module_stage != stage:
                layers.append(MaxPool2d(3, stride=2, padding=1))
                stage = module_stage
            module = InceptionModule(channels, widths, se, stage)
            layers.append(module)
            channels = module.out_channels
        self.features = Sequential(*layers)
        self.pool = GlobalAvgPool2d()
        self.fc = Linear(channels, num_classes)
        init_convs(self)

    def forward(self, x):
        return self.fc(self.pool(self.features(self.stem(x))))
