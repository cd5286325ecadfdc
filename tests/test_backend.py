"""The one place that picks NumPy or CuPy."""
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
    with pytest.raises(RuntimeError, match="pip install cupy-cuda12x"):
        backend.module_for_device("gpu")
    assert not backend.gpu_available()


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
