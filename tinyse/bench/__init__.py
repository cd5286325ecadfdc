"""Time tinyse against PyTorch, op by op and model by model: ``python -m tinyse.bench``.

    python -m tinyse.bench                               # every row, on the CPU, one thread per core
    python -m tinyse.bench --threads 1 --only conv       # rows whose name matches a regular expression
    python -m tinyse.bench --device gpu --json gpu.json  # the same table against torch on CUDA, saved
    python -m tinyse.bench --quick --batch 8             # a smoke run: 1 warm-up, 3 repeats, small batches
    python -m tinyse.bench --torch-epoch se_resnet20     # PyTorch's time for one CIFAR-10 epoch

A benchmark, not a test: it prints numbers and asserts nothing about them.
Both libraries run float32, NCHW, on the same device with the same threads. Each row of the table is an
op at one of SE-ResNet-20's three stage shapes, or a whole model's training step or eval forward,
against a PyTorch twin with the same layers and weights. The libraries take turns, and each row reports
the median time of each, their ratio (tinyse / torch: above 1, tinyse is slower) and images per second;
below the table, what SE costs each library (SE-ResNet-20 / ResNet-20) and the peak memory of a
training step.

    rows.py         what is measured: the rows, and the tinyse and torch callable of each
    timing.py       the alternating timing loop, medians and ratios, the SE overhead
    peak_memory.py  the peak memory of a training step, each library in a fresh process
    machine.py      what the numbers were measured on (CPU, BLAS and its threads, GPU), torch's device
    report.py       the table as printed
    epoch.py        --torch-epoch: PyTorch's time for one CIFAR-10 epoch, to compare with tinyse.train
    train_torch.py  python -m tinyse.bench.train_torch: tinyse.train's recipes (--recipe fast) trained by PyTorch
    cli.py          the options, the run of the chosen rows, main()
    __main__.py     python -m tinyse.bench: sets BLAS's threads, then main()

torch is imported only inside the functions that need it (its twins come from
``tinyse.testing.twins``), so the tinyse half of the bench and its memory process never load it.
"""
from tinyse.bench.cli import main, parse_args, run
from tinyse.bench.rows import MODELS, Row, build_rows, torch_twin_model
from tinyse.bench.timing import groups, measure, summarise, time_alternating

__all__ = ["MODELS", "Row", "build_rows", "groups", "main", "measure", "parse_args", "run", "summarise",
           "time_alternating", "torch_twin_model"]
