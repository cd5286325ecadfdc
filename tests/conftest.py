"""Shared test helpers: devices, tolerances, relative error, conversions to PyTorch.

Tolerances (relative error = max|a - b| / max|b|):
    float64: 1e-10 against PyTorch, 1e-6 against finite differences
    float32: 1e-4 against PyTorch
GPU tests are parametrised with ``device`` and skip cleanly without CuPy or CUDA.
"""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from tinyse.backend import gpu_available, to_device

settings.register_profile(
    "tinyse", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile("tinyse")

# PyTorch is only the reference here, on small tensors: one thread keeps its pool from
# fighting NumPy's BLAS for the cores (several times slower on a busy 2-core machine).
torch.set_num_threads(1)

TORCH_TOLERANCE = {np.float64: 1e-10, np.float32: 1e-4}
GRADCHECK_TOLERANCE = 1e-6

requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
DEVICES = ["cpu", pytest.param("gpu", marks=[requires_gpu, pytest.mark.gpu])]
DTYPES = [np.float64, np.float32]


def rel_error(actual, expected):
    """max |actual - expected| / max |expected| (both moved to NumPy; 0 when both are all zero)."""
    actual = np.asarray(to_device(actual, "cpu"), dtype=np.float64)
    expected = np.asarray(expected.detach().numpy() if hasattr(expected, "detach") else expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    scale = max(np.abs(expected).max(initial=0.0), 1e-30)
    return np.abs(actual - expected).max(initial=0.0) / scale


def random_array(rng, shape, dtype=np.float64, device="cpu"):
    """Standard-normal values of ``shape`` on ``device``."""
    return to_device(rng.standard_normal(shape).astype(dtype), device)


def away_from_zero(array, margin=1e-3):
    """Push values off the kink at 0 (ReLU), so finite differences never straddle it."""
    return np.where(np.abs(array) < margin, np.sign(array + 1e-30) * margin * 2, array)


def distinct_values(rng, shape, dtype=np.float64):
    """Values at least 0.01 apart (no ties, so max pooling has one winner per window)."""
    count = int(np.prod(shape))
    return (rng.permutation(count).reshape(shape) * 0.01 - count * 0.005).astype(dtype)
