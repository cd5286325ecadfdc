"""The emulated modules, assembled: cupy, cupy.cuda (.runtime, .compiler), cupy.linalg, cupy.random, cupy.fft, cupyx.

Each is a plain module object holding only what the emulator implements, under CuPy's names, and
a module ``__getattr__`` (PEP 562) for every other name: NotImplementedError when CuPy 14.2.0 has
it, AttributeError when it does not (names.py). ``modules()`` builds them once; install.py puts
them in ``sys.modules``. Building checks that every name the emulator offers is one of CuPy's.
"""
import functools
import types

import numpy as np

from . import cuda, kernels, routines, ufuncs
from .counters import DeviceSynchronized, allow_synchronize
from .names import CUPY_VERSION, NAMES, missing

# What cupy/__init__.py imports from NumPy itself (CuPy 14.2.0: `from numpy import float32` ...), by
# CuPy's name: the dtype classes, dtype helpers and constants are NumPy's own objects in CuPy too.
NUMPY_NAMES = (
    "e", "euler_gamma", "inf", "nan", "newaxis", "pi",  # constants
    "complexfloating", "floating", "generic", "inexact", "integer", "number", "signedinteger", "unsignedinteger",
    "bool_", "bool", "byte", "short", "intc", "int_", "long", "longlong", "intp", "int8", "int16", "int32", "int64",
    "ubyte", "ushort", "uintc", "uint", "ulong", "ulonglong", "uintp", "uint8", "uint16", "uint32", "uint64",
    "half", "single", "double", "float16", "float32", "float64", "csingle", "cdouble", "complex64", "complex128",
    "broadcast_shapes", "promote_types", "dtype", "finfo", "iinfo", "issubdtype", "isdtype", "mintypecode",  # dtypes
    "typename", "index_exp", "ndindex", "s_", "get_printoptions", "set_printoptions", "printoptions", "iterable",
)
FROM_NUMPY = {name: getattr(np, name) for name in NUMPY_NAMES}
FROM_NUMPY.update(float_=np.float64, singlecomplex=np.complex64, cfloat=np.complex128, complex_=np.complex128)
# Constants cupy/__init__.py defines itself.
CUPY_CONSTANTS = {
    "PINF": np.inf, "Inf": np.inf, "Infinity": np.inf, "infty": np.inf, "NINF": -np.inf, "NAN": np.nan,
    "NaN": np.nan, "PZERO": 0.0, "NZERO": -0.0,
}


def strict_module(name, contents, doc):
    """A module holding ``contents``; any other name is refused (see ``names.missing``)."""
    offered = {key for key in contents if not key.startswith("__")}
    not_in_cupy = offered - NAMES[name]
    if not_in_cupy:
        raise AssertionError(f"the emulated {name} offers names CuPy {CUPY_VERSION} lacks: {sorted(not_in_cupy)}")
    module = types.ModuleType(name, doc)
    module.__dict__.update(contents)

    def __getattr__(attribute):
        raise missing(name, attribute)

    module.__getattr__ = __getattr__
    return module


@functools.cache
def modules():
    """{module name: module} for everything the emulator stands in for."""
    header = f"Emulated CuPy {CUPY_VERSION} (tinyse/testing/emulated_cupy): "
    runtime = strict_module("cupy.cuda.runtime", cuda.RUNTIME, header + "the CUDA runtime calls.")
    compiler = strict_module("cupy.cuda.compiler", cuda.COMPILER, header + "the kernel compiler's exception.")
    cuda_module = strict_module(
        "cupy.cuda", {**cuda.CUDA, "runtime": runtime, "compiler": compiler}, header + "devices, streams, memory."
    )
    linalg = strict_module("cupy.linalg", {"matmul": routines.matmul}, header + "linear algebra.")
    random = strict_module("cupy.random", {}, header + "random numbers (none emulated).")
    fft = strict_module("cupy.fft", {}, header + "Fourier transforms (none emulated).")
    cupy = strict_module(
        "cupy",
        {
            **FROM_NUMPY, **CUPY_CONSTANTS, **ufuncs.UFUNCS, **routines.ROUTINES,
            "ufunc": ufuncs.ufunc, "ElementwiseKernel": kernels.ElementwiseKernel,
            "ReductionKernel": kernels.ReductionKernel,
            "cuda": cuda_module, "linalg": linalg, "random": random, "fft": fft, "__version__": CUPY_VERSION,
        },
        header + "NumPy's arithmetic on arrays the host cannot read by accident; see the package docstring.",
    )
    cupyx = strict_module(
        "cupyx",
        {
            "scatter_add": scatter_add, "scatter_max": scatter_max, "scatter_min": scatter_min,
            "allow_synchronize": allow_synchronize, "DeviceSynchronized": DeviceSynchronized,
        },
        header + "cupyx, CuPy's extensions beyond NumPy.",
    )
    return {
        "cupy": cupy, "cupy.cuda": cuda_module, "cupy.cuda.runtime": runtime, "cupy.cuda.compiler": compiler,
        "cupy.linalg": linalg, "cupy.random": random, "cupy.fft": fft, "cupyx": cupyx,
    }


# --- cupyx's scatter functions (cupyx/_scatter.py): CuPy's ufunc.at, where NumPy has np.add.at ------------------
def scatter_add(a, slices, value):
    """a[slices] += value, adding once per occurrence of a repeated index (``cupy.add.at``)."""
    ufuncs.add.at(a, slices, value)


def scatter_max(a, slices, value):
    ufuncs.maximum.at(a, slices, value)


def scatter_min(a, slices, value):
    ufuncs.minimum.at(a, slices, value)
