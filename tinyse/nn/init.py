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


def whitening_filters(images, out_channels, kernel_size, eps=5e-4):
    """Conv filters that whiten the input's patches (Jordan 2024's first layer), from the images themselves.

    images: (N, C, H, W) floats, normalised as the network sees them. Every kernel_size x kernel_size
    patch is a vector p of C * k * k numbers; with the patch covariance E[p p^T] = V diag(lam) V^T
    (eigenvalues lam, largest first), the filters are +v_i / sqrt(lam_i + eps) and -v_i / sqrt(lam_i + eps)
    for the out_channels / 2 leading directions v_i: each filter's output has variance about 1 and
    the outputs are uncorrelated, and a ReLU after them keeps both signs of each direction.
    Returns (out_channels, C, k, k) float32.
    """
    n, channels, height, width = images.shape
    dim = channels * kernel_size * kernel_size
    if out_channels % 2 or not 0 < out_channels // 2 <= dim:
        raise ValueError(f"whitening_filters: out_channels must be even and at most 2 * {dim} (the patch size "
                         f"C * k * k), got {out_channels}")
    if height < kernel_size or width < kernel_size:
        raise ValueError(f"whitening_filters: images {images.shape} are smaller than the "
                         f"{kernel_size}x{kernel_size} kernel")
    covariance = np.zeros((dim, dim))
    for start in range(0, n, 500):  # patches of 500 images at a time: (500 * positions, dim)
        windows = np.lib.stride_tricks.sliding_window_view(images[start : start + 500], (kernel_size, kernel_size),
                                                           axis=(2, 3))  # (B, C, H', W', k, k)
        patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, dim).astype(np.float64)
        covariance += patches.T @ patches
    positions = (height - kernel_size + 1) * (width - kernel_size + 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance / (n * positions))  # ascending
    leading = np.arange(dim - 1, dim - 1 - out_channels // 2, -1)  # the largest first
    filters = eigenvectors[:, leading].T / np.sqrt(eigenvalues[leading, None] + eps)  # (out / 2, dim)
    filters = np.concatenate([filters, -filters]).reshape(out_channels, channels, kernel_size, kernel_size)
    return filters.astype(np.float32)
