"""The emulated ``cupy.ndarray``: device memory that the host cannot read by accident.

An ``ndarray`` here keeps its values in a private NumPy array, ``_array``, standing for memory on
the GPU. It is not a NumPy array and not a NumPy subclass: NumPy can reach the values only in the
ways real CuPy allows (CuPy 14.2.0, cupy/_core/core.pyx, ``_ndarray_base``):

    np.asarray(x), np.array(x)        TypeError: ``__array__`` refuses "Implicit conversion to a NumPy
                                      array is not allowed. Please use `.get()` ..." (CuPy's message)
    np.exp(x), np.add(x, y), x + y    NumPy ufuncs call ``__array_ufunc__``, which runs cupy's ufunc of the
                                      same name and returns a device array; a NumPy array among the
                                      operands is a TypeError ("Unsupported type <class 'numpy.ndarray'>")
    np.sum(x), np.concatenate([x, y]) NumPy functions call ``__array_function__`` (NEP 18), which runs
                                      cupy's function of the same name and module, if CuPy has one
    x.get(), cupy.asnumpy(x)          the ways back: device-to-host copies (counted, with their bytes)
    float(x), int(x), bool(x),        work (through ``get``), each a copy back and a host synchronisation
    x.item(), x.tolist(), repr(x)     (counted as ``value_reads``); ``len`` and ``iter`` work as in NumPy
    operator.index(x), range(x)       TypeError: CuPy defines no ``__index__``

Where CuPy differs from NumPy, this follows CuPy: reductions return 0-d device arrays, not NumPy
scalars; ``x[0, 0]`` is a 0-d view; ``astype`` refuses ``casting=``; ``sum`` and friends take only
CuPy's arguments (no ``where=`` or ``initial=``); ``x[...] = numpy_array`` (basic indexing) is a
ValueError ("non-scalar numpy.ndarray cannot be used for fill"), while integer-array indices and
the values assigned through them are copied to the device implicitly (counted), as CuPy does.
Stricter than CuPy, on purpose: an out-of-range integer-array index raises IndexError (CuPy wraps it
around silently, which hides a wrong index).

Attribute names not in CuPy's ``ndarray`` raise AttributeError; CuPy's names that are not
emulated (``data``, ``__cuda_array_interface__``, ``toDlpack`` ...) raise NotImplementedError.
"""
import warnings

import numpy as np

from .counters import counters
from .cuda import Device, default_memory_pool
from .names import missing

# CuPy's dtypes: booleans, integers, floating point and complex numbers (no objects, strings, dates).
SUPPORTED_KINDS = "biufc"
PYTHON_SCALARS = (bool, int, float, complex)


def check_dtype(dtype):
    """The NumPy dtype, or ValueError for one CuPy cannot hold (object, str, datetime ...)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in SUPPORTED_KINDS:
        raise ValueError(f"Unsupported dtype {dtype}")
    return dtype


def wrap(memory, base=None):
    """A device array over ``memory`` (a NumPy array standing for GPU memory); nothing is copied or counted."""
    array = ndarray.__new__(ndarray)
    array._array = memory
    array._base = base
    if memory.flags.owndata:
        default_memory_pool._allocated(array)
    return array


def as_result(value, name=None, sources=()):
    """NumPy's result of an operation on device memory, as device arrays.

    A NumPy scalar becomes a 0-d device array (CuPy's reductions return arrays); tuples and lists are
    converted item by item; other values (shapes, Python numbers) pass. When ``name`` is given, a new
    array counts as one kernel launch named ``name``, and a view of one of ``sources`` (device arrays)
    counts none.
    """
    if isinstance(value, (tuple, list)):
        return type(value)(as_result(v, name, sources) for v in value)
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        return value
    base = next((s for s in sources if np.may_share_memory(value, s._array)), None)
    if name is not None and base is None:
        counters.launch(name)
    return wrap(value, None if base is None else (base if base._base is None else base._base))


def unsupported(value, where):
    """CuPy's TypeError for an operand it cannot take, with what to do when it is a host array."""
    message = f"Unsupported type {type(value)}"
    if isinstance(value, np.ndarray):
        message += (
            f" (a NumPy array, in host memory, passed to {where}: CuPy never copies it implicitly here; "
            f"move it with cupy.asarray first, or bring the device array back with .get())"
        )
    return TypeError(message)


def device_memory(value, where):
    """The memory of a device array operand, or a scalar as it is; TypeError for anything else (as CuPy)."""
    if isinstance(value, ndarray):
        return value._array
    if isinstance(value, PYTHON_SCALARS) or (isinstance(value, np.generic) and value.dtype.kind in SUPPORTED_KINDS):
        return value
    raise unsupported(value, where)


def host_to_device(obj, dtype=None):
    """Copy host data (a NumPy array, a list, a scalar) into new device memory: one counted transfer."""
    # a copy: later changes on the host must not reach the device
    host = np.array(obj, dtype=dtype, copy=True, order="C")
    check_dtype(host.dtype)
    counters.copy_to_device(host.nbytes)
    return wrap(host)


class Flags:
    """``ndarray.flags``: only ``c_contiguous``, ``f_contiguous`` and ``owndata``, as in CuPy."""

    def __init__(self, c_contiguous, f_contiguous, owndata):
        self.c_contiguous, self.f_contiguous, self.owndata = c_contiguous, f_contiguous, owndata

    def __getitem__(self, name):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous, "OWNDATA": self.owndata}[name]

    def __repr__(self):
        return f"  C_CONTIGUOUS : {self.c_contiguous}\n  F_CONTIGUOUS : {self.f_contiguous}\n  OWNDATA : {self.owndata}"


class ndarray:
    """A multi-dimensional array in (emulated) GPU memory: ``cupy.ndarray(shape, dtype=float)``.

    Printed as ``cupy.ndarray`` (``__module__`` is "cupy"), as the real class is; it lives in
    tinyse/testing/emulated_cupy/ndarray.py.
    """

    __module__ = "cupy"
    __slots__ = ("__weakref__", "_array", "_base")
    __array_priority__ = 100
    __hash__ = None  # unhashable, as CuPy's (and NumPy's) arrays

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise missing("cupy.ndarray", "__init__ with memptr or strides")
        self._array = np.empty(shape, dtype=check_dtype(dtype), order=order)  # uninitialised, as in CuPy
        self._base = None
        default_memory_pool._allocated(self)

    def __getattr__(self, name):  # only reached for names this class does not define
        raise missing("cupy.ndarray", name, kind="object")

    # --- what the array is: shape, dtype, layout -------------------------------------------------------
    @property
    def shape(self):
        return self._array.shape

    @shape.setter
    def shape(self, new_shape):  # in place, never a copy (an error when a copy would be needed)
        self._array.shape = new_shape

    @property
    def dtype(self):
        return self._array.dtype

    @property
    def ndim(self):
        return self._array.ndim

    @property
    def size(self):
        return self._array.size

    @property
    def itemsize(self):
        return self._array.itemsize

    @property
    def nbytes(self):
        return self._array.nbytes

    @property
    def strides(self):
        return self._array.strides

    @property
    def flags(self):
        flags = self._array.flags
        return Flags(flags.c_contiguous, flags.f_contiguous, self._base is None)

    @property
    def base(self):
        return self._base

    @property
    def device(self):
        return Device(0)

    @property
    def T(self):
        return self.transpose()

    @property
    def mT(self):
        if self.ndim < 2:
            raise ValueError("matrix transpose with ndim < 2 is undefined")
        return self.swapaxes(-1, -2)

    @property
    def real(self):
        return as_result(self._array.real, "real", (self,))

    @real.setter
    def real(self, value):
        self.real[...] = value

    @property
    def imag(self):
        return as_result(self._array.imag, "imag", (self,))

    @imag.setter
    def imag(self, value):
        self.imag[...] = value

    # --- the ways between host and device ---------------------------------------------------------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        """A copy in host memory (a NumPy array): one device-to-host transfer, and a wait when ``blocking``."""
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained fromcupy.ndarray")  # sic, CuPy's message
            if out.dtype != self.dtype:
                raise TypeError(f"{out.dtype} array cannot be obtained from {self.dtype} array")
            if out.shape != self.shape:
                raise ValueError(f"Shape mismatch. Expected shape: {self.shape}, actual shape: {out.shape}")
            out[...] = self._array
            counters.copy_to_host(self.nbytes, blocking)
            return out
        counters.copy_to_host(self.nbytes, blocking)
        return np.array(self._array, order=order.upper(), copy=True)

    def set(self, arr, stream=None):
        """Copy the NumPy array ``arr`` (same shape and dtype) into this array: one host-to-device transfer."""
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        counters.copy_to_device(arr.nbytes)
        self._array[...] = arr

    def _read(self):
        """The values, read back to the host to become Python objects: a counted copy, wait and value read."""
        counters.value_read()
        return self.get()

    def item(self):
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self._read().item()

    def tolist(self):
        return self._read().tolist()

    def tobytes(self, order="C"):
        return self._read().tobytes(order)

    def __int__(self):
        return int(self._read())

    def __float__(self):
        return float(self._read())

    def __complex__(self):
        return complex(self._read())

    def __bool__(self):
        if self.size == 0:
            warnings.warn(
                "The truth value of an empty array is ambiguous. Returning False, but in future this will result "
                "in an error. Use `array.size > 0` to check that an array is not empty.",
                DeprecationWarning,
                stacklevel=2,
            )
            return False
        if self.size == 1:
            return bool(self._read())
        raise ValueError("The truth value of an array with more than one element is ambiguous. Use a.any() or a.all()")

    def __repr__(self):
        return repr(self._read())

    def __str__(self):
        return str(self._read())

    def __format__(self, format_spec):
        return format(self._read(), format_spec)

    def __array__(self, dtype=None, copy=None):
        raise TypeError(  # CuPy's words (cupy/_core/core.pyx)
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array "
            "explicitly."
        )

    def __reduce__(self):  # pickling copies the values to the host, as CuPy's does
        return _routines.array, (self.get(order="A"),)

    # --- NumPy's protocols: its ufuncs and functions run CuPy's -----------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """CuPy's rule: run cupy's ufunc of the same name (its method ``method``); NotImplemented if none."""
        if "out" in kwargs:
            out = kwargs["out"]
            if len(out) != 1:
                raise ValueError("The 'out' parameter must have exactly one array value")
            kwargs["out"] = out[0]
        if method not in ("__call__", "outer", "at", "reduce", "accumulate", "reduceat"):
            return NotImplemented
        try:
            function = getattr(_namespace.modules()["cupy"], ufunc.__name__)
            if method != "__call__":
                function = getattr(function, method)
        except AttributeError:
            return NotImplemented
        if ufunc.__name__ in ("greater", "greater_equal", "less", "less_equal", "equal", "not_equal"):
            # CuPy's workaround for numpy/numpy#12142: a NumPy 0-d array compared with a device array is a scalar
            inputs = [x.item() if isinstance(x, np.ndarray) and x.ndim == 0 else x for x in inputs]
        return function(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        """CuPy's rule: run the function of the same name in the matching cupy module; NotImplemented if none."""
        module = _namespace.modules()["cupy"]
        try:
            for part in func.__module__.split(".")[1:]:  # numpy.linalg.norm -> cupy.linalg.norm
                module = getattr(module, part)
            function = getattr(module, func.__name__)
        except AttributeError:
            return NotImplemented
        if not all(issubclass(t, (ndarray, np.ndarray)) for t in types):
            return NotImplemented
        return function(*args, **kwargs)

    # --- indexing ----------------------------------------------------------------------------------------
    def _index(self, index):
        """The index for the NumPy memory, and whether it has a boolean mask (whose size CuPy must read).

        Device index arrays are used in place; NumPy arrays and lists are copied to the device first, as
        CuPy does (``core.array``), and counted.
        """
        items = index if isinstance(index, tuple) else (index,)
        converted, has_mask = [], False
        for item in items:
            if isinstance(item, ndarray):
                has_mask |= item.dtype == np.bool_
                item = item._array
            elif isinstance(item, (np.ndarray, list)):
                item = host_to_device(item)._array
                has_mask |= item.dtype == np.bool_
            converted.append(item)
        return (tuple(converted) if isinstance(index, tuple) else converted[0]), has_mask

    def __getitem__(self, index):
        memory_index, has_mask = self._index(index)
        if has_mask:  # the result's size is the mask's count: CuPy scans the mask and reads the count back first
            counters.launch("scan")
            counters.sync()
        result = self._array[memory_index]
        if isinstance(result, np.generic):  # an element: CuPy returns a 0-d view, not a scalar
            result = self._array[(*memory_index, Ellipsis) if isinstance(memory_index, tuple) else (memory_index, ...)]
        return as_result(result, "getitem", (self,))

    def __setitem__(self, index, value):
        memory_index, has_mask = self._index(index)
        if has_mask:  # CuPy scans the mask and reads its count back (_prepare_mask_indexing_single: int(...))
            counters.launch("scan")
            counters.sync()
        items = memory_index if isinstance(memory_index, tuple) else (memory_index,)
        advanced = any(isinstance(item, np.ndarray) for item in items)
        if isinstance(value, ndarray):
            value = value._array
        elif isinstance(value, (np.ndarray, list, tuple)):
            if advanced:  # CuPy copies the values to the device (core.array)
                value = host_to_device(value, self.dtype)._array
            elif np.ndim(value) > 0:  # CuPy's basic indexing fills with a scalar only
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            else:
                value = np.asarray(value)[()]
        else:
            value = device_memory(value, "ndarray.__setitem__")
        self._array[memory_index] = value
        counters.launch("setitem")

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    # --- copies, casts, views -------------------------------------------------------------------------
    def copy(self, order="C"):
        return as_result(self._array.copy(order=order), "copy")

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if casting is not None:
            raise TypeError("casting is not supported yet")
        if subok is not None:
            raise TypeError("subok is not supported yet")
        dtype = check_dtype(dtype)
        if dtype == self.dtype and not copy:
            return self
        return as_result(self._array.astype(dtype, order=order or "K", copy=True), "astype")

    def view(self, dtype=None, type=None):
        if type is not None:
            raise missing("cupy.ndarray", "view with type=")
        view = self._array.view() if dtype is None else self._array.view(check_dtype(dtype))
        return wrap(view, self if self._base is None else self._base)

    def fill(self, value):
        if isinstance(value, ndarray):
            if value.shape != ():
                raise ValueError("non-scalar cupy.ndarray cannot be used for fill")
            value = value._array
        elif np.ndim(value) > 0:
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        self._array.fill(value)
        counters.launch("fill")

    def reshape(self, *shape, order="C", copy=None):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return as_result(self._array.reshape(shape, order=order, copy=copy), "reshape", (self,))

    def transpose(self, *axes):
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
            axes = axes[0]
        return as_result(self._array.transpose(axes or None), "transpose", (self,))

    def swapaxes(self, axis1, axis2):
        return as_result(self._array.swapaxes(axis1, axis2), "swapaxes", (self,))

    def ravel(self, order="C"):
        return as_result(self._array.ravel(order), "ravel", (self,))

    def flatten(self, order="C"):
        return as_result(self._array.flatten(order), "flatten")

    def squeeze(self, axis=None):
        return as_result(self._array.squeeze(axis), "squeeze", (self,))

    def diagonal(self, offset=0, axis1=0, axis2=1):
        return as_result(self._array.diagonal(offset, axis1, axis2), "diagonal", (self,))

    # --- reductions: one kernel, a 0-d device array for a full reduction ----------------------------------
    def _launch(self, name, out, **kwargs):
        """One kernel: NumPy's function ``name`` on the memory, into ``out`` when given (None arguments dropped)."""
        if out is not None:
            if not isinstance(out, ndarray):
                raise TypeError("Output arguments type must be cupy.ndarray")
            kwargs["out"] = out._array
        kwargs = {k: v for k, v in kwargs.items() if v is not None or k == "axis"}
        result = getattr(np, name)(self._array, **kwargs)
        if out is not None:
            counters.launch(name)
            return out
        return as_result(result, name)

    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        return self._launch("sum", out, axis=axis, dtype=dtype, keepdims=keepdims)

    def prod(self, axis=None, dtype=None, out=None, keepdims=False):
        return self._launch("prod", out, axis=axis, dtype=dtype, keepdims=keepdims)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        return self._launch("mean", out, axis=axis, dtype=dtype, keepdims=keepdims)

    def var(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return self._launch("var", out, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims)

    def std(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return self._launch("std", out, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims)

    def max(self, axis=None, out=None, keepdims=False):
        return self._launch("max", out, axis=axis, keepdims=keepdims)

    def min(self, axis=None, out=None, keepdims=False):
        return self._launch("min", out, axis=axis, keepdims=keepdims)

    def ptp(self, axis=None, out=None, keepdims=False):
        return self._launch("ptp", out, axis=axis, keepdims=keepdims)

    def all(self, axis=None, out=None, keepdims=False):
        return self._launch("all", out, axis=axis, keepdims=keepdims)

    def any(self, axis=None, out=None, keepdims=False):
        return self._launch("any", out, axis=axis, keepdims=keepdims)

    def argmax(self, axis=None, out=None, dtype=None, keepdims=False):
        result = self._launch("argmax", out, axis=axis, keepdims=keepdims)
        return result if dtype is None else result.astype(dtype, copy=False)

    def argmin(self, axis=None, out=None, dtype=None, keepdims=False):
        result = self._launch("argmin", out, axis=axis, keepdims=keepdims)
        return result if dtype is None else result.astype(dtype, copy=False)

    def cumsum(self, axis=None, dtype=None, out=None):
        return self._launch("cumsum", out, axis=axis, dtype=dtype)

    def cumprod(self, axis=None, dtype=None, out=None):
        return self._launch("cumprod", out, axis=axis, dtype=dtype)

    def trace(self, offset=0, axis1=0, axis2=1, dtype=None, out=None):
        return self._launch("trace", out, offset=offset, axis1=axis1, axis2=axis2, dtype=dtype)

    # --- elementwise and other methods ---------------------------------------------------------------------
    def clip(self, min=None, max=None, out=None):  # CuPy's argument names
        if min is None and max is None:
            raise ValueError("array_clip: must set either max or min")
        low, high = (None if b is None else device_memory(b, "ndarray.clip") for b in (min, max))
        return self._launch("clip", out, min=low, max=high)

    def round(self, decimals=0, out=None):
        return self._launch("round", out, decimals=decimals)

    def conj(self):
        return _ufuncs.conjugate(self)

    def conjugate(self):
        return _ufuncs.conjugate(self)

    def dot(self, b, out=None):
        return _routines.dot(self, b, out)

    def take(self, indices, axis=None, out=None):
        return _routines.take(self, indices, axis, out)

    def repeat(self, repeats, axis=None):
        return as_result(self._array.repeat(device_memory(repeats, "ndarray.repeat"), axis), "repeat")

    def sort(self, axis=-1, kind=None):
        self._array.sort(axis=axis)
        counters.launch("sort")

    def argsort(self, axis=-1, kind=None):
        return as_result(self._array.argsort(axis=axis), "argsort")

    def nonzero(self):
        counters.sync()  # the number of nonzero entries is read back to size the result
        return as_result(self._array.nonzero(), "nonzero")

    # --- operators: CuPy's ufuncs (``x + y`` is ``cupy.add(x, y)``) -------------------------------------------
    def _binary(self, function, other, reflected=False):
        if not isinstance(other, ndarray) and _defers_to(other):
            return NotImplemented
        return function(other, self) if reflected else function(self, other)

    def __add__(self, other):
        return self._binary(_ufuncs.add, other)

    def __radd__(self, other):
        return self._binary(_ufuncs.add, other, reflected=True)

    def __sub__(self, other):
        return self._binary(_ufuncs.subtract, other)

    def __rsub__(self, other):
        return self._binary(_ufuncs.subtract, other, reflected=True)

    def __mul__(self, other):
        return self._binary(_ufuncs.multiply, other)

    def __rmul__(self, other):
        return self._binary(_ufuncs.multiply, other, reflected=True)

    def __truediv__(self, other):
        return self._binary(_ufuncs.true_divide, other)

    def __rtruediv__(self, other):
        return self._binary(_ufuncs.true_divide, other, reflected=True)

    def __floordiv__(self, other):
        return self._binary(_ufuncs.floor_divide, other)

    def __rfloordiv__(self, other):
        return self._binary(_ufuncs.floor_divide, other, reflected=True)

    def __mod__(self, other):
        return self._binary(_ufuncs.remainder, other)

    def __rmod__(self, other):
        return self._binary(_ufuncs.remainder, other, reflected=True)

    def __divmod__(self, other):
        return self._binary(_ufuncs.divmod, other)

    def __rdivmod__(self, other):
        return self._binary(_ufuncs.divmod, other, reflected=True)

    def __pow__(self, other, modulo=None):
        # CuPy's shortcuts (core.pyx __pow__): x ** 2 is square, x ** 0.5 sqrt, x ** -1.0 reciprocal
        if (type(other) is int and other == 2) or (type(other) is float and other == 2.0):
            return _ufuncs.square(self)
        if type(other) is float and other == 0.5:
            return _ufuncs.sqrt(self)
        if type(other) is float and other == -1.0 and self.dtype.kind in "fc":
            return _ufuncs.reciprocal(self)
        return self._binary(_ufuncs.power, other)

    def __rpow__(self, other):
        return self._binary(_ufuncs.power, other, reflected=True)

    def __matmul__(self, other):
        return self._binary(_routines.matmul, other)

    def __rmatmul__(self, other):
        return self._binary(_routines.matmul, other, reflected=True)

    def __and__(self, other):
        return self._binary(_ufuncs.bitwise_and, other)

    def __rand__(self, other):
        return self._binary(_ufuncs.bitwise_and, other, reflected=True)

    def __or__(self, other):
        return self._binary(_ufuncs.bitwise_or, other)

    def __ror__(self, other):
        return self._binary(_ufuncs.bitwise_or, other, reflected=True)

    def __xor__(self, other):
        return self._binary(_ufuncs.bitwise_xor, other)

    def __rxor__(self, other):
        return self._binary(_ufuncs.bitwise_xor, other, reflected=True)

    def __lshift__(self, other):
        return self._binary(_ufuncs.left_shift, other)

    def __rlshift__(self, other):
        return self._binary(_ufuncs.left_shift, other, reflected=True)

    def __rshift__(self, other):
        return self._binary(_ufuncs.right_shift, other)

    def __rrshift__(self, other):
        return self._binary(_ufuncs.right_shift, other, reflected=True)

    def __iadd__(self, other):
        return _ufuncs.add(self, other, out=self)

    def __isub__(self, other):
        return _ufuncs.subtract(self, other, out=self)

    def __imul__(self, other):
        return _ufuncs.multiply(self, other, out=self)

    def __itruediv__(self, other):
        return _ufuncs.true_divide(self, other, out=self)

    def __ifloordiv__(self, other):
        return _ufuncs.floor_divide(self, other, out=self)

    def __imod__(self, other):
        return _ufuncs.remainder(self, other, out=self)

    def __ipow__(self, other):
        return _ufuncs.power(self, other, out=self)

    def __iand__(self, other):
        return _ufuncs.bitwise_and(self, other, out=self)

    def __ior__(self, other):
        return _ufuncs.bitwise_or(self, other, out=self)

    def __ixor__(self, other):
        return _ufuncs.bitwise_xor(self, other, out=self)

    def __ilshift__(self, other):
        return _ufuncs.left_shift(self, other, out=self)

    def __irshift__(self, other):
        return _ufuncs.right_shift(self, other, out=self)

    def __neg__(self):
        return _ufuncs.negative(self)

    def __pos__(self):
        return _ufuncs.positive(self)

    def __abs__(self):
        return _ufuncs.absolute(self)

    def __invert__(self):
        return _ufuncs.invert(self)

    def _compare(self, function, other):
        if not isinstance(other, ndarray) and _defers_to(other):
            return NotImplemented
        if isinstance(other, np.ndarray) and other.ndim == 0:
            other = other.item()  # CuPy's workaround for NumPy 0-d arrays in comparisons
        return function(self, other)

    def __lt__(self, other):
        return self._compare(_ufuncs.less, other)

    def __le__(self, other):
        return self._compare(_ufuncs.less_equal, other)

    def __gt__(self, other):
        return self._compare(_ufuncs.greater, other)

    def __ge__(self, other):
        return self._compare(_ufuncs.greater_equal, other)

    def __eq__(self, other):
        if other is None or type(other).__eq__ is object.__eq__:
            return as_result(np.zeros(self.shape, dtype=bool), "equal")  # never equal to an element
        return self._compare(_ufuncs.equal, other)

    def __ne__(self, other):
        if other is None or type(other).__eq__ is object.__eq__:
            return as_result(np.ones(self.shape, dtype=bool), "not_equal")
        return self._compare(_ufuncs.not_equal, other)


def _defers_to(other):
    """CuPy's ``_should_use_rop``: let ``other`` handle the operator when it opts out of ufuncs or outranks us."""
    other_ufunc = getattr(other, "__array_ufunc__", ndarray)
    if other_ufunc is not ndarray:
        return other_ufunc is None
    return ndarray.__array_priority__ < getattr(other, "__array_priority__", 0)


# Used at call time only: these modules import this one (the array type), so they come last.
from . import namespace as _namespace  # noqa: E402
from . import routines as _routines  # noqa: E402
from . import ufuncs as _ufuncs  # noqa: E402
