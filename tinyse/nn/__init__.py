"""Layers and models' building blocks: Module, the standard layers, and the SE block."""
from tinyse.nn.init import manual_seed
from tinyse.nn.layers import (
    AvgPool2d,
    BatchNorm2d,
    BatchNormReLU2d,
    Conv2d,
    Flatten,
    GlobalAvgPool2d,
    Identity,
    Linear,
    MaxPool2d,
    ReLU,
    Sigmoid,
)
from tinyse.nn.module import Module, Parameter, Sequential
from tinyse.nn.se import SEBlock

__all__ = [
    "AvgPool2d", "BatchNorm2d", "BatchNormReLU2d", "Conv2d", "Flatten", "GlobalAvgPool2d", "Identity", "Linear",
    "MaxPool2d", "Module", "Parameter", "ReLU", "SEBlock", "Sequential", "Sigmoid", "manual_seed",
]
