"""The one place that picks NumPy or CuPy."""
import re

import numpy as np
import pytest

from tinyse import backend

from conftest import requires_gpu


def test_numpy_arrays_and_plain_values_pick_numpy():
    assert backend.get_array_module(np.ones(2), 3.0, None) is np
    assert backend.get_array_module() is np
    assert backend.module_for_device("cpu") is np
    assert backend.device_of(np.ones(1)) == "cpu"


def test_unknown_device_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown device 'cuda'.*'cpu' or 'gpu'"):
        backend.module_for_device("cuda")


def test_gpu_without_cupy_says_what_to_install(monkeypatch):
    monkeypatch.setattr(backend, "cupy", None)
    monkeypatch.setattr(backend, "_cupy_import_error", None)
    with pytest.raises(RuntimeError, match=re.escape("needs CuPy, which is not installed: install CuPy with the CUDA "
                                                     "libraries it needs, e.g. `pip install 'cupy-cuda12x[ctk]'`")):
        backend.module_for_device("gpu")
    assert not backend.gpu_available()


def test_cupy_that_fails_to_import_says_why(monkeypatch):
    """CuPy installed but broken inside its import is not "not installed": the message quotes the error."""
    monkeypatch.setattr(backend, "cupy", None)
    monkeypatch.setattr(backend, "_cupy_import_error", ImportError("libcudart.so.12: cannot open shared object file"))
    with pytest.raises(RuntimeError, match=r"failed to import \(ImportError: libcudart.so.12: cannot open.*\[ctk\]"):
        backend.module_for_device("gpu")


def test_gpu_without_a_cuda_device_says_so(monkeypatch):
    class NoDevice:
        @staticmethod
        def getDeviceCount():
            raise RuntimeError("cudaErrorNoDevice")

    class FakeCupy:
        class cuda:
            runtime = NoDevice

    monkeypatch.setattr(backend, "cupy", FakeCupy)
    with pytest.raises(RuntimeError, match="finds no CUDA device"):
        backend.module_for_device("gpu")


def fake_cupy_whose_kernels_fail(error):
    """A CuPy that sees one CUDA device, but whose ElementwiseKernel raises ``error`` when called (as CuPy's
    does when NVRTC cannot be loaded: it compiles a kernel at its first call)."""

    class OneDevice:
        @staticmethod
        def getDeviceCount():
            return 1

    class FailingKernel:
        def __init__(self, *args):
            pass

        def __call__(self, *args):
            raise error

    class FakeCupy:
        class cuda:
            runtime = OneDevice

        ElementwiseKernel = FailingKernel

        @staticmethod
        def asarray(array):
            return array

    return FakeCupy


@pytest.mark.parametrize("error", [
    OSError("libnvrtc.so.12: cannot open shared object file: No such file or directory"),
    RuntimeError('Failure finding "libnvrtc.so": no NVIDIA wheel, no system library, CUDA_HOME not set'),
    ImportError("libcublas.so.12: cannot open shared object file"),
], ids=["dlopen", "pathfinder", "import"])
def test_a_driver_without_the_cuda_toolkit_is_found_at_once_and_says_what_to_install(monkeypatch, error):
    """gpu_available() runs a tiny kernel: a machine with the NVIDIA driver but no NVRTC or cuBLAS answers no,
    and device 'gpu' is refused with the library's error and the install line that brings the toolkit."""
    monkeypatch.setattr(backend, "cupy", fake_cupy_whose_kernels_fail(error))
    assert not backend.gpu_available()
    with pytest.raises(RuntimeError) as info:
        backend.module_for_device("gpu")
    message = str(info.value)
    assert f"{type(error).__name__}: {error}" in message
    assert "a CUDA library is missing" in message and "pip install 'cupy-cuda12x[ctk]'" in message


def test_another_failure_of_the_tiny_kernel_is_reported_as_it_is(monkeypatch):
    monkeypatch.setattr(backend, "cupy", fake_cupy_whose_kernels_fail(RuntimeError("cudaErrorLaunchFailure")))
    with pytest.raises(RuntimeError, match=r"a small kernel failed there \(RuntimeError: cudaErrorLaunchFailure\)"):
        backend.module_for_device("gpu")


def test_mixing_devices_names_each_array_by_its_position_in_the_call(monkeypatch):
    """None and Python numbers are skipped but still counted, so "argument i" is the i-th argument as written."""

    class OnGpu(np.ndarray):  # stands in for a CuPy array, so this runs without a GPU
        pass

    monkeypatch.setattr(backend, "is_gpu_array", lambda array: isinstance(array, OnGpu))
    on_gpu = np.ones(2).view(OnGpu)
    with pytest.raises(RuntimeError, match=r"\(argument 0: cpu, argument 3: gpu\)"):
        backend.get_array_module(np.ones(2), None, 2.0, on_gpu)
    with pytest.raises(RuntimeError, match=r"\(argument 1: gpu, argument 2: cpu\)"):
        backend.get_array_module(None, on_gpu, np.ones(2))


@requires_gpu
@pytest.mark.gpu
def test_gpu_arrays_pick_cupy_and_mixing_is_an_error():
    import cupy

    assert backend.module_for_device("gpu") is cupy
    on_gpu = backend.to_device(np.ones(2), "gpu")
    assert backend.get_array_module(on_gpu) is cupy
    with pytest.raises(RuntimeError, match="argument 0: gpu, argument 1: cpu"):
        backend.get_array_module(on_gpu, np.ones(2))
    with pytest.raises(RuntimeError, match=r"\(argument 0: cpu, argument 2: gpu\)"):
        backend.get_array_module(np.ones(2), None, on_gpu)
    assert isinstance(backend.to_device(on_gpu, "cpu"), np.ndarray)


@pytest.fixture
def fresh_gpu_check():
    """Forget the GPU check's kept answers before and after the test (the test changes what it would find)."""
    backend._probe.cache_clear()
    yield
    backend._probe.cache_clear()


@requires_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("broken", ["ElementwiseKernel", "matmul"])
def test_the_gpu_check_runs_a_kernel_and_a_matmul_and_names_a_missing_library(monkeypatch, fresh_gpu_check, broken):
    """On the (emulated) CuPy, a kernel that cannot compile (NVRTC missing: CuPy's CompileException) or a matrix
    product that cannot load cuBLAS makes device 'gpu' fail at once with the install line; the working device
    passes the same check, once: the answer is kept."""
    import cupy

    assert backend.gpu_available() and backend.module_for_device("gpu") is cupy
    if broken == "ElementwiseKernel":
        def no_nvrtc(*args, **kwargs):
            raise cupy.cuda.compiler.CompileException("nvrtc: error: failed to open libnvrtc-builtins.so.12",
                                                      "y = x + x", "tinyse_gpu_check")
        monkeypatch.setattr(cupy, "ElementwiseKernel", no_nvrtc)
    else:
        def no_cublas(*args, **kwargs):
            raise OSError("libcublas.so.12: cannot open shared object file: No such file or directory")
        monkeypatch.setattr(cupy, "matmul", no_cublas)
    assert backend.gpu_available()  # the answer is kept: the check does not run again
    backend._probe.cache_clear()
    assert not backend.gpu_available()
    expected = r"a CUDA library is missing.*NVRTC.*cuBLAS.*pip install 'cupy-cuda12x\[ctk\]'"
    with pytest.raises(RuntimeError, match=expected):
        backend.module_for_device("gpu")
