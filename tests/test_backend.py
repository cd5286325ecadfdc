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
    with pytest.raises(ValueError, match="unknown device 'cuda'.*'cpu' or 'gpu'"):
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


@requires_gpu
@pytest.mark.gpu
def test_gpu_arrays_pick_cupy_and_mixing_is_an_error():
    import cupy

    assert backend.module_for_device("gpu") is cupy
    on_gpu = backend.to_device(np.ones(2), "gpu")
    assert backend.get_array_module(on_gpu) is cupy
    with pytest.raises(RuntimeError, match="argument 0: gpu, argument 1: cpu"):
        backend.get_array_module(on_gpu, np.ones(2))
    assert isinstance(backend.to_device(on_gpu, "cpu"), np.ndarray)
