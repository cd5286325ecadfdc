"""``python -m tinyse.bench``: set BLAS's threads to ``--threads``, then ``main()``.

BLAS reads its thread variables once, when NumPy is imported, before any of the bench runs; so this
entry re-executes itself with them set when they differ (``ensure_blas_threads``).
"""
import os
import sys

from tinyse.bench.cli import main, parse_args
from tinyse.bench.machine import BLAS_ENV, module_command, thread_env


def ensure_blas_threads(argv):
    """Re-execute ``python -m tinyse.bench argv`` with the BLAS thread variables equal to ``--threads``,
    unless they already are: BLAS reads them once, when NumPy is imported, before any of this runs."""
    threads = str(parse_args(argv).threads)
    if any(os.environ.get(var) != threads for var in BLAS_ENV):
        command = [*module_command("tinyse.bench"), *argv]  # on the emulated CuPy again if this runs on it
        os.execve(sys.executable, command, thread_env(threads))


if __name__ == "__main__":
    ensure_blas_threads(sys.argv[1:])
    main()
