"""The layers: each a Module that owns its parameters and calls one function of ``tinyse.functional``."""
import math

import numpy as np

import tinyse.functional as F
from tinyse.nn import init
from tinyse.nn.module import Module, Parameter


class Conv2d(Module):
    """2-D convolution; weight (out, in/groups, k, k), bias (out,) or None. See ``tinyse.ops.conv``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=True):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.groups = kernel_size, stride, padding, groups
        shape = (out_channels, in_channels // groups, kernel_size, kernel_size)
        self.weight = Parameter(init.default_weight(shape))
        self.bias = Parameter(init.uniform(out_channels, 1 / math.sqrt(init.fans(shape)[0]))) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.groups)

    def extra_repr(self):
        groups = f", groups={self.groups}" if self.groups != 1 else ""
        bias = "" if self.bias is not None else ", bias=False"
        k, channels = self.kernel_size, f"{self.in_channels}, {self.out_channels}"
        return f"{channels}, kernel_size={k}x{k}, stride={self.stride}, padding={self.padding}{groups}{bias}"


class Linear(Module):
    """y = x W^T + b; weight (out, in), bias (out,) or None."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(init.default_weight((out_features, in_features)))
        self.bias = Parameter(init.uniform(out_features, 1 / math.sqrt(in_features))) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class BatchNorm2d(Module):
    """Batch norm over (N, H, W) per channel; running statistics used in eval mode. See ``tinyse.ops.norm``.

    Keeps PyTorch's state: ``weight``, ``bias`` (trained), and the buffers
    ``running_mean``, ``running_var``, ``num_batches_tracked``.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(np.ones(num_features, np.float32))
        self.bias = Parameter(np.zeros(num_features, np.float32))
        self.register_buffer("running_mean", np.zeros(num_features, np.float32))
        self.register_buffer("running_var", np.ones(num_features, np.float32))
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64), on_host=True)  # read by no kernel

    def forward(self, x):
        self.count_batch()
        return F.batch_norm(
            x, self.weight, self.bias, self.running_mean, self.running_var, self.training, self.momentum, self.eps
        )

    def count_batch(self):
        """num_batches_tracked += 1 for a training-mode batch, as PyTorch counts (eval batches do not count)."""
        if self.training:
            self.num_batches_tracked += 1

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNormReLU2d(BatchNorm2d):
    """relu(BatchNorm2d(x)): the batch norm and the ReLU after it as one fused op (``F.batch_norm_relu``).

    Its state is BatchNorm2d's (a ReLU has none), so its state_dict keys are those of a
    PyTorch ``BatchNorm2d`` followed by a ``ReLU``: ``bn1.weight``, ``bn1.running_mean``, ...
    """

    def forward(self, x):
        self.count_batch()
        return F.batch_norm_relu(
            x, self.weight, self.bias, self.running_mean, self.running_var, self.training, self.momentum, self.eps
        )


class ReLU(Module):
    """y = max(x, 0), elementwise, any shape."""

    def forward(self, x):
        return F.relu(x)


class Sigmoid(Module):
    """y = 1 / (1 + exp(-x)), elementwise, any shape."""

    def forward(self, x):
        return F.sigmoid(x)


class MaxPool2d(Module):
    """(N, C, H, W) -> (N, C, OH, OW): the maximum of each window (``stride`` defaults to the window size)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride or kernel_size, padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(MaxPool2d):
    """(N, C, H, W) -> (N, C, OH, OW): the mean of each window, as MaxPool2d takes the maximum."""

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C): the mean of each channel."""

    def forward(self, x):
        return F.global_avg_pool2d(x)


class Flatten(Module):
    """(N, ...) -> (N, everything else)."""

    def forward(self, x):
        return F.flatten(x)


class Identity(Module):
    """y = x: a placeholder, such as the shortcut of a residual unit that keeps its shape."""

    def forward(self, x):
        return x
