"""Run a module with the emulated CuPy as ``cupy``: a GPU command line, on the CPU.

    python -m tinyse.testing.emulated_cupy tinyse.train --device gpu --epochs 1
    python -m tinyse.testing.emulated_cupy --counts tinyse.demo --device gpu

installs the emulator, then runs the module as ``python -m MODULE ARGS`` would (``runpy``).
``--counts`` prints the emulator's counters (kernel launches, transfers, synchronisations) to
stderr when the module ends.
"""
import runpy
import sys

from .counters import counters
from .install import compiler_available, install

USAGE = "usage: python -m tinyse.testing.emulated_cupy [--counts] MODULE [ARGS...]"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    show_counts = bool(argv) and argv[0] == "--counts"
    if show_counts:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0 if argv else 2
    if not compiler_available():
        sys.exit("the emulated CuPy needs a C++ compiler (g++ or $CXX) to run CUDA kernels on the CPU")
    install()
    module, *args = argv
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        if show_counts:
            print(f"emulated CuPy counters: {counters.snapshot()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
