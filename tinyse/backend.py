"""The one place that decides which array library runs the math.

Every op's ``forward`` and ``backward`` ask ``get_array_module(*arrays)`` for
``xp`` and then write ``xp.exp``, ``xp.zeros`` ... so the same code runs on
NumPy arrays (CPU) and CuPy arrays (GPU). Device names are ``"cpu"`` and
``"gpu"``. No other module imports cupy.
"""
import functools

import numpy as np

try:  # CuPy is optional: ``pip install tinyse[gpu]``.
    import cupy
except ImportError:  # pragma: no cover - depends on the machine
    cupy = None

DEVICES = ("cpu", "gpu")

_GPU_INSTALL_HINT = (
    "install CuPy for your CUDA version, e.g. `pip install cupy-cuda12x` "
    "(or `pip install tinyse[gpu]`), on a machine with an NVIDIA GPU"
)


def gpu_available():
    """True when CuPy is installed and sees at least one CUDA device."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device, broken install
        return False


def _check_gpu():
    if cupy is None:
        raise RuntimeError(f"device 'gpu' needs CuPy, which is not installed: {_GPU_INSTALL_HINT}")
    if not gpu_available():
        raise RuntimeError(
            "device 'gpu' asked for, but CuPy finds no CUDA device "
            "(check `nvidia-smi` and that the CuPy build matches the CUDA driver)"
        )


def check_device(device):
    """Return the device name if valid, else raise ValueError naming the choices."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: choose 'cpu' or 'gpu'")
    return device


def module_for_device(device):
    """``"cpu"`` -> numpy, ``"gpu"`` -> cupy (with a clear error when unavailable)."""
    if check_device(device) == "gpu":
        _check_gpu()
        return cupy
    return np


def is_gpu_array(array):
    return cupy is not None and isinstance(array, cupy.ndarray)


def device_of(array):
    return "gpu" if is_gpu_array(array) else "cpu"


def get_array_module(*arrays):
    """The array module (numpy or cupy) of the given arrays.

    Non-array arguments (Python numbers, None) are ignored. Mixing NumPy and
    CuPy arrays is an error that says which argument lives where, numbering
    the arguments by their position in the call (the ignored ones count).
    """
    where_each = {i: device_of(a) for i, a in enumerate(arrays) if a is not None and hasattr(a, "shape")}
    devices = set(where_each.values())
    if "gpu" in devices:
        if "cpu" in devices:
            where = ", ".join(f"argument {i}: {d}" for i, d in where_each.items())
            raise RuntimeError(
                f"arrays on different devices ({where}); move them with .to('cpu') or .to('gpu') first"
            )
        return cupy
    return np


def to_device(array, device):
    """Copy ``array`` to ``device`` (no copy when it is already there)."""
    if module_for_device(device) is np:
        return cupy.asnumpy(array) if is_gpu_array(array) else np.asarray(array)
    return cupy.asarray(array)


@functools.cache
def elementwise_kernel(in_params, out_params, operation, name):
    """A CuPy ElementwiseKernel, compiled on first use and cached: fused elementwise math on the GPU.

    ``in_params`` / ``out_params`` are CuPy's typed parameter lists (e.g. "T x, T y", "T z");
    ``operation`` is the CUDA C body for one element. Inputs broadcast as in NumPy.
    """
    _check_gpu()
    return cupy.ElementwiseKernel(in_params, out_params, operation, name)
