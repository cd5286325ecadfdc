"""CuPy's functions other than ufuncs: creation, moving data, shapes, joins, reductions, products.

Each takes CuPy 14.2.0's arguments and treats a NumPy (host) array as that CuPy function does,
which is one of three ways (read in CuPy's source, file named on each group below):

    refuse     the work is a kernel or a Cython function typed for device arrays: a NumPy array is
               a TypeError (matmul, tensordot, concatenate, stack, where, broadcast_to, pad ...)
    method     CuPy's function calls the array's method (``cupy.sum(a)`` is ``a.sum()``): a NumPy
               array runs NumPy's method, on the host, and nothing is copied (sum, reshape, transpose,
               clip, argmax ...)
    copy       CuPy calls ``cupy.asarray`` on it: a host-to-device copy, counted (asarray, array,
               einsum, atleast_1d ...)

Launches: a routine that makes a new array counts one kernel launch; one that returns a view
counts none; ``empty`` and ``empty_like`` count none (allocation only).
"""
import builtins

import numpy as np

from . import ufuncs
from .counters import counters
from .cuda import default_memory_pool, default_pinned_memory_pool
from .ndarray import as_result, check_dtype, device_memory, host_to_device, ndarray, unsupported, wrap


def _memory(array, where):
    """The memory of a device array argument; TypeError for anything else (a 'refuse' routine)."""
    if not isinstance(array, ndarray):
        raise unsupported(array, where)
    return array._array


def _new(memory, name):
    """A new device array from freshly computed NumPy memory: one launch named ``name``."""
    counters.launch(name)
    return wrap(memory)


# --- creation (cupy/_creation/basic.py, ranges.py) ----------------------------------------------------------
def empty(shape, dtype=float, order="C"):
    return wrap(np.empty(shape, dtype=check_dtype(dtype), order=order))  # allocation only: no kernel


def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):
    """order "K" (the default) lays the new array out in memory as ``prototype`` is, as CuPy does: the
    empty_like of a transposed view is itself transposed in memory."""
    memory = _memory(prototype, "cupy.empty_like")
    dtype = prototype.dtype if dtype is None else check_dtype(dtype)
    return wrap(np.empty_like(memory, dtype=dtype, order=order, shape=shape))


def zeros(shape, dtype=float, order="C"):
    return _new(np.zeros(shape, dtype=check_dtype(dtype), order=order), "zeros")  # CuPy: a memset


def zeros_like(a, dtype=None, order="K", subok=None, shape=None):
    return zeros(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def ones(shape, dtype=float, order="C"):
    return _new(np.ones(shape, dtype=check_dtype(dtype), order=order), "ones")


def ones_like(a, dtype=None, order="K", subok=None, shape=None):
    return ones(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def full(shape, fill_value, dtype=None, order="C"):
    if isinstance(fill_value, ndarray):
        dtype = fill_value.dtype if dtype is None else dtype
        fill_value = fill_value._array
    elif dtype is None:
        dtype = np.array(fill_value).dtype
    return _new(np.full(shape, fill_value, dtype=check_dtype(dtype), order=order), "full")


def full_like(a, fill_value, dtype=None, order="K", subok=None, shape=None):
    return full(a.shape if shape is None else shape, fill_value, a.dtype if dtype is None else dtype)


def arange(start, stop=None, step=1, dtype=None):
    return _new(np.arange(start, stop, step, dtype=dtype), "arange")


def linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0):
    values = np.linspace(start, stop, num, endpoint, retstep, dtype, axis)
    if retstep:
        return _new(values[0], "linspace"), values[1]
    return _new(values, "linspace")


def eye(N, M=None, k=0, dtype=float, order="C"):
    return _new(np.eye(N, M, k, dtype=check_dtype(dtype), order=order), "eye")


def identity(n, dtype=float):
    return eye(n, dtype=dtype)


# --- between host and device (cupy/_creation/from_data.py, cupy/__init__.py) -----------------------------------
def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    """A device array from ``obj``: a device array is copied on the device (or returned, if ``copy`` is
    False and nothing changes); anything else is copied from the host (a counted transfer)."""
    if isinstance(obj, ndarray):
        dtype = obj.dtype if dtype is None else check_dtype(dtype)
        if not copy and dtype == obj.dtype and obj.ndim >= ndmin:
            return obj
        result = obj.astype(dtype)
        return result.reshape((1,) * (ndmin - result.ndim) + result.shape) if ndmin > result.ndim else result
    # (this module defines cupy.any and cupy.sum, so Python's own are builtins.any, builtins.sum)
    if isinstance(obj, (list, tuple)) and builtins.any(isinstance(item, ndarray) for item in obj):
        return stack([array(item, dtype) for item in obj])  # CuPy gathers device arrays on the device
    return host_to_device(np.array(obj, dtype=dtype, order=order, ndmin=ndmin))


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    return array(a, dtype, copy=bool(copy), order=order or "K")


def asanyarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    return asarray(a, dtype, order, copy=copy)


def ascontiguousarray(a, dtype=None):
    """``a`` itself when C-contiguous with that dtype, else a contiguous copy (cupy._core.ascontiguousarray)."""
    memory = _memory(a, "cupy.ascontiguousarray")
    dtype = a.dtype if dtype is None else check_dtype(dtype)
    if memory.flags.c_contiguous and dtype == a.dtype:
        return a
    return _new(np.ascontiguousarray(memory, dtype=dtype), "ascontiguousarray")


def copy(a, order="K"):
    return _new(np.array(_memory(a, "cupy.copy"), order=order, copy=True), "copy")


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    """To host memory: ``a.get()`` for a device array (a counted copy); other arrays are already there."""
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    host = np.asarray(a, order=order)
    if out is None:
        return host
    out[...] = host
    return out


def get_array_module(*args):
    for arg in args:
        if isinstance(arg, ndarray):
            from .namespace import modules

            return modules()["cupy"]
    return np


def get_default_memory_pool():
    return default_memory_pool


def get_default_pinned_memory_pool():
    return default_pinned_memory_pool


def is_available():
    return True


# --- facts about arrays and dtypes (cupy/__init__.py; no device work) ---------------------------------------------
def shape(a):
    return a.shape if isinstance(a, ndarray) else np.shape(a)


def ndim(a):
    return a.ndim if isinstance(a, ndarray) else np.ndim(a)


def size(a, axis=None):
    if isinstance(a, ndarray):
        return a.size if axis is None else a.shape[axis]
    return np.size(a, axis)


def result_type(*arrays_and_dtypes):
    return np.result_type(*[a.dtype if isinstance(a, ndarray) else a for a in arrays_and_dtypes])


def can_cast(from_, to, casting="safe"):
    return np.can_cast(from_.dtype if isinstance(from_, ndarray) else from_, to, casting=casting)


def isscalar(element):
    return np.isscalar(element)


def may_share_memory(a, b, max_work=None):
    return np.may_share_memory(_memory(a, "cupy.may_share_memory"), _memory(b, "cupy.may_share_memory"))


def shares_memory(a, b, max_work=None):
    return np.shares_memory(_memory(a, "cupy.shares_memory"), _memory(b, "cupy.shares_memory"))


# --- shapes: views where NumPy's are views (cupy/_manipulation/) --------------------------------------------------
def reshape(a, newshape, order="C"):  # method
    return a.reshape(newshape, order=order)


def ravel(a, order="C"):  # method
    return a.ravel(order)


def transpose(a, axes=None):  # method
    return a.transpose(axes)


def permute_dims(a, axes=None):
    return transpose(a, axes)


def swapaxes(a, axis1, axis2):  # method
    return a.swapaxes(axis1, axis2)


def squeeze(a, axis=None):  # method
    return a.squeeze(axis)


def moveaxis(a, source, destination):  # refuse (cupy._core._moveaxis)
    return as_result(np.moveaxis(_memory(a, "cupy.moveaxis"), source, destination), "moveaxis", (a,))


def expand_dims(a, axis):  # refuse
    return as_result(np.expand_dims(_memory(a, "cupy.expand_dims"), axis), "expand_dims", (a,))


def broadcast_to(array, shape):  # refuse (cupy._core.broadcast_to); the view is writable in CuPy
    view = np.broadcast_to(_memory(array, "cupy.broadcast_to"), shape)
    return as_result(view, "broadcast_to", (array,))


def broadcast_arrays(*args):  # refuse
    views = np.broadcast_arrays(*[_memory(a, "cupy.broadcast_arrays") for a in args])
    return tuple(as_result(v, "broadcast_arrays", args) for v in views)


def atleast_1d(*arys):  # copy (cupy.asarray)
    results = [as_result(np.atleast_1d(asarray(a)._array), "atleast_1d", (asarray(a),)) for a in arys]
    return results[0] if len(results) == 1 else results


def atleast_2d(*arys):  # copy
    results = [as_result(np.atleast_2d(asarray(a)._array), "atleast_2d", (asarray(a),)) for a in arys]
    return results[0] if len(results) == 1 else results


def flip(m, axis=None):  # refuse
    return as_result(np.flip(_memory(m, "cupy.flip"), axis), "flip", (m,))


def split(ary, indices_or_sections, axis=0):  # refuse: views
    return [as_result(p, "split", (ary,)) for p in np.split(_memory(ary, "cupy.split"), indices_or_sections, axis)]


def array_split(ary, indices_or_sections, axis=0):
    parts = np.array_split(_memory(ary, "cupy.array_split"), indices_or_sections, axis)
    return [as_result(p, "array_split", (ary,)) for p in parts]


# --- joins and copies (cupy/_manipulation/join.py, tiling.py, cupy/_padding/pad.py) -------------------------------
def concatenate(tup, axis=0, out=None, *, dtype=None, casting="same_kind"):  # refuse
    """CuPy's launches (cupy/_core/_routines_manipulation.pyx, ``_concatenate``): more than 8 arrays,
    all of the output's dtype and under 2 MiB each on average, are copied by one kernel, which reads
    them through a table of their addresses copied to the device first (and, unless all are
    C-contiguous and equally long on the axis, tables of their offsets and strides too: 3 copies);
    otherwise one copy kernel per array."""
    memories = [_memory(a, "cupy.concatenate") for a in tup]
    if out is not None:
        np.concatenate(memories, axis, out=_memory(out, "cupy.concatenate out="), casting=casting)
        result = out
    else:
        result = wrap(np.concatenate(memories, axis, dtype=dtype, casting=casting))
    one_kernel = (len(memories) > 8 and builtins.all(m.dtype == result.dtype for m in memories)
                  and builtins.sum(m.nbytes for m in memories) < 2 * 1024 * 1024 * len(memories))
    if not one_kernel:
        for _ in memories:
            counters.launch("copy")
        return result
    axis_size = result.shape[axis] // len(memories)
    same_size = builtins.all(m.flags.c_contiguous and m.shape[axis] == axis_size for m in memories)
    counters.copy_to_device(8 * len(memories))  # the addresses
    if not same_size:
        counters.copy_to_device(8 * len(memories))  # where each array starts on the axis
        counters.copy_to_device(8 * len(memories) * result.ndim)  # its strides
    counters.launch("cupy_concatenate_same_size" if same_size else "cupy_concatenate")
    return result


def concat(tup, axis=0, out=None, *, dtype=None, casting="same_kind"):
    return concatenate(tup, axis, out, dtype=dtype, casting=casting)


def stack(tup, axis=0, out=None, *, dtype=None, casting="same_kind"):  # refuse
    return concatenate([expand_dims(a, axis) for a in tup], axis, out, dtype=dtype, casting=casting)


def vstack(tup, *, dtype=None, casting="same_kind"):
    return concatenate([atleast_2d(a) for a in tup], 0, dtype=dtype, casting=casting)


def hstack(tup, *, dtype=None, casting="same_kind"):
    arrays = [atleast_1d(a) for a in tup]
    return concatenate(arrays, 0 if arrays[0].ndim == 1 else 1, dtype=dtype, casting=casting)


def pad(array, pad_width, mode="constant", **kwargs):  # refuse (a NumPy array fails CuPy's fill)
    return _new(np.pad(_memory(array, "cupy.pad"), pad_width, mode, **kwargs), "pad")


def roll(a, shift, axis=None):
    return _new(np.roll(_memory(a, "cupy.roll"), shift, axis), "roll")


def tile(A, reps):
    return _new(np.tile(_memory(A, "cupy.tile"), reps), "tile")


def repeat(a, repeats, axis=None):  # method
    return a.repeat(repeats, axis)


def tril(m, k=0):
    return _new(np.tril(_memory(m, "cupy.tril"), k), "tril")


def triu(m, k=0):
    return _new(np.triu(_memory(m, "cupy.triu"), k), "triu")


def copyto(dst, src, casting="same_kind", where=None):
    """dst[...] = src (cupy/_manipulation/basic.py): a NumPy ``src`` must hold one value."""
    destination = _memory(dst, "cupy.copyto")
    if isinstance(src, np.ndarray):
        if src.size != 1:
            raise ValueError("non-scalar numpy.ndarray cannot be used for copyto")
        src = src.squeeze()[()]
    source = device_memory(src, "cupy.copyto")
    np.copyto(destination, source, casting=casting, where=True if where is None else _memory(where, "copyto where="))
    counters.launch("copyto")


# --- choosing and gathering (cupy/_sorting/search.py, cupy/_indexing/indexing.py) ----------------------------------
def where(condition, x=None, y=None):
    missing_count = (x is None, y is None).count(True)
    if missing_count == 1:
        raise ValueError("Must provide both 'x' and 'y' or neither.")
    if missing_count == 2:
        return nonzero(condition)
    memories = [device_memory(v, "cupy.where") for v in (condition, x, y)]
    return _new(np.asarray(np.where(*memories)), "where")


def nonzero(a):  # method; the count is read back first
    return a.nonzero()


def argwhere(a):
    counters.sync()
    return _new(np.argwhere(_memory(a, "cupy.argwhere")), "argwhere")


def flatnonzero(a):
    counters.sync()
    return _new(np.flatnonzero(_memory(a, "cupy.flatnonzero")), "flatnonzero")


def take(a, indices, axis=None, out=None):
    """a.take(indices, axis): host indices are copied to the device first, as CuPy does."""
    if not isinstance(indices, ndarray) and np.ndim(indices) > 0:
        indices = host_to_device(indices)
    index = indices._array if isinstance(indices, ndarray) else indices
    memory = _memory(a, "cupy.take")
    if out is not None:
        np.take(memory, index, axis, out=_memory(out, "cupy.take out="))
        counters.launch("take")
        return out
    return as_result(np.take(memory, index, axis), "take")


def take_along_axis(a, indices, axis):
    """CuPy's algorithm (cupy/_indexing/indexing.py): an advanced index with ``indices`` on ``axis``."""
    if indices.dtype.kind not in ("i", "u"):
        raise IndexError("`indices` must be an integer array")
    if axis is None:
        a, axis = a.ravel(), 0
    ndim = a.ndim
    axis = axis % ndim if -ndim <= axis < ndim else axis
    if ndim != indices.ndim:
        raise ValueError("`indices` and `a` must have the same number of dimensions")
    fancy_index = [
        indices if i == axis else arange(n).reshape((1,) * i + (-1,) + (1,) * (ndim - i - 1))
        for i, n in enumerate(a.shape)
    ]
    return a[tuple(fancy_index)]


def clip(a, a_min=None, a_max=None, out=None):  # method
    return a.clip(a_min, a_max, out=out)


def sort(a, axis=-1, kind=None):
    result = a.copy()
    result.sort(axis)
    return result


def argsort(a, axis=-1, kind=None):  # method
    return a.argsort(axis)


def unique(ar, return_index=False, return_inverse=False, return_counts=False, axis=None, *, equal_nan=True):
    counters.sync()  # the number of distinct values is read back to size the result
    result = np.unique(_memory(ar, "cupy.unique"), return_index, return_inverse, return_counts, axis)
    counters.launch("unique")
    return as_result(result)


def count_nonzero(a, axis=None):
    return as_result(np.count_nonzero(_memory(a, "cupy.count_nonzero"), axis), "count_nonzero")


# --- reductions: each calls the array's method, as CuPy's do (cupy/_math/sumprod.py, _statistics/) --------------
def sum(a, axis=None, dtype=None, out=None, keepdims=False):
    return a.sum(axis, dtype, out, keepdims)


def prod(a, axis=None, dtype=None, out=None, keepdims=False):
    return a.prod(axis, dtype, out, keepdims)


def mean(a, axis=None, dtype=None, out=None, keepdims=False):
    return a.mean(axis, dtype, out, keepdims)


def var(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
    return a.var(axis=axis, dtype=dtype, out=out, ddof=ddof, keepdims=keepdims)


def std(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
    return a.std(axis=axis, dtype=dtype, out=out, ddof=ddof, keepdims=keepdims)


def amax(a, axis=None, out=None, keepdims=False):
    return a.max(axis=axis, out=out, keepdims=keepdims)


def amin(a, axis=None, out=None, keepdims=False):
    return a.min(axis=axis, out=out, keepdims=keepdims)


def argmax(a, axis=None, dtype=None, out=None, keepdims=False):
    return a.argmax(axis=axis, dtype=dtype, out=out, keepdims=keepdims)


def argmin(a, axis=None, dtype=None, out=None, keepdims=False):
    return a.argmin(axis=axis, dtype=dtype, out=out, keepdims=keepdims)


def all(a, axis=None, out=None, keepdims=False):
    return a.all(axis=axis, out=out, keepdims=keepdims)


def any(a, axis=None, out=None, keepdims=False):
    return a.any(axis=axis, out=out, keepdims=keepdims)


def cumsum(a, axis=None, dtype=None, out=None):
    return a.cumsum(axis, dtype, out)


def cumprod(a, axis=None, dtype=None, out=None):
    return a.cumprod(axis, dtype, out)


def around(a, decimals=0, out=None):
    return a.round(decimals, out=out)


def trace(a, offset=0, axis1=0, axis2=1, dtype=None, out=None):
    return a.trace(offset, axis1, axis2, dtype, out)


# --- comparisons that answer with a device value (cupy/_logic/comparison.py) --------------------------------------
def isclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    memories = [device_memory(v, "cupy.isclose") for v in (a, b)]
    return as_result(np.isclose(*memories, rtol, atol, equal_nan), "isclose")


def allclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    """A 0-d device array, not a Python bool (``if cupy.allclose(...)`` reads it back)."""
    return isclose(a, b, rtol, atol, equal_nan).all()


def array_equal(a1, a2, equal_nan=False):
    if a1.shape != a2.shape:
        return as_result(np.asarray(False), "array_equal")
    return as_result(np.asarray(np.array_equal(_memory(a1, "cupy.array_equal"), _memory(a2, "cupy.array_equal"),
                                               equal_nan)), "array_equal")


# --- products (cupy/linalg/_product.py, _einsum.py) -------------------------------------------------------------
def matmul(a, b, out=None, **kwargs):
    """CuPy's generalized ufunc: device arrays only (a NumPy array is TypeError), one cuBLAS call."""
    if kwargs:
        raise TypeError(f"Wrong arguments {kwargs}")
    memories = [_memory(v, "cupy.matmul") for v in (a, b)]
    # NumPy multiplies a stack of transposed matrices without BLAS, about 40x slower (10.9 ms against 0.27 ms
    # for a conv's weight gradient, 2026-12-02): the same numbers from contiguous copies, for the tests' time.
    memories = [np.ascontiguousarray(m) if m.ndim > 2 else m for m in memories]
    if out is not None:
        np.matmul(*memories, out=_memory(out, "cupy.matmul out="))
        counters.launch("matmul")
        return out
    return _new(np.asarray(np.matmul(*memories)), "matmul")


def dot(a, b, out=None):
    memories = [_memory(v, "cupy.dot") for v in (a, b)]
    if out is not None:
        np.dot(*memories, out=_memory(out, "cupy.dot out="))
        counters.launch("dot")
        return out
    return _new(np.asarray(np.dot(*memories)), "dot")


def vdot(a, b):
    return _new(np.asarray(np.vdot(_memory(a, "cupy.vdot"), _memory(b, "cupy.vdot"))), "vdot")


def inner(a, b):
    return _new(np.asarray(np.inner(_memory(a, "cupy.inner"), _memory(b, "cupy.inner"))), "inner")


def outer(a, b, out=None):
    return ufuncs.multiply(a.ravel()[:, None], b.ravel()[None, :], out=out)


def tensordot(a, b, axes=2):
    memories = [_memory(v, "cupy.tensordot") for v in (a, b)]
    return _new(np.asarray(np.tensordot(*memories, axes)), "tensordot")


def einsum(*operands, **kwargs):
    """Operands after the subscripts go through cupy.asarray (a host array is copied: counted)."""
    unknown = set(kwargs) - {"out", "dtype", "optimize", "casting"}
    if unknown:
        raise TypeError(f"Did not understand the following kwargs: {sorted(unknown)}")
    if kwargs.get("out") is not None:
        raise NotImplementedError("out is not supported yet")  # CuPy's einsum has no out=
    kwargs.pop("out", None)
    subscripts, arrays = operands[0], [asarray(op) for op in operands[1:]]
    memories = [a._array for a in arrays]
    return _new(np.asarray(np.einsum(subscripts, *memories, **kwargs)), "einsum")


# The functions above, by CuPy's names (namespace.py puts them in the cupy module).
ROUTINES = {
    name: value for name, value in dict(globals()).items()
    if callable(value) and not name.startswith("_") and getattr(value, "__module__", None) == __name__
}
ROUTINES.update(max=amax, min=amin, round=around)  # cupy.max is cupy.amax, cupy.round is cupy.around
ROUTINES["ndarray"] = ndarray
