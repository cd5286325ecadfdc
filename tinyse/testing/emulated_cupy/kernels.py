"""``cupy.ElementwiseKernel``, with CuPy's parameter rules; the body runs as C++ on the CPU (cpu_compiler.py).

    kernel = cupy.ElementwiseKernel("T grad, T y", "T grad_in", "grad_in = y > 0 ? grad : (T)0", "relu_grad")
    grad_in = kernel(grad, y)

CuPy's rules (CuPy 14.2.0, cupy/_core/_kernel.pyx: ``ParameterInfo``, ``_decide_params_type_core``,
``_broadcast``, ``_get_out_args_with_params``, ``ElementwiseKernel.__call__``):

    parameters      "[raw] TYPE name": TYPE is a dtype name (float32, int32 ...; read with numpy.dtype,
                    so ``float`` means float64) or one letter, a type placeholder (``T``); ``i`` is
                    reserved for the element's index
    placeholders    bound from the dtypes of the array arguments, outputs first: every array on one
                    placeholder must have the same dtype, else TypeError "Type is mismatched. ..."
                    (a float32 array and a float64 array both bound to T are an error, not a cast)
    typed params    an array must have exactly that dtype (TypeError otherwise)
    scalars         Python and NumPy scalars are converted to their parameter's type (an out-of-range
                    integer is OverflowError); a NumPy array is TypeError "Unsupported type ..."
    broadcasting    the non-raw arrays, inputs and outputs, broadcast together (NumPy's rule); each
                    non-raw parameter is bound to its element; ``i`` runs over the broadcast shape
    raw             a raw parameter is the whole array, indexed by a flat C-order index; its size is
                    ``x.size()``; ``_ind.size()`` is the number of elements of the loop
    outputs         passed (the last arguments) or allocated with the broadcast shape; with only raw and
                    scalar inputs the output must be passed in ("Loop size is undecided." otherwise),
                    or ``size=`` given when every array is raw
    result          the output, a tuple of them (several outputs, or return_tuple=True), or None
                    (no_return=True); a zero-size loop launches nothing

Each call is one kernel launch (counted). Out-of-range indices of raw parameters raise IndexError.
"""
import re

import numpy as np

from . import cpu_compiler
from .counters import counters
from .ndarray import PYTHON_SCALARS, SUPPORTED_KINDS, ndarray, unsupported, wrap


class ParameterInfo:
    """One parameter of a kernel: ``raw T x`` -> name "x", ctype "T", dtype None, raw True."""

    def __init__(self, text, is_const):
        words = text.split()
        if len(words) < 2:
            raise Exception(f"Syntax error: {text}")  # CuPy raises a bare Exception here
        type_name, self.name = words[-2:]
        self.is_const, self.raw, self.dtype = is_const, False, None
        if len(type_name) == 1:  # a placeholder, bound from the arguments
            self.ctype = type_name
        else:
            self.dtype = np.dtype(type_name)
            self.ctype = _c_type(self.dtype)
        for keyword in words[:-2]:
            if keyword == "raw":
                self.raw = True
            elif keyword == "_non_const":
                self.is_const = False
            else:
                raise Exception(f'Unknown keyword "{keyword}"')

    def __repr__(self):
        return f"ParameterInfo({'raw ' if self.raw else ''}{self.ctype} {self.name})"


def parse_parameters(text, is_const):
    return tuple(ParameterInfo(part, is_const) for part in text.strip().split(",")) if text.strip() else ()


def _c_type(dtype):
    if dtype.name not in cpu_compiler.C_TYPES:
        raise NotImplementedError(f"the emulated CuPy runs kernels on bool, integer, float32 and float64, not {dtype}")
    return cpu_compiler.C_TYPES[dtype.name]


class _UserKernel:
    """What ElementwiseKernel and ReductionKernel share: the name, the parameters, binding their types."""

    def __init__(self, in_params, out_params, name):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z_0-9]*", name):
            raise ValueError(f'Invalid kernel name: "{name}"')
        self.in_params = parse_parameters(in_params, is_const=True)
        self.out_params = parse_parameters(out_params, is_const=False)
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.nargs = self.nin + self.nout
        self.params = self.in_params + self.out_params
        self.name, self.__name__ = name, name

    def _check_arguments(self, args):
        if len(args) not in (self.nin, self.nargs):
            raise TypeError(
                f"Wrong number of arguments for {self.name!r}. It must be either {self.nin} or {self.nargs} "
                f"(with outputs), but given {len(args)}."
            )
        for arg in args:
            if not isinstance(arg, ndarray) and not _is_scalar(arg):
                raise unsupported(arg, f"{type(self).__name__} {self.name!r}")
        if any(not isinstance(o, ndarray) for o in args[self.nin :]):
            raise TypeError("Output arguments type must be cupy.ndarray")

    def _decide_types(self, in_args, out_args):
        """Bind each placeholder to one dtype (outputs first), as ``_decide_params_type_core``."""
        bound = {}
        for params, arrays in ((self.out_params, out_args), (self.in_params, in_args)):
            for p, a in zip(params, arrays):
                if not isinstance(a, ndarray):
                    continue  # scalars take their parameter's type; they bind nothing
                if p.dtype is not None:
                    if a.dtype != p.dtype:
                        raise TypeError(f"Type is mismatched. {p.name} {a.dtype} {p.dtype}")
                elif p.ctype in bound:
                    if bound[p.ctype] != a.dtype:
                        raise TypeError(f"Type is mismatched. {p.name} {a.dtype} {bound[p.ctype]} {p.ctype}")
                else:
                    bound[p.ctype] = a.dtype

        def type_of(p):
            if p.dtype is not None:
                return p.dtype
            if p.ctype not in bound:
                # CuPy fails here with a bare KeyError of the placeholder
                raise KeyError(f"{p.ctype} (placeholder of parameter {p.name!r}, bound by no array argument)")
            return bound[p.ctype]

        in_types = [type_of(p) for p in self.in_params]
        out_types = [type_of(p) for p in self.out_params]
        return in_types, out_types, sorted(bound.items())


class ElementwiseKernel(_UserKernel):
    """A user-defined elementwise kernel: CUDA C++ for one element, run over broadcast arrays."""

    __module__ = "cupy"

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True, preamble="",
                 no_return=False, return_tuple=False, **kwargs):
        super().__init__(in_params, out_params, name)
        if "i" in [p.name for p in self.params]:
            raise ValueError("Can not use 'i' as a parameter name")
        self.operation = operation
        self.reduce_dims, self.preamble = reduce_dims, preamble
        self.no_return, self.return_tuple = no_return, return_tuple
        self.kwargs = kwargs  # loop_prep, after_loop, options (NVRTC's options are ignored here)

    def __call__(self, *args, size=None, stream=None, block_size=128):
        if block_size <= 0:
            raise ValueError("block_size must be greater than zero")
        self._check_arguments(args)
        given_outs = list(args[self.nin :])
        shape = self._loop_shape(args, size)
        in_types, out_types, type_map = self._decide_types(args[: self.nin], given_outs)
        outs = self._outputs(given_outs, out_types, shape, size is not None)
        result = None if self.no_return else (outs[0] if self.nout == 1 and not self.return_tuple else tuple(outs))
        n = int(np.prod(shape, dtype=np.int64))
        if n == 0:
            return result
        self._launch(list(args[: self.nin]) + outs, in_types + out_types, type_map, shape, n)
        return result

    # --- CuPy's rules, step by step ---
    def _loop_shape(self, args, size):
        """The broadcast shape of the non-raw arrays (inputs and outputs), or (size,)."""
        shapes = [a.shape for a, p in zip(args, self.params) if isinstance(a, ndarray) and not p.raw]
        if size is not None:
            if shapes:
                raise ValueError("Specified 'size' can be used only if all of the ndarray are 'raw'.")
            return (size,)
        if not shapes:
            raise ValueError("Loop size is undecided.")
        return np.broadcast_shapes(*shapes)

    def _outputs(self, given, out_types, shape, size_given):
        if not given:
            for p in self.out_params:
                if p.raw and not size_given:
                    raise ValueError("Output array size is Undecided")
            return [wrap(np.empty(shape, dtype=t)) for t in out_types]
        for p, out in zip(self.out_params, given):
            if not p.raw and out.shape != tuple(shape):
                raise ValueError("Out shape is mismatched")
        return given

    # --- the launch: bind every argument, compile once, run ---
    def _launch(self, args, types, type_map, shape, n):
        declarations, per_element, pointers, sizes, keep, write_back = [], [], [], [], [], []
        for k, (p, arg, dtype) in enumerate(zip(self.params, args, types)):
            const, c_type = ("const " if p.is_const else ""), p.ctype  # a placeholder is typedef'd below
            if not isinstance(arg, ndarray):  # a scalar, converted to its parameter's type
                value = np.empty((), dtype=dtype)
                value[()] = arg
                memory = value
                declarations.append(f"{const}{c_type} {p.name} = *static_cast<const {c_type}*>(_args[{k}]);")
            elif p.raw:  # the whole array, C-contiguous, with its size
                memory = np.ascontiguousarray(arg._array)
                declarations.append(f'{const}_RawArray<{c_type}> {p.name}(_args[{k}], _sizes[{k}], "{p.name}", _err);')
            else:  # one element per i, over the broadcast shape (an output has that shape already)
                memory = np.ascontiguousarray(np.broadcast_to(arg._array, shape) if p.is_const else arg._array)
                per_element.append(f"{const}{c_type} &{p.name} = static_cast<{c_type}*>(_args[{k}])[_ind.get()];")
            if isinstance(arg, ndarray) and not p.is_const and memory is not arg._array:
                write_back.append((arg._array, memory))  # an output copied to be contiguous: copy it back
            keep.append(memory)
            pointers.append(memory.ctypes.data)
            sizes.append(memory.size)
        typedefs = [(placeholder, _c_type(dtype)) for placeholder, dtype in type_map]
        source = cpu_compiler.kernel_source(
            self.name, typedefs, self.preamble, "\n  ".join(declarations), "\n    ".join(per_element),
            self.operation, self.kwargs.get("loop_prep", ""), self.kwargs.get("after_loop", ""),
        )
        function = cpu_compiler.load(source, self.name)
        counters.launch(self.name)
        error = cpu_compiler.run(function, pointers, sizes, n)
        if error is not None:
            raise IndexError(
                f"ElementwiseKernel {self.name!r}: raw parameter {error.param.decode()!r} indexed at {error.index}, "
                f"outside its {error.size} elements (element i = {error.thread} of {n}); on a GPU this reads or "
                f"writes stray memory"
            )
        for target, memory in write_back:
            target[...] = memory.reshape(target.shape)


class ReductionKernel(_UserKernel):
    """A user-defined reduction: map each element, combine the mapped values, then map the result.

        l2 = cupy.ReductionKernel("T x", "T y", "x * x", "a + b", "y = sqrt(a)", "0", "l2norm")
        l2(x, axis=1)

    CuPy's rules (CuPy 14.2.0, cupy/_core/_reduction.pyx: ``ReductionKernel.__call__``, ``_call``,
    ``_get_axis``, ``_get_out_shape``, the kernel template): the inputs (arrays and scalars, not raw)
    broadcast together; ``axis`` (default all) names the reduced axes of that shape, and the output has
    the others (``keepdims`` leaves them as 1); for each output element, ``_type_reduce _s = identity``,
    then for every input element reduced into it ``_s = REDUCE(_s, (_type_reduce)(map_expr))`` with
    ``#define REDUCE(a, b) (reduce_expr)``, and last ``POST_MAP(_s)`` with ``#define POST_MAP(a)
    (post_map_expr)``, which assigns the outputs. ``_type_reduce`` is ``reduce_type`` (default the first
    output's type); ``_in_ind.size()`` counts the input's elements and ``_out_ind.size()`` the output's.
    The emulator folds each output's values in CuPy's order for a block of 512 threads: every 512th value
    in one thread, then the threads' results pairwise in a tree (a sum of n float32 values is then as
    accurate as on a GPU, not n times worse). Not emulated: raw parameters and an empty identity.
    Each call is one kernel launch (counted).
    """

    __module__ = "cupy"

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity,
                 name="reduce_kernel", reduce_type=None, reduce_dims=True, preamble="", options=()):
        super().__init__(in_params, out_params, name)
        self.map_expr, self.reduce_expr, self.post_map_expr = map_expr, reduce_expr, post_map_expr
        self.identity = "" if identity is None else str(identity)
        self.reduce_type = self.out_params[0].ctype if reduce_type is None else reduce_type
        self.preamble = preamble
        if any(p.raw for p in self.params):
            raise NotImplementedError("raw parameters of a ReductionKernel are not emulated")
        if not self.identity:
            raise NotImplementedError("a ReductionKernel without an identity is not emulated")

    def __call__(self, *args, out=None, axis=None, keepdims=False, stream=None, **kwargs):
        if kwargs:
            raise TypeError(f"Wrong arguments {kwargs}")
        self._check_arguments(args)
        given_outs = list(args[self.nin :])
        if out is not None:
            if self.nout != 1:
                raise NotImplementedError("")
            if given_outs:
                raise ValueError("cannot specify 'out' as both a positional and keyword argument")
            given_outs = [out]
        inputs = args[: self.nin]
        shape = np.broadcast_shapes(*[a.shape for a in inputs if isinstance(a, ndarray)])
        reduce_axis, out_axis = _reduction_axes(axis, len(shape))
        out_shape = tuple(1 if k in reduce_axis else n for k, n in enumerate(shape)) if keepdims else tuple(
            shape[k] for k in out_axis)
        in_types, out_types, type_map = self._decide_types(inputs, given_outs)
        if given_outs:
            if any(o.shape != out_shape for o in given_outs):
                raise ValueError("Out shape is mismatched")
            outs = given_outs
        else:
            outs = [wrap(np.empty(out_shape, dtype=t)) for t in out_types]
        result = outs[0] if self.nout == 1 else tuple(outs)
        n_out = int(np.prod(out_shape, dtype=np.int64))
        n_reduced = int(np.prod([shape[k] for k in reduce_axis], dtype=np.int64))
        if n_out == 0:
            return result
        order = out_axis + reduce_axis  # each output element's inputs next to each other
        declarations, per_input, per_output, pointers, sizes, keep, write_back = [], [], [], [], [], [], []
        for k, (p, arg, dtype) in enumerate(zip(self.params, list(inputs) + outs, in_types + out_types)):
            if k < self.nin and not isinstance(arg, ndarray):
                memory = np.empty((), dtype=dtype)
                memory[()] = arg
                declarations.append(f"const {p.ctype} {p.name} = *static_cast<const {p.ctype}*>(_args[{k}]);")
            elif k < self.nin:
                memory = np.ascontiguousarray(np.broadcast_to(arg._array, shape).transpose(order))
                per_input.append(f"const {p.ctype} {p.name} = static_cast<const {p.ctype}*>(_args[{k}])"
                                 "[_in_ind.get()];")
            else:
                memory = np.ascontiguousarray(arg._array)
                if memory is not arg._array:
                    write_back.append((arg._array, memory))
                per_output.append(f"{p.ctype} &{p.name} = static_cast<{p.ctype}*>(_args[{k}])[_out_ind.get()];")
            keep.append(memory)
            pointers.append(memory.ctypes.data)
            sizes.append(memory.size)
        typedefs = [(placeholder, _c_type(dtype)) for placeholder, dtype in type_map]
        source = cpu_compiler.reduction_source(
            self.name, typedefs, self.reduce_type, self.preamble, "\n  ".join(declarations),
            "\n      ".join(per_input), "\n    ".join(per_output), self.map_expr, self.reduce_expr,
            self.post_map_expr, self.identity,
        )
        function = cpu_compiler.load(source, self.name, kind="ReductionKernel")
        counters.launch(self.name)
        cpu_compiler.run(function, pointers, sizes, n_out, n_reduced)
        for target, memory in write_back:
            target[...] = memory
        return result


def _reduction_axes(axis, ndim):
    """(reduced axes, kept axes), each sorted, as CuPy's ``_get_axis``."""
    if axis is None:
        return tuple(range(ndim)), ()
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    reduced = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise np.exceptions.AxisError(a, ndim)
        reduced.append(a % ndim)
    if len(set(reduced)) != len(reduced):
        raise ValueError("duplicate value in 'axis'")
    reduced = tuple(sorted(reduced))
    return reduced, tuple(k for k in range(ndim) if k not in reduced)


def _is_scalar(value):
    return isinstance(value, PYTHON_SCALARS) or (isinstance(value, np.generic) and value.dtype.kind in SUPPORTED_KINDS)
