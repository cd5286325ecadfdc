"""Helpers for the tests and the benchmark; the package itself never imports this folder.

    twins.py         PyTorch twins of tinyse's layers and models, written from the papers, with
                     tinyse's attribute names so that state_dict keys match (needs torch).
    emulated_cupy/   an emulated CuPy (14.2.0) that runs tinyse's GPU path on the CPU, strictly:
                     its arrays refuse implicit host conversion, only CuPy's names exist, the
                     ElementwiseKernels' CUDA bodies are compiled with g++ and index-checked, and
                     kernel launches, transfers and synchronisations are counted. Switched on by
                     TINYSE_EMULATE_GPU=1 (tests/conftest.py) or by
                     ``python -m tinyse.testing.emulated_cupy MODULE ARGS``.
"""
