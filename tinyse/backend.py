"""The one place that decides which array library runs the math.

Every op's ``forward`` and ``backward`` ask ``get_array_module(*arrays)`` for
``xp`` and then write ``xp.exp``, ``xp.zeros`` ... so the same code runs on
NumPy arrays (CPU) and CuPy arrays (GPU). Device names are ``"cpu"`` and
``"gpu"``. No other module imports cupy.
"""
import functools
import re

import numpy as np

try:  # CuPy is optional: ``pip install -e '.[gpu]'``.
    import cupy

    _cupy_import_error = None
except ImportError as error:  # pragma: no cover - depends on the machine
    cupy = None
    # not installed (ModuleNotFoundError for "cupy" itself), or installed but failing inside its import
    _cupy_import_error = None if error.name == "cupy" else error

DEVICES = ("cpu", "gpu")

# CuPy compiles every kernel with NVRTC and multiplies matrices with cuBLAS: both come with the CUDA toolkit,
# not with the driver. The ``ctk`` extra of CuPy 14's wheels brings them from PyPI (cuda-toolkit 12.* or 13.*).
_GPU_INSTALL_HINT = (
    "install CuPy with the CUDA libraries it needs, e.g. `pip install 'cupy-cuda12x[ctk]'` "
    "(or `pip install -e '.[gpu]'`; `cupy-cuda13x[ctk]` for CUDA 13), on a machine with an NVIDIA GPU"
)
# What a missing CUDA library looks like: CuPy 14 finds its libraries with cuda-pathfinder
# (DynamicLibNotFoundError, a RuntimeError), older CuPy dlopens them (OSError, ImportError); NVRTC
# without its headers fails to compile (CompileException).
_MISSING_LIBRARY = re.compile(r"nvrtc|cublas|cudart|libcu|cuda_fp16|cuda_runtime|CUDA_PATH|CUDA_HOME", re.IGNORECASE)
_MISSING_LIBRARY_ERRORS = ("CompileException", "DynamicLibNotFoundError")


def gpu_available():
    """True when CuPy is installed, sees a CUDA device, and has run a small kernel and a matrix product there."""
    return gpu_problem() is None


def gpu_problem():
    """None when device "gpu" works, else why not: the message ``module_for_device("gpu")`` raises.

    The first call with a CUDA device runs a tiny ElementwiseKernel and a small matrix product on it (about
    a second: NVRTC compiles the kernel), so that a missing NVRTC or cuBLAS (a machine with the driver but no
    CUDA toolkit) shows now, with how to install it, not at the first layer of a model. The answer is kept.
    """
    if cupy is None and _cupy_import_error is not None:
        return f"device 'gpu' needs CuPy, which failed to import ({_describe(_cupy_import_error)}): {_GPU_INSTALL_HINT}"
    if cupy is None:
        return f"device 'gpu' needs CuPy, which is not installed: {_GPU_INSTALL_HINT}"
    return _probe(cupy)


@functools.cache
def _probe(cupy_module):
    """``gpu_problem`` for one CuPy module (a test swaps the module: each gets its own answer)."""
    try:
        devices = cupy_module.cuda.runtime.getDeviceCount()
    except Exception:  # no driver, no device, broken install
        devices = 0
    if devices <= 0:
        return ("device 'gpu' asked for, but CuPy finds no CUDA device "
                "(check `nvidia-smi` and that the CuPy build matches the CUDA driver)")
    try:
        _run_a_kernel_and_a_matmul(cupy_module)
    except Exception as error:
        what = _describe(error)
        if _is_missing_library(error):
            return (f"device 'gpu': CuPy sees a CUDA device but cannot run a kernel on it, a CUDA library is "
                    f"missing ({what}). CuPy compiles its kernels with NVRTC and multiplies matrices with "
                    f"cuBLAS, which come with the CUDA toolkit, not with the driver: {_GPU_INSTALL_HINT}; or "
                    "install the CUDA toolkit and set CUDA_PATH")
        return f"device 'gpu': CuPy sees a CUDA device but a small kernel failed there ({what})"
    return None


def _run_a_kernel_and_a_matmul(cupy_module):
    """y = 2x by an ElementwiseKernel (NVRTC), then y @ x (cuBLAS), read back and checked (2x2, float32)."""
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    double = cupy_module.ElementwiseKernel("T x", "T y", "y = x + x", "tinyse_gpu_check")
    on_device = cupy_module.asarray(x)
    doubled = double(on_device)  # NVRTC compiles the kernel at its first call
    product = cupy_module.matmul(doubled, on_device)  # cuBLAS
    product = cupy_module.asnumpy(product)  # waits for the device: an error of the queued work shows here
    if not np.array_equal(product, (2 * x) @ x):
        raise RuntimeError(f"wrong result: {product.tolist()} for {((2 * x) @ x).tolist()}")


def _describe(error):
    """"TypeName: the first line of the message"."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _is_missing_library(error):
    """Whether ``error`` (or an error it was raised from) says a CUDA library or header is missing."""
    while error is not None:
        if isinstance(error, (ImportError, OSError)) or type(error).__name__ in _MISSING_LIBRARY_ERRORS:
            return True
        if _MISSING_LIBRARY.search(str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


def _check_gpu():
    problem = gpu_problem()
    if problem is not None:
        raise RuntimeError(problem)


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


@functools.cache
def reduction_kernel(in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name,
                     reduce_type=None, preamble=""):
    """A CuPy ReductionKernel, compiled on first use and cached: a map, then a sum (or other reduction) in one kernel.

    ``map_expr`` gives each input element's value (e.g. "x * x"), ``reduce_expr`` combines two of them
    ("a + b"), ``post_map_expr`` writes the output(s) from the result ``a`` ("y = a"); call it with
    ``axis=`` the axes to reduce. Inputs broadcast as in NumPy. ``reduce_type`` is the C type of the
    values combined (default the first output's), for example a struct that ``preamble`` defines.
    """
    _check_gpu()
    return cupy.ReductionKernel(in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name,
                                reduce_type=reduce_type, preamble=preamble)
