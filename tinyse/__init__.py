"""tinyse: Squeeze-and-Excitation networks from scratch, on NumPy (CPU) and CuPy (GPU)."""
import os

from tinyse import functional
from tinyse.backend import gpu_available
from tinyse.gradcheck import gradcheck
from tinyse.memory import keep_freed_memory
from tinyse.summary import summary
from tinyse.tensor import Function, Tensor, is_grad_enabled, no_grad

if os.environ.get("TINYSE_PROFILE", "") not in ("", "0"):
    from tinyse import profile

    profile.enable()

__version__ = "0.1.0"
__all__ = [
    "Function", "Tensor", "functional", "gpu_available", "gradcheck", "is_grad_enabled", "keep_freed_memory", "no_grad",
    "summary",
]
