"""What the benchmark measures: one ``Row`` per line of the table, each with a tinyse and a torch callable.

    ops, at SE-ResNet-20's three stage shapes (N, C, H, W) = (128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8):
        conv3x3 fwd             3x3 conv, C -> C, stride 1, pad 1, no bias; forward under no_grad
        conv3x3 fwd+bwd         the same conv, forward then backward
        batchnorm fwd+bwd       BatchNorm2d in training mode
        relu fwd+bwd
        se_block fwd+bwd        tinyse.nn.SEBlock(C, reduction=16) against the paper's SE block in torch
                                (avgpool -> Linear -> ReLU -> Linear -> sigmoid -> scale: ``TorchSE``)
        global_avgpool fwd+bwd  (N, C, H, W) -> (N, C)
    A backward starts from a fixed random upstream gradient, with every gradient cleared first.
    models, tinyse.models.create(name, num_classes=10, seed=0) against a PyTorch twin with the same
    layers and the same initial weights (``torch_twin_model``):
        <model> train step      forward, cross-entropy, backward, SGD (momentum 0.9, weight decay 1e-4), batch 128
        <model> eval fwd        forward in eval mode under no_grad, batch 256
    The four calls of one kind of model row (both models, both libraries) alternate in one loop.

The PyTorch side comes from ``tinyse.testing.twins``, which imports torch at its top: it is imported
inside the torch functions only, so the tinyse side never loads torch.
"""
import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import tinyse.functional as F
from tinyse import models, nn
from tinyse.backend import to_device
from tinyse.bench.machine import torch_device
from tinyse.optim import SGD
from tinyse.tensor import Tensor, no_grad

LIBRARIES = ("tinyse", "torch")
STAGES = ((16, 32), (32, 16), (64, 8))  # (channels, height = width) of SE-ResNet-20's three stages
OPS = (  # (layer, with backward?)
    ("conv3x3", False),
    ("conv3x3", True),
    ("batchnorm", True),
    ("relu", True),
    ("se_block", True),
    ("global_avgpool", True),
)
MODELS = ("resnet20", "se_resnet20")
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4  # He et al.'s CIFAR recipe, as tinyse.train


@dataclass
class Row:
    """One line of the table. ``make_tinyse()`` and ``make_torch()`` build the inputs and return the
    zero-argument callable that is timed (so building never counts)."""

    name: str
    shape: tuple  # the input (N, C, H, W)
    kind: str  # "op" or "model": picks the default warm-up and repeats
    make_tinyse: Callable[[], Callable[[], None]]
    make_torch: Callable[[], Callable[[], None]]
    group: str = ""  # rows of one non-empty group are timed together, in one alternating loop

    @property
    def label(self):
        return f"{self.name} {format_shape(self.shape)}"


def format_shape(shape):
    return "x".join(str(size) for size in shape)


def build_rows(batch=128, device="cpu"):
    """Every row of the table, in order: each op at the three stage shapes, then the models."""
    rows = []
    for layer, backward in OPS:
        for channels, size in STAGES:
            shape = (batch, channels, size, size)
            rows.append(Row(
                f"{layer} {'fwd+bwd' if backward else 'fwd'}", shape, "op",
                make_tinyse=functools.partial(tinyse_op, layer, shape, device, backward),
                make_torch=functools.partial(torch_op, layer, shape, device, backward),
            ))
    for train, suffix, shape in ((True, "train step", (batch, 3, 32, 32)), (False, "eval fwd", (2 * batch, 3, 32, 32))):
        for model in MODELS:
            rows.append(Row(
                f"{model} {suffix}", shape, "model",
                make_tinyse=functools.partial(tinyse_model, model, shape, device, train),
                make_torch=functools.partial(torch_model, model, shape, device, train), group=suffix,
            ))
    return rows


def random_input(shape, seed=0):
    """Standard-normal float32 values: the same array feeds both libraries."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def random_labels(count, classes=10):
    return np.random.default_rng(2).integers(0, classes, count)


# --- tinyse -------------------------------------------------------------------------------------
def tinyse_layer(layer, channels):
    return {
        "conv3x3": lambda: nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False),
        "batchnorm": lambda: nn.BatchNorm2d(channels),
        "relu": nn.ReLU,
        "se_block": lambda: nn.SEBlock(channels, reduction=16),
        "global_avgpool": nn.GlobalAvgPool2d,
    }[layer]()


def tinyse_op(layer, shape, device, backward):
    """layer(x) under no_grad, or forward and backward, for tinyse; returns the zero-argument callable."""
    module = tinyse_layer(layer, shape[1]).to(device)
    x = Tensor(to_device(random_input(shape), device), requires_grad=backward)
    if not backward:
        def forward():
            with no_grad():
                module(x)
        return forward
    with no_grad():
        grad_out = to_device(random_input(module(x).shape, seed=1), device)
    leaves = [x, *module.parameters()]

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None  # backward adds to .grad: start from nothing, as after zero_grad
        module(x).backward(grad_out)
    return forward_backward


def tinyse_model(name, shape, device, train):
    """A training step (train=True) or an eval-mode forward under no_grad, for tinyse."""
    model = models.create(name, num_classes=10, seed=0).to(device)
    images = Tensor(to_device(random_input(shape), device))
    if not train:
        model.eval()

        def forward():
            with no_grad():
                model(images)
        return forward
    labels = to_device(random_labels(shape[0]), device)
    optimizer = SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def step():
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


# --- torch --------------------------------------------------------------------------------------
def torch_layer(layer, channels):
    from torch import nn as tnn

    from tinyse.testing.twins import TorchGlobalAvgPool, TorchSE

    return {
        "conv3x3": lambda: tnn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False),
        "batchnorm": lambda: tnn.BatchNorm2d(channels),
        "relu": tnn.ReLU,
        "se_block": lambda: TorchSE(channels, reduction=16),
        "global_avgpool": TorchGlobalAvgPool,
    }[layer]()


def torch_twin_model(name):
    """The PyTorch twin of tinyse's ``name`` (``tinyse.testing.twins.twin_for_name``), holding the initial
    weights of ``models.create(name, seed=0)``; the strict load proves the layers are the same."""
    from tinyse.testing.twins import load_into_twin, twin_for_name

    try:
        twin = twin_for_name(name)
    except KeyError:
        raise ValueError(f"no PyTorch twin for {name!r}: only the CIFAR ResNets (resnet20/32/44/56/110, "
                         "resnet164, resnext29_4x8d, each also with se_)") from None
    return load_into_twin(models.create(name, num_classes=10, seed=0), twin, np.float32)


def torch_op(layer, shape, device, backward):
    """The same as ``tinyse_op``, for torch."""
    import torch

    target = torch_device(device)
    module = torch_layer(layer, shape[1]).to(target)
    x = torch.from_numpy(random_input(shape)).to(target).requires_grad_(backward)
    if not backward:
        def forward():
            with torch.no_grad():
                module(x)
        return forward
    with torch.no_grad():
        grad_out = torch.from_numpy(random_input(tuple(module(x).shape), seed=1)).to(target)
    leaves = [x, *module.parameters()]

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        module(x).backward(grad_out)
    return forward_backward


def torch_model(name, shape, device, train):
    """The same as ``tinyse_model``, for torch (the model from ``torch_twin_model``)."""
    import torch

    target = torch_device(device)
    model = torch_twin_model(name).to(target)
    images = torch.from_numpy(random_input(shape)).to(target)
    if not train:
        model.eval()

        def forward():
            with torch.no_grad():
                model(images)
        return forward
    labels = torch.from_numpy(random_labels(shape[0])).to(target)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def step():
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step
