"""CuPy's ufuncs (``cupy.exp``, ``cupy.add`` ...): NumPy's arithmetic under CuPy's rules (CuPy 14.2.0).

One emulated ``ufunc`` per NumPy ufunc that CuPy also has under that name (``cupy.matmul`` is not
one: in CuPy it is a generalized ufunc, see routines.py). Each call is one kernel launch. CuPy's
rules, from cupy/_core/_kernel.pyx (``ufunc.__call__``, ``_preprocess_args``):

    operands          device arrays, Python scalars (bool, int, float, complex) and NumPy scalars;
                      anything else, a NumPy array above all, is TypeError "Unsupported type ..."
    out=              a device array (TypeError otherwise); a tuple for several outputs
    keywords          only out, dtype, casting (default 'same_kind'); others are TypeError
                      "Wrong arguments ..." (NumPy's where=, order=, subok= do not exist in CuPy)
    result            always a device array, 0-d where NumPy would give a scalar
    dtypes            NumPy 2's promotion rules (NEP 50), which CuPy 14 follows: a Python float
                      keeps a float32 array float32; a NumPy float64 scalar makes it float64

The methods, as in CuPy (the rest raise NotImplementedError, as CuPy itself does):
    outer             every ufunc
    at                add, subtract, maximum, minimum, bitwise_and, bitwise_or, bitwise_xor
                      (CuPy's scatter operations; NumPy's other ``.at`` methods do not exist there)
    reduce, accumulate  add and multiply only (CuPy runs ``sum``/``prod``, ``cumsum``/``cumprod``)
    reduceat          add only
"""
import numpy as np

from .counters import counters
from .names import NAMES, missing
from .ndarray import as_result, device_memory, host_to_device, ndarray

# CuPy's ufuncs with a scatter operation (``scatter_op=`` in cupy/_core/_routines_math.pyx,
# _routines_binary.pyx and cupy/_math/misc.py): the only ones with ``.at``.
SCATTER_UFUNCS = {"add", "subtract", "maximum", "minimum", "bitwise_and", "bitwise_or", "bitwise_xor"}
# Names that are NumPy ufuncs but not CuPy ufuncs: cupy.matmul is a _GUFunc (cupy/linalg/_product.py).
NOT_UFUNCS_IN_CUPY = {"matmul"}


class ufunc:
    """A CuPy ufunc: ``cupy.exp(x)``, ``cupy.add(x, y, out=z)``. Its ``name`` is CuPy's: "cupy_exp"."""

    __module__ = "cupy"

    def __init__(self, numpy_ufunc):
        self._numpy = numpy_ufunc
        self.name = self.__name__ = "cupy_" + numpy_ufunc.__name__
        self.nin, self.nout, self.nargs = numpy_ufunc.nin, numpy_ufunc.nout, numpy_ufunc.nin + numpy_ufunc.nout

    def __repr__(self):
        return f"<ufunc {self.name!r}>"

    def __getattr__(self, name):
        raise missing("cupy.ufunc", name, kind="object")

    @property
    def types(self):
        return self._numpy.types

    def __call__(self, *args, out=None, dtype=None, casting="same_kind", _where=None, **kwargs):
        if kwargs:
            raise TypeError(f"Wrong arguments {kwargs}")
        if not self.nin <= len(args) <= self.nargs:
            raise TypeError(
                f"Wrong number of arguments for {self.name!r}. It must be either {self.nin} or {self.nargs} "
                f"(with outputs), but given {len(args)}."
            )
        inputs = [device_memory(a, f"cupy.{self._numpy.__name__}") for a in args[: self.nin]]
        outs = list(args[self.nin :])
        if out is not None:
            if outs:
                raise ValueError("Cannot specify 'out' as both a positional and keyword argument")
            outs = list(out) if isinstance(out, tuple) else [out]
        if not all(isinstance(o, ndarray) for o in outs):
            raise TypeError("Output arguments type must be cupy.ndarray")
        options = {"casting": casting}
        if dtype is not None:
            options["dtype"] = dtype
        if _where is not None:
            options["where"] = device_memory(_where, f"cupy.{self._numpy.__name__}")
        if outs:
            options["out"] = tuple(o._array for o in outs)
        result = self._numpy(*inputs, **options)
        counters.launch(self.name)
        if outs:
            return outs[0] if self.nout == 1 else tuple(outs)
        return as_result(result)

    # --- methods ---
    def outer(self, A, B, **kwargs):
        A, B = _to_device(A), _to_device(B)  # CuPy: core.array(A), which copies host data
        A = A.reshape(A.shape + (1,) * B.ndim)
        B = B.reshape((1,) * A.ndim + B.shape)
        return self(A, B, **kwargs)

    def at(self, a, indices, b=None):
        if self._numpy.__name__ not in SCATTER_UFUNCS:
            raise NotImplementedError(f"`{self.name}.at` is not supported yet")  # CuPy's message
        memory_index, _ = a._index(indices)
        if b is not None:
            b = b.astype(a.dtype, copy=False)._array if isinstance(b, ndarray) else host_to_device(b, a.dtype)._array
        self._numpy.at(a._array, memory_index, b)
        counters.launch(f"{self.name}.at")

    def reduce(self, array, axis=0, dtype=None, out=None, keepdims=False):
        if self._numpy is np.add:
            return array.sum(axis, dtype, out, keepdims)
        if self._numpy is np.multiply:
            return array.prod(axis, dtype, out, keepdims)
        raise NotImplementedError(f"`{self.name}.reduce` is not supported yet")

    def accumulate(self, array, axis=0, dtype=None, out=None):
        if self._numpy is np.add:
            return array.cumsum(axis, dtype, out)
        if self._numpy is np.multiply:
            return array.cumprod(axis, dtype, out)
        raise NotImplementedError(f"`{self.name}.accumulate` is not supported yet")

    def reduceat(self, array, indices, axis=0, dtype=None, out=None):
        if self._numpy is not np.add:
            raise NotImplementedError(f"`{self.name}.reduceat` is not supported yet")
        if out is not None:
            raise missing("cupy.ufunc", "reduceat with out=")
        indices = indices._array if isinstance(indices, ndarray) else np.asarray(indices)
        return as_result(np.add.reduceat(array._array, indices, axis=axis, dtype=dtype), "cupy_add.reduceat")


def _to_device(value):
    return value if isinstance(value, ndarray) else host_to_device(value)


def _make_ufuncs():
    """{name: ufunc} for CuPy's names that are NumPy ufuncs; aliases (abs, absolute) share one object."""
    made, by_numpy = {}, {}
    for name in sorted(NAMES["cupy"] - NOT_UFUNCS_IN_CUPY):
        numpy_ufunc = getattr(np, name, None)
        if isinstance(numpy_ufunc, np.ufunc):
            made[name] = by_numpy.setdefault(numpy_ufunc, ufunc(numpy_ufunc))
    return made


UFUNCS = _make_ufuncs()
# ufuncs.add, ufuncs.exp ... (what ndarray's operators call). Among them abs, divmod and pow hide Python's
# built-ins of those names in this module, which therefore never uses them.
globals().update(UFUNCS)
