"""Compile an elementwise kernel's CUDA C body for the CPU: C++ through the system compiler, loaded with ctypes.

kernels.py decides what each parameter is (CuPy's rules); this file turns that into one C++
function and runs it. The function is CuPy's kernel with the GPU taken out
(cupy/_core/_kernel.pyx, ``_get_simple_elementwise_kernel_code``; cupy/_core/include/cupy/carray.cuh):

    CuPy (CUDA)                                   here (C++17, g++)
    extern "C" __global__ void name(params)       extern "C" int tinyse_emulated_kernel(args, sizes, n, err)
    CUPY_FOR(i, _ind.size()): one thread per i    for (ptrdiff_t i = 0; i < n; ++i): one element after another
    const T &x = _raw_x[_ind.get()];              the same line, on the broadcast, C-contiguous input
    T &y = _raw_y[_ind.get()];                    the same line, on the output
    raw T x  ->  CArray x, x[k] with k the flat   _RawArray x: the same x[k], x.size(), but every index is
    (C-order) index, unchecked                    checked: an out-of-range k stops the kernel and raises
                                                  IndexError naming the parameter, k, the size and i
    const on every input parameter                the same, so writing to an input fails to compile here too
    typedef double T;  (from the arguments)       the same typedefs

CUDA's math functions (exp, expf, fabs, sqrt ...) come from <cmath>; ``min`` and ``max`` follow
CUDA's overloads; ``__device__``, ``__forceinline__`` and friends compile to nothing. CUDA features
an elementwise body has no business using (threadIdx, __syncthreads, shared memory, half and
complex types, atomics) are not provided: such a body fails to compile here, with the compiler's
message in the CompileException.

Compiled libraries are cached by a hash of their source, in ``CACHE_DIR`` (a folder of the system's
temporary directory), so each kernel and dtype is compiled once per machine, not once per run.
"""
import ctypes
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

from .cuda import CompileException

CACHE_DIR = pathlib.Path(tempfile.gettempdir()) / f"tinyse-emulated-cupy-kernels-{os.getuid()}"
COMPILE_FLAGS = ["-std=c++17", "-O1", "-shared", "-fPIC", "-ffp-contract=off", "-w"]
ENTRY = "tinyse_emulated_kernel"

# The C++ names of CuPy's dtypes (cupy/_core/_scalar.pyx, ``_typenames_base``); float16 and complex are
# not emulated.
C_TYPES = {
    "float64": "double", "float32": "float", "int64": "long long", "int32": "int", "int16": "short",
    "int8": "signed char", "uint64": "unsigned long long", "uint32": "unsigned int", "uint16": "unsigned short",
    "uint8": "unsigned char", "bool": "bool",
}

CUDA_SHIM = r"""
#include <cmath>
#include <math.h>
#include <cstddef>
#include <cstdint>
#include <cstring>

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __restrict__ __restrict

// CUDA's min and max take two numbers of any arithmetic types (the usual conversions apply).
template <typename A, typename B> inline auto min(A a, B b) -> decltype(a + b) { return b < a ? b : a; }
template <typename A, typename B> inline auto max(A a, B b) -> decltype(a + b) { return a < b ? b : a; }

// The first out-of-range index a kernel made, reported back to Python.
struct _EmuError { int failed; ptrdiff_t index; ptrdiff_t size; ptrdiff_t thread; char param[64]; };

// A `raw` parameter: CuPy's CArray indexed by a flat (C-order) index, here with a bounds check.
template <typename T>
class _RawArray {
  T* data_;
  ptrdiff_t size_;
  const char* name_;
  _EmuError* err_;

  T& at(ptrdiff_t k) const {
    if (k < 0 || k >= size_) {
      if (!err_->failed) {
        err_->failed = 1;
        err_->index = k;
        err_->size = size_;
        std::strncpy(err_->param, name_, sizeof(err_->param) - 1);
      }
      static thread_local T scratch;  // read or written instead of memory outside the array
      scratch = T();
      return scratch;
    }
    return data_[k];
  }

 public:
  _RawArray(void* data, ptrdiff_t size, const char* name, _EmuError* err)
      : data_(static_cast<T*>(data)), size_(size), name_(name), err_(err) {}
  ptrdiff_t size() const { return size_; }
  T& operator[](ptrdiff_t k) { return at(k); }
  const T& operator[](ptrdiff_t k) const { return at(k); }
};

// CuPy's CIndexer for an elementwise loop: the loop's size and the flat index being computed.
class CIndexer {
  ptrdiff_t size_, index_;

 public:
  explicit CIndexer(ptrdiff_t size) : size_(size), index_(0) {}
  ptrdiff_t size() const { return size_; }
  void set(ptrdiff_t i) { index_ = i; }
  ptrdiff_t get() const { return index_; }
};
"""

_lock = threading.Lock()
_loaded = {}  # source hash -> the loaded function


class _EmuError(ctypes.Structure):
    _fields_ = [
        ("failed", ctypes.c_int), ("index", ctypes.c_ssize_t), ("size", ctypes.c_ssize_t),
        ("thread", ctypes.c_ssize_t), ("param", ctypes.c_char * 64),
    ]


def compiler_path():
    """The C++ compiler to use ($CXX, else g++, c++ or clang++ on the PATH), or None when there is none."""
    for candidate in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def kernel_source(name, typedefs, preamble, declarations, per_element, operation, loop_prep, after_loop):
    """The C++ source of one kernel (see the module docstring for how it maps CuPy's)."""
    typedef_lines = "".join(f"typedef {c_type} {placeholder};\n" for placeholder, c_type in typedefs)
    return f"""// ElementwiseKernel {name!r}, emulated on the CPU by tinyse/testing/emulated_cupy
{CUDA_SHIM}
{typedef_lines}
{preamble}

extern "C" int {ENTRY}(void* const* _args, const ptrdiff_t* _sizes, ptrdiff_t _n, _EmuError* _err) {{
  {declarations}
  CIndexer _ind(_n);
  {loop_prep};
  for (ptrdiff_t i = 0; i < _ind.size(); ++i) {{
    _ind.set(i);
    {per_element}
    {operation};
    if (_err->failed) {{ _err->thread = i; return 1; }}
  }}
  {after_loop};
  return 0;
}}
"""


def reduction_source(name, typedefs, reduce_type, preamble, declarations, per_input, per_output, map_expr,
                     reduce_expr, post_map_expr, identity):
    """The C++ source of one ReductionKernel: CuPy's template (cupy/_core/_reduction.pyx), one output element
    after another, each summed in the order a block of threads would (so float sums are as accurate)."""
    typedef_lines = "".join(f"typedef {c_type} {placeholder};\n" for placeholder, c_type in typedefs)
    return f"""// ReductionKernel {name!r}, emulated on the CPU by tinyse/testing/emulated_cupy
{CUDA_SHIM}
{typedef_lines}{preamble}
typedef {reduce_type} _type_reduce;
#define REDUCE(a, b) ({reduce_expr})
#define POST_MAP(a) ({post_map_expr})

extern "C" int {ENTRY}(void* const* _args, const ptrdiff_t* _sizes, ptrdiff_t _n_out, ptrdiff_t _n_reduced,
                       _EmuError* _err) {{
  {declarations}
  CIndexer _in_ind(_n_out * _n_reduced), _out_ind(_n_out);
  static const int REDUCTION_THREADS = 512;  // CuPy's block of threads for one output (a power of 2)
  _type_reduce _partial[REDUCTION_THREADS];
  for (ptrdiff_t _i = 0; _i < _n_out; ++_i) {{
    _out_ind.set(_i);
    // CuPy's order: each of a block's threads folds every REDUCTION_THREADS-th value, then the block
    // combines the threads' results in a tree (its shared-memory loop), halving their number each time.
    for (int _t = 0; _t < REDUCTION_THREADS; ++_t) {{
      _type_reduce _s = _type_reduce({identity});
      for (ptrdiff_t _j = _t; _j < _n_reduced; _j += REDUCTION_THREADS) {{
        _in_ind.set(_i * _n_reduced + _j);
        {per_input}
        _type_reduce _a = static_cast<_type_reduce>({map_expr});
        _s = REDUCE(_s, _a);
      }}
      _partial[_t] = _s;
    }}
    for (int _half = REDUCTION_THREADS / 2; _half > 0; _half /= 2)
      for (int _t = 0; _t < _half; ++_t) {{
        _type_reduce _a = _partial[_t], _b = _partial[_t + _half];
        _partial[_t] = REDUCE(_a, _b);
      }}
    _type_reduce _s = _partial[0];
    {per_output}
    POST_MAP(_s);
  }}
  return 0;
}}
"""


def load(source, name, kind="ElementwiseKernel"):
    """The compiled kernel function for ``source`` (compiled once, then cached on disk and in memory)."""
    compiler = compiler_path()
    if compiler is None:
        raise RuntimeError("the emulated CuPy compiles kernels with a C++ compiler, and none was found (g++)")
    key = hashlib.sha256("\0".join([compiler, *COMPILE_FLAGS, source]).encode()).hexdigest()[:24]
    with _lock:
        if key not in _loaded:
            library = CACHE_DIR / f"{key}.so"
            if not library.exists():
                _compile(compiler, source, f"{kind} {name!r}", library)
            function = getattr(ctypes.CDLL(str(library)), ENTRY)
            function.restype = ctypes.c_int
            loop_sizes = [ctypes.c_ssize_t] * (2 if kind == "ReductionKernel" else 1)  # (outputs, reduced) or n
            function.argtypes = [
                ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_ssize_t), *loop_sizes,
                ctypes.POINTER(_EmuError),
            ]
            _loaded[key] = function
        return _loaded[key]


def _compile(compiler, source, name, library):
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as work:
        cpp, built = pathlib.Path(work) / "kernel.cpp", pathlib.Path(work) / "kernel.so"
        cpp.write_text(source)
        result = subprocess.run([compiler, *COMPILE_FLAGS, "-o", str(built), str(cpp)], capture_output=True, text=True)
        if result.returncode != 0:
            kernel_part = source.split(CUDA_SHIM)[-1].strip()  # the shim above it is the same for every kernel
            raise CompileException(
                f"{name} does not compile:\n{result.stderr.strip()}\n\n"
                f"the kernel (after the CUDA shim of cpu_compiler.py):\n{kernel_part}",
                source, name, COMPILE_FLAGS,
            )
        os.replace(built, library)  # atomic: a process running beside this one sees all of it or none


def run(function, pointers, sizes, *loop_sizes):
    """Run a loaded kernel over ``loop_sizes`` (n elements; or outputs and values reduced into each, for a
    reduction); returns the error of an out-of-range index of a raw parameter, or None."""
    error = _EmuError()
    pointer_array = (ctypes.c_void_p * max(1, len(pointers)))(*pointers)
    size_array = (ctypes.c_ssize_t * max(1, len(sizes)))(*sizes)
    if function(pointer_array, size_array, *loop_sizes, ctypes.byref(error)) != 0:
        return error
    return None
