"""Peak memory of an SE-ResNet-20 training step (MEMORY_STEPS steps), each library alone in a fresh process.

    CPU: the process's peak RSS (ru_maxrss; VmHWM on Linux, see ``max_rss_bytes``), absolute and
         above its RSS after imports and model building
    GPU: the CuPy memory pool's bytes (it keeps what it ever held) / torch.cuda.max_memory_allocated

``measure_memory`` starts ``python -m tinyse.bench --memory-child LIBRARY`` once per library; that
process runs ``memory_child`` and prints its result as one JSON line. The tinyse process never imports
torch (its result says so in ``torch_imported``).
"""
import json
import os
import subprocess
import sys

from tinyse.backend import module_for_device
from tinyse.bench.machine import module_command, thread_env
from tinyse.bench.rows import LIBRARIES, tinyse_model, torch_model
from tinyse.bench.timing import synchronizer

MEMORY_MODEL, MEMORY_STEPS = "se_resnet20", 3


def current_rss_bytes():
    """The resident set size now (Linux's /proc), or the peak so far where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return max_rss_bytes()


def max_rss_bytes():
    """The peak resident set size of this process: getrusage's ru_maxrss, read from /proc where it can be.

    On Linux a process started by fork + exec inherits its parent's ru_maxrss (the kernel keeps the
    larger of the two across exec), so a child of a big parent reports the parent's peak; VmHWM in
    /proc/self/status is the peak of the process's own memory since exec.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # in kB
    except (OSError, ValueError):
        pass
    import resource  # Unix only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def memory_child(library, device, batch):
    """In a fresh process: build the MEMORY_MODEL training step of ``library``, run it MEMORY_STEPS times,
    and return its peak memory. Only ``python -m tinyse.bench --memory-child`` calls this."""
    make = {"tinyse": tinyse_model, "torch": torch_model}[library]
    step = make(MEMORY_MODEL, (batch, 3, 32, 32), device, True)
    sync = synchronizer(library, device)
    result = {"library": library, "model": MEMORY_MODEL, "batch": batch, "steps": MEMORY_STEPS, "device": device}
    if device == "cpu":
        baseline = current_rss_bytes()
        for _ in range(MEMORY_STEPS):
            step()
        peak = max_rss_bytes()
        result.update(measure="max RSS", peak_bytes=peak, baseline_bytes=baseline)
    elif library == "tinyse":
        pool = module_for_device("gpu").get_default_memory_pool()
        baseline = pool.total_bytes()
        for _ in range(MEMORY_STEPS):
            step()
            sync()
        # the pool keeps every block it ever held (until asked to free them): its size now is its peak
        result.update(measure="CuPy memory pool bytes", peak_bytes=pool.total_bytes(), baseline_bytes=baseline)
    else:
        import torch

        cuda = torch.cuda
        cuda.reset_peak_memory_stats()
        baseline = cuda.memory_allocated()
        for _ in range(MEMORY_STEPS):
            step()
            sync()
        result.update(measure="torch.cuda.max_memory_allocated", peak_bytes=cuda.max_memory_allocated(),
                      baseline_bytes=baseline, peak_reserved_bytes=cuda.max_memory_reserved())
    result["above_baseline_bytes"] = result["peak_bytes"] - result["baseline_bytes"]
    result["torch_imported"] = "torch" in sys.modules
    return result


def measure_memory(device, batch, threads, libraries=LIBRARIES):
    """{library: memory_child's result}, each from its own fresh ``python -m tinyse.bench`` process (on the
    emulated CuPy when this process runs on it)."""
    results = {}
    for library in libraries:
        command = [*module_command("tinyse.bench"), "--memory-child", library,
                   "--device", device, "--batch", str(batch), "--threads", str(threads)]
        done = subprocess.run(command, check=False, capture_output=True, text=True, env=thread_env(threads))
        if done.returncode != 0:
            raise RuntimeError(f"the {library} memory process failed:\n{done.stderr[-3000:]}")
        results[library] = json.loads(done.stdout.strip().splitlines()[-1])
    return results
