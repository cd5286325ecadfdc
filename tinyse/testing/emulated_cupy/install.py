"""Put the emulated CuPy in ``sys.modules``, so that ``import cupy`` finds it.

    from tinyse.testing.emulated_cupy import install
    install()                       # before tinyse is used

``tinyse.backend`` runs ``import cupy`` once, when it is first imported, so the emulator must be in
``sys.modules`` before that. But Python imports a package's parents first: importing this package
imports ``tinyse``, and ``tinyse/__init__.py`` imports ``tinyse.backend``, whose ``import cupy`` has then
found nothing (or the real CuPy). So ``install()`` also forgets the tinyse modules imported so far
(all but this package's own): the next ``import tinyse...`` runs them again, and ``tinyse.backend``'s
``import cupy`` now finds the emulator. Objects made from the forgotten modules (a Tensor made
before ``install()``) belong to the old classes: install first, then use tinyse. The entry points
do: tests/conftest.py (TINYSE_EMULATE_GPU=1) and ``python -m tinyse.testing.emulated_cupy``.
"""
import importlib
import os
import sys

from .cpu_compiler import compiler_path
from .namespace import modules

ENV_VAR = "TINYSE_EMULATE_GPU"
OWN_PACKAGE = __name__.rsplit(".", 1)[0]  # tinyse.testing.emulated_cupy


def requested():
    """True when the environment asks for the emulated GPU (TINYSE_EMULATE_GPU set, and not to 0)."""
    return os.environ.get(ENV_VAR, "") not in ("", "0")


def compiler_available():
    """Whether a C++ compiler is there to run ElementwiseKernels (without one, GPU tests should skip)."""
    return compiler_path() is not None


def installed():
    return sys.modules.get("cupy") is modules()["cupy"]


def install():
    """Make ``import cupy`` and ``import cupyx`` (and their submodules) give the emulator."""
    sys.modules.update(modules())
    backend = sys.modules.get("tinyse.backend")
    if backend is not None and backend.cupy is not modules()["cupy"]:
        _forget_tinyse()


def uninstall():
    """Take the emulator out of ``sys.modules`` (tinyse modules imported since keep the emulator)."""
    for name, module in modules().items():
        if sys.modules.get(name) is module:
            del sys.modules[name]


def _forget_tinyse():
    """Drop every tinyse module but this package's, then import tinyse.testing again and hang this package on it."""
    for name in list(sys.modules):
        ours = name == OWN_PACKAGE or name.startswith(OWN_PACKAGE + ".")
        if (name == "tinyse" or name.startswith("tinyse.")) and not ours:
            del sys.modules[name]
    importlib.import_module("tinyse.testing").emulated_cupy = sys.modules[OWN_PACKAGE]
