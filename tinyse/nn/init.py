"""Weight initialisation, drawn from one seedable generator (``tinyse.manual_seed``)."""
import math

import numpy as np

_rng = np.random.default_rng(0)


def manual_seed(seed):
    """Seed the generator that every initialiser draws from (models built after it are reproducible)."""
    global _rng
    _rng = np.random.default_rng(seed)


def fans(shape):
    """(fan_in, fan_out) of a weight: (out, in) for linear, (out, in/groups, KH, KW) for conv."""
    receptive_field = math.prod(shape[2:])
    return shape[1] * receptive_field, shape[0] * receptive_field


def uniform(shape, bound, dtype=np.float32):
    return _rng.uniform(-bound, bound, size=shape).astype(dtype)


def kaiming_normal(shape, mode="fan_out", dtype=np.float32):
    """Normal with std sqrt(2 / fan), the He et al. (2015) rule for ReLU networks.

    ``fan_out`` (used by torchvision's ResNet for convs) keeps the gradient's
    scale in the backward pass; ``fan_in`` keeps the activations' scale.
    """
    fan_in, fan_out = fans(shape)
    std = math.sqrt(2.0 / (fan_out if mode == "fan_out" else fan_in))
    return (_rng.standard_normal(shape) * std).astype(dtype)


def default_weight(shape, dtype=np.float32):
    """PyTorch's default for Linear and Conv2d: uniform in +-1/sqrt(fan_in) (its kaiming_uniform with a=sqrt(5))."""
    return uniform(shape, 1 / math.sqrt(fans(shape)[0]), dtype)
