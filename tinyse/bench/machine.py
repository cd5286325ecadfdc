"""What the numbers were measured on (the table's header), and the devices and threads both libraries get.

Threads: ``--threads N`` (default os.cpu_count(), what both libraries pick by themselves) goes to
torch.set_num_threads and, for NumPy's BLAS, to OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS
(``BLAS_ENV``). BLAS reads those once, when NumPy is imported, so ``python -m tinyse.bench`` re-executes
itself with them set (``__main__.py``); ``main()`` called from Python cannot change them and warns when
they differ. The threads BLAS really uses come from threadpoolctl when it is installed, else from those
variables.
"""
import datetime
import os
import platform
import sys

import numpy as np

from tinyse import backend
from tinyse.backend import module_for_device

BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TINYSE_NUM_THREADS")


# --- devices and threads ------------------------------------------------------------------------
def torch_device(device):
    """torch's name for ``device``, or a clear error when torch cannot reach it."""
    if device == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("device 'gpu' asked for, but this torch build sees no CUDA device")
        return "cuda"
    return "cpu"


def torch_reaches(device):
    """Whether torch can run on ``device`` (the GPU: a CUDA build that sees a device)."""
    if device == "cpu":
        return True
    import torch

    return torch.cuda.is_available()


def module_command(module):
    """The command that runs ``python -m module``: through the emulated CuPy when this process runs on it,
    so that a child process (a memory measurement, the re-execution with BLAS's threads) runs on it too."""
    if cupy_is_emulated():
        return [sys.executable, "-m", "tinyse.testing.emulated_cupy", module]
    return [sys.executable, "-m", module]


def cupy_is_emulated():
    """Whether tinyse's "gpu" is the emulated CuPy (``tinyse.testing.emulated_cupy``, on the CPU)."""
    emulator = sys.modules.get("tinyse.testing.emulated_cupy")  # imported by whatever installed it
    return emulator is not None and backend.cupy is not None and backend.cupy is emulator.modules()["cupy"]


def thread_env(threads):
    """A copy of the environment with every BLAS thread variable set to ``threads``."""
    return {**os.environ, **{var: str(threads) for var in BLAS_ENV}}


def blas_pool():
    """threadpoolctl's record of NumPy's BLAS (its threads, and for OpenBLAS its kernels), or None without it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return next((pool for pool in threadpool_info() if pool.get("user_api") == "blas"), None)


def blas_threads():
    """(threads NumPy's BLAS uses or None, where that number comes from)."""
    pool = blas_pool()
    if pool is not None:
        return pool["num_threads"], "threadpoolctl"
    for var in BLAS_ENV:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]), var
    return None, "no thread variable set: the BLAS default (usually every core)"


def blas_kernels():
    """Which kernels NumPy's OpenBLAS runs ("SkylakeX", "Haswell", ...; None when unknown), and why.

    OpenBLAS picks them for the CPU when NumPy loads it, unless OPENBLAS_CORETYPE names others (some machines set
    it, with OPENBLAS_L2_SIZE, for old OpenBLAS builds that fail on their CPU). It matters: on a 2-core AMD EPYC
    with AVX-512 (Zen 5), OPENBLAS_CORETYPE=Haswell held OpenBLAS to its AVX2 kernels and the SE-ResNet-20 step
    took 2.02x PyTorch's time; with the SkylakeX kernels OpenBLAS picks there by itself, 1.50x (2026-12-04).
    """
    forced = os.environ.get("OPENBLAS_CORETYPE")
    why = f"OPENBLAS_CORETYPE={forced}" if forced else "OpenBLAS's choice for this CPU"
    return (blas_pool() or {}).get("architecture"), why


# --- the header ---------------------------------------------------------------------------------
def blas_name():
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas.get('version', '')}".strip()
    except (KeyError, TypeError, ValueError):  # older NumPy (no mode=), or a build that does not say
        return "unknown"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names(device, libraries):
    """{library: the name of the GPU it runs on} for the libraries timed, or None on the CPU."""
    if device != "gpu":
        return None
    cupy = module_for_device("gpu")
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    names = {"tinyse": name.decode() if isinstance(name, bytes) else name}
    if "torch" in libraries:
        import torch

        names["torch"] = torch.cuda.get_device_name()
    return names


def header(device, threads, libraries=("tinyse", "torch")):
    """What the numbers were measured on; ``libraries``: those timed (without torch: no CUDA in its build)."""
    import torch

    blas, source = blas_threads()
    kernels, kernels_source = blas_kernels()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_name(),
        "blas_threads": blas,
        "blas_threads_source": source,
        "blas_kernels": kernels,
        "blas_kernels_source": kernels_source,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "threads": threads,
        "device": device,
        "gpu": gpu_names(device, libraries),
        "libraries": list(libraries),
    }
