"""An emulated CuPy: tinyse's GPU path, run and checked on the CPU.

    TINYSE_EMULATE_GPU=1 python -m pytest -m gpu                     # the GPU-marked tests, on the CPU
    python -m tinyse.testing.emulated_cupy tinyse.train --device gpu  # a GPU command line, on the CPU

It stands in for ``cupy`` and ``cupyx`` in ``sys.modules`` (install.py), so ``tinyse.backend`` picks it
as it would pick CuPy: ``get_array_module``, ``to_device(x, "gpu")``, ``Module.to("gpu")`` and the
``ElementwiseKernel``s all run. It is modelled on CuPy 14.2.0 (the release for NumPy 2), read in its
source, and it is strict, so that what passes here would also pass on a GPU:

    its own array type   ``cupy.ndarray`` is not a NumPy array: ``np.asarray(x)`` is a TypeError, NumPy's
                         ufuncs and functions dispatch to CuPy's (``__array_ufunc__``, ``__array_function__``),
                         and the host gets values back only through ``.get()``, ``cupy.asnumpy`` and the
                         counted reads ``float(x)``, ``x.item()`` ... (ndarray.py)
    only CuPy's names    a name real CuPy lacks is an AttributeError; one it has but the emulator does not
                         implement is a NotImplementedError naming it (cupy_14.2.0_names.txt, names.py)
    kernels              an ``ElementwiseKernel`` runs its own CUDA C body, compiled with the system's C++
                         compiler, under CuPy's parameter rules: a float32 and a float64 array on one ``T``
                         are a TypeError; a raw index out of range is an IndexError (kernels.py,
                         cpu_compiler.py). Without a compiler the emulated GPU tests skip.
    counters             kernel launches, host-device copies and their bytes, host synchronisations
                         (``counters.snapshot()``, ``with counting() as counts:``; counters.py)

The files: ndarray.py (the array), ufuncs.py (cupy.exp, cupy.add ...), routines.py (the other
functions), kernels.py and cpu_compiler.py (ElementwiseKernel), cuda.py (cupy.cuda), namespace.py
(the modules, assembled), names.py and cupy_14.2.0_names.txt (CuPy's names; extract_names.py
regenerates them from CuPy's git tag), counters.py, install.py, __main__.py.

Limits: it checks API use, host/device discipline and kernel arithmetic, not CUDA itself.
    - One device, one stream, everything in order: no asynchrony, so no race between streams or
      between host and device, and no kernel race either (a kernel's elements run one after another,
      so two elements writing one place, or one reading what another writes, go unnoticed).
    - The arithmetic is NumPy's, and the kernels' is the CPU's without fused multiply-add: results can
      differ from a GPU's (cuBLAS, CUDA's math library, FMA) in the last bits; no half or complex kernels.
    - No speed, memory-limit or occupancy model; the memory pool counts bytes of live arrays only.
    - Not all of CuPy: the functions tinyse uses and their neighbours (routines.py, ufuncs.py); the rest
      raise NotImplementedError. RawKernel, a ReductionKernel's raw parameters, cupy.random, cupy.fft,
      streams and events beyond the null stream are not emulated.
    - CuPy's kernels see only what a CUDA compiler would accept; this one is g++: CUDA-only syntax
      (threadIdx, __syncthreads, atomics, half) does not compile here, and g++ may accept C++ NVRTC would not.
    - Stricter than CuPy in one place: an out-of-range integer-array index raises IndexError (CuPy wraps it).
"""
from .counters import counters, counting
from .install import ENV_VAR, compiler_available, install, installed, requested, uninstall
from .names import CUPY_VERSION
from .namespace import modules

__all__ = [
    "CUPY_VERSION", "ENV_VAR", "compiler_available", "counters", "counting", "install", "installed", "modules",
    "requested", "uninstall",
]
