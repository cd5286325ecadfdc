"""The command line of ``python -m tinyse.bench``: its options, the run of the chosen rows, ``main()``."""
import argparse
import json
import os
import re
import sys

from tinyse.backend import module_for_device
from tinyse.bench.epoch import torch_epoch
from tinyse.bench.machine import blas_kernels, blas_threads, cupy_is_emulated, header, torch_device, torch_reaches
from tinyse.bench.peak_memory import MEMORY_MODEL, measure_memory, memory_child
from tinyse.bench.report import format_report
from tinyse.bench.rows import LIBRARIES, build_rows
from tinyse.bench.timing import SETTLE_S, groups, measure, se_overhead, synchronizers
from tinyse.memory import keep_freed_memory

# (warm-up calls, timed repeats) per library, by kind of row
DEFAULT_COUNTS = {"op": (2, 7), "model": (1, 5)}
QUICK_COUNTS = (1, 3)


def parse_args(argv=None):
    from tinyse import bench  # the package's docstring opens with the title and the examples

    title_and_examples = "\n\n".join(bench.__doc__.split("\n\n")[:2])
    parser = argparse.ArgumentParser(prog="python -m tinyse.bench", description=title_and_examples,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--device", default="cpu", choices=("cpu", "gpu"))
    add("--threads", type=int, default=os.cpu_count(),
        help="threads for torch and NumPy's BLAS (default os.cpu_count(), here %(default)s)")
    add("--only", metavar="PATTERN",
        help="run only the rows whose 'name NxCxHxW' matches this regular expression ('memory' for the memory, "
             "'launches' for the kernel launches counted on the emulated GPU)")
    add("--repeats", type=int, help="timed runs per library (default 7 for ops, 5 for models)")
    add("--warmup", type=int, help="untimed runs per library first (default 2 for ops, 1 for models)")
    add("--quick", action="store_true", help="1 warm-up and 3 repeats everywhere: a smoke run, not numbers")
    add("--batch", type=int, default=128, help="batch of the ops and the training step (eval: twice it)")
    add("--settle", type=float,
        help=f"seconds of untimed calls before each timed one (default {SETTLE_S} on the CPU, 0 on the GPU)")
    add("--no-memory", action="store_true", help="skip the peak-memory processes")
    add("--json", metavar="FILE", help="also write the whole report (every time, the header, memory) here")
    add("--torch-epoch", metavar="MODEL",
        help="instead of the table: time PyTorch training MODEL for one CIFAR-10 epoch, to compare with "
             "`python -m tinyse.train --model MODEL --epochs 1 --val-split 0`")
    add("--data-dir", help="for --torch-epoch: where CIFAR-10 is (default: $TINYSE_DATA, as tinyse.train)")
    add("--memory-child", choices=LIBRARIES, help=argparse.SUPPRESS)  # the fresh process of measure_memory
    args = parser.parse_args(argv)
    if args.settle is None:
        args.settle = SETTLE_S if args.device == "cpu" and not args.quick else 0.0
    return args


def counts(args):
    """{kind: warm-up calls}, {kind: timed repeats} from the defaults, --quick and the explicit options."""
    warmup, repeats = {}, {}
    for kind, (default_warmup, default_repeats) in DEFAULT_COUNTS.items():
        if args.quick:
            default_warmup, default_repeats = QUICK_COUNTS
        warmup[kind] = default_warmup if args.warmup is None else args.warmup
        repeats[kind] = default_repeats if args.repeats is None else args.repeats
    return warmup, repeats


def run(args, libraries=LIBRARIES):
    """Time the chosen rows and measure memory; returns the report (what --json writes).
    ``libraries``: those to time (tinyse alone on a GPU that torch cannot reach)."""
    warmup, repeats = counts(args)
    syncs = synchronizers(args.device, libraries)
    pattern = re.compile(args.only, re.IGNORECASE) if args.only else None
    rows = [row for row in build_rows(args.batch, args.device) if pattern is None or pattern.search(row.label)]
    with_memory = not args.no_memory and (pattern is None or pattern.search("memory"))
    with_launches = args.device == "gpu" and (pattern is None or pattern.search("launches"))
    report = {
        "header": header(args.device, args.threads, libraries),
        "settings": {"batch": args.batch, "eval_batch": 2 * args.batch, "dtype": "float32", "only": args.only,
                     "warmup": warmup, "repeats": repeats, "settle_s": args.settle},
        "rows": [],
    }
    done = 0
    for batch in groups(rows):
        labels = " + ".join(row.label for row in batch)
        print(f"[{done + 1}/{len(rows)}] {labels} ...", end="", file=sys.stderr, flush=True)
        results = measure(batch, warmup[batch[0].kind], repeats[batch[0].kind], syncs, args.settle)
        report["rows"] += results
        done += len(batch)
        times = (", ".join(f"{library} {result[library]['median_s'] * 1e3:.2f} ms" for library in libraries)
                 for result in results)
        print(" " + "; ".join(times), file=sys.stderr, flush=True)
    report["se_overhead"] = se_overhead(report["rows"])
    if with_memory:
        print(f"memory: {MEMORY_MODEL} training step, one fresh process per library ...", file=sys.stderr, flush=True)
    report["memory"] = measure_memory(args.device, args.batch, args.threads, libraries) if with_memory else None
    report["launches"] = launch_counts(MEMORY_MODEL) if with_launches else None
    return report


def launch_counts(model):
    """{"counted": True, "train step": counts, "eval fwd": counts} of ``model`` (``launches.count_launches``) on
    the emulated CuPy; {"counted": False} on a real GPU: CuPy has no counter of kernel launches."""
    if not cupy_is_emulated():
        return {"counted": False}
    # imported here, not above: ``python -m tinyse.bench.launches`` imports this package first, and runpy warns
    # when the module it is asked to run was loaded by then
    from tinyse.bench.launches import COUNTING_BATCH, count_launches

    print(f"kernel launches: {model} training step and eval forward, batch {COUNTING_BATCH} ...", file=sys.stderr,
          flush=True)
    return {"counted": True, "train step": count_launches(model, train=True),
            "eval fwd": count_launches(model, train=False)}


def main(argv=None):
    """Run the bench and print its table; returns the report. See the package's docstring."""
    # glibc keeps the memory NumPy frees for the next step (tinyse/memory.py); the memory child
    # processes run main() too, so their peaks are measured with the same setting
    keep_freed_memory()
    args = parse_args(argv)
    if args.memory_child:  # a fresh process of measure_memory: one JSON line on stdout
        if args.memory_child == "torch":
            import torch

            torch.set_num_threads(args.threads)
        result = memory_child(args.memory_child, args.device, args.batch)
        print(json.dumps(result))
        return result
    try:
        module_for_device(args.device)  # tinyse.backend's clear error when there is no CuPy or no GPU
        if args.torch_epoch:
            torch_device(args.device)  # the same for torch
    except RuntimeError as error:
        sys.exit(f"error: {error}")
    libraries = LIBRARIES
    if not torch_reaches(args.device):  # a CPU build of torch: time tinyse alone rather than nothing
        libraries = ("tinyse",)
        print("torch: no CUDA here, tinyse's column only", file=sys.stderr, flush=True)
    blas, source = blas_threads()
    if blas != args.threads:
        print(f"warning: NumPy's BLAS runs {blas if blas is not None else 'its default number of'} threads "
              f"({source}), not --threads {args.threads}: it fixed them when NumPy was imported. "
              "`python -m tinyse.bench` sets them itself.", file=sys.stderr)
    kernels, kernels_source = blas_kernels()
    if args.device == "cpu" and os.environ.get("OPENBLAS_CORETYPE"):
        print(f"warning: {kernels_source} holds NumPy's OpenBLAS to its {kernels or '?'} kernels; to time the "
              "ones it picks for this CPU, unset it (and OPENBLAS_L2_SIZE) for this command", file=sys.stderr)
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    if args.torch_epoch:
        try:
            seconds, images = torch_epoch(args.torch_epoch, args.device, args.data_dir, args.batch)
        finally:
            torch.set_num_threads(previous_threads)
        print(f"torch {torch.__version__}, {args.threads} threads, {args.device}: {args.torch_epoch} trained one "
              f"CIFAR-10 epoch ({images:,} images, batch {args.batch}) in {seconds:.1f} s "
              f"({images / seconds:.0f} img/s)")
        return {"model": args.torch_epoch, "seconds": seconds, "images": images}
    try:
        report = run(args, libraries)
    finally:
        torch.set_num_threads(previous_threads)  # main() may run inside another program (the tests)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)
    return report
