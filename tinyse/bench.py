"""Time tinyse against PyTorch, op by op and model by model: ``python -m tinyse.bench``.

    python -m tinyse.bench                               # every row, on the CPU, one thread per core
    python -m tinyse.bench --threads 1 --only conv       # rows whose name matches a regular expression
    python -m tinyse.bench --device gpu --json gpu.json  # the same table against torch on CUDA, saved
    python -m tinyse.bench --quick --batch 8             # a smoke run: 1 warm-up, 3 repeats, small batches
    python -m tinyse.bench --torch-epoch se_resnet20     # PyTorch's time for one CIFAR-10 epoch

A benchmark, not a test: it prints numbers and asserts nothing about them.
Both libraries run float32, NCHW, on the same device with the same threads.

Rows
    ops, at SE-ResNet-20's three stage shapes (N, C, H, W) = (128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8):
        conv3x3 fwd             3x3 conv, C -> C, stride 1, pad 1, no bias; forward under no_grad
        conv3x3 fwd+bwd         the same conv, forward then backward
        batchnorm fwd+bwd       BatchNorm2d in training mode
        relu fwd+bwd
        se_block fwd+bwd        tinyse.nn.SEBlock(C, reduction=16) against
                                avgpool -> Linear -> ReLU -> Linear -> sigmoid -> scale in torch
        global_avgpool fwd+bwd  (N, C, H, W) -> (N, C)
    A backward starts from a fixed random upstream gradient, with every gradient cleared first.
    models, tinyse.models.create(name, num_classes=10, seed=0) against a PyTorch twin with the same
    layers and the same initial weights (``torch_twin_model``):
        <model> train step      forward, cross-entropy, backward, SGD (momentum 0.9, weight decay 1e-4), batch 128
        <model> eval fwd        forward in eval mode under no_grad, batch 256
    The four calls of one kind of model row (both models, both libraries) alternate in one loop.
    derived: SE overhead = SE-ResNet-20 time / ResNet-20 time, for each library: the median over rounds
        of the ratio of the two models' times in the same round (a paired measure: a machine that is
        slower for a while slows both models of a round alike).
    memory: an SE-ResNet-20 training step (3 steps), each library alone in a fresh process
        CPU: the process's peak RSS (ru_maxrss; VmHWM on Linux, see ``max_rss_bytes``), absolute and
             above its RSS after imports and model building
        GPU: the CuPy memory pool's bytes (it keeps what it ever held) / torch.cuda.max_memory_allocated

Timing: after warm-up calls, the libraries run alternately (tinyse, torch, tinyse, torch, ...), so that
a machine that slows down (another job, heat) slows both alike, and the MEDIAN of the repeats is reported.
On the CPU each timed call follows untimed calls of the same library for ``--settle`` seconds, so that
the other library's idle threads, still spinning, have stopped stealing the cores.
On the GPU each call is bracketed by device synchronisations. ratio = tinyse / torch: above 1, tinyse is
slower. img/s = batch / median time.

Threads: ``--threads N`` (default os.cpu_count(), what both libraries pick by themselves) goes to
torch.set_num_threads and, for NumPy's BLAS, to OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS.
BLAS reads those once, when NumPy is imported, so ``python -m tinyse.bench`` re-executes itself with them
set (``ensure_blas_threads``); ``main()`` called from Python cannot change them and warns when they differ.
The threads BLAS really uses come from threadpoolctl when it is installed, else from those variables.
"""
import argparse
import datetime
import functools
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import tinyse.functional as F
from tinyse import models, nn
from tinyse.backend import module_for_device, to_device
from tinyse.data import BatchLoader, load_cifar
from tinyse.optim import SGD
from tinyse.progress import Progress
from tinyse.tensor import Tensor, no_grad

LIBRARIES = ("tinyse", "torch")
STAGES = ((16, 32), (32, 16), (64, 8))  # (channels, height = width) of SE-ResNet-20's three stages
OPS = (  # (layer, with backward?)
    ("conv3x3", False),
    ("conv3x3", True),
    ("batchnorm", True),
    ("relu", True),
    ("se_block", True),
    ("global_avgpool", True),
)
MODELS = ("resnet20", "se_resnet20")
MEMORY_MODEL, MEMORY_STEPS = "se_resnet20", 3
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4  # He et al.'s CIFAR recipe, as tinyse.train
# (warm-up calls, timed repeats) per library, by kind of row
DEFAULT_COUNTS = {"op": (2, 7), "model": (1, 5)}
QUICK_COUNTS = (1, 3)
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TINYSE_NUM_THREADS")
SETTLE_S = 0.25  # on the CPU, run each call untimed this long first: the other library's threads stop spinning


# --- the rows -----------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the table. ``make_tinyse()`` and ``make_torch()`` build the inputs and return the
    zero-argument callable that is timed (so building never counts)."""

    name: str
    shape: tuple  # the input (N, C, H, W)
    kind: str  # "op" or "model": picks the default warm-up and repeats
    make_tinyse: Callable[[], Callable[[], None]]
    make_torch: Callable[[], Callable[[], None]]
    group: str = ""  # rows of one non-empty group are timed together, in one alternating loop

    @property
    def label(self):
        return f"{self.name} {format_shape(self.shape)}"


def format_shape(shape):
    return "x".join(str(size) for size in shape)


def build_rows(batch=128, device="cpu"):
    """Every row of the table, in order: each op at the three stage shapes, then the models."""
    rows = []
    for layer, backward in OPS:
        for channels, size in STAGES:
            shape = (batch, channels, size, size)
            rows.append(Row(
                f"{layer} {'fwd+bwd' if backward else 'fwd'}", shape, "op",
                make_tinyse=functools.partial(tinyse_op, layer, shape, device, backward),
                make_torch=functools.partial(torch_op, layer, shape, device, backward),
            ))
    for train, suffix, shape in ((True, "train step", (batch, 3, 32, 32)), (False, "eval fwd", (2 * batch, 3, 32, 32))):
        for model in MODELS:
            rows.append(Row(
                f"{model} {suffix}", shape, "model",
                make_tinyse=functools.partial(tinyse_model, model, shape, device, train),
                make_torch=functools.partial(torch_model, model, shape, device, train), group=suffix,
            ))
    return rows


def random_input(shape, seed=0):
    """Standard-normal float32 values: the same array feeds both libraries."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def random_labels(count, classes=10):
    return np.random.default_rng(2).integers(0, classes, count)


def tinyse_layer(layer, channels):
    return {
        "conv3x3": lambda: nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False),
        "batchnorm": lambda: nn.BatchNorm2d(channels),
        "relu": nn.ReLU,
        "se_block": lambda: nn.SEBlock(channels, reduction=16),
        "global_avgpool": nn.GlobalAvgPool2d,
    }[layer]()


def torch_layer(layer, channels):
    twins = torch_twins()
    return {
        "conv3x3": lambda: twins.nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False),
        "batchnorm": lambda: twins.nn.BatchNorm2d(channels),
        "relu": twins.nn.ReLU,
        "se_block": lambda: twins.SEBlock(channels, reduction=16),
        "global_avgpool": twins.GlobalAvgPool,
    }[layer]()


def tinyse_op(layer, shape, device, backward):
    """layer(x) under no_grad, or forward and backward, for tinyse; returns the zero-argument callable."""
    module = tinyse_layer(layer, shape[1]).to(device)
    x = Tensor(to_device(random_input(shape), device), requires_grad=backward)
    if not backward:
        def forward():
            with no_grad():
                module(x)
        return forward
    with no_grad():
        grad_out = to_device(random_input(module(x).shape, seed=1), device)
    leaves = [x, *module.parameters()]

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None  # backward adds to .grad: start from nothing, as after zero_grad
        module(x).backward(grad_out)
    return forward_backward


def tinyse_model(name, shape, device, train):
    """A training step (train=True) or an eval-mode forward under no_grad, for tinyse."""
    model = models.create(name, num_classes=10, seed=0).to(device)
    images = Tensor(to_device(random_input(shape), device))
    if not train:
        model.eval()

        def forward():
            with no_grad():
                model(images)
        return forward
    labels = to_device(random_labels(shape[0]), device)
    optimizer = SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def step():
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def torch_op(layer, shape, device, backward):
    """The same as ``tinyse_op``, for torch."""
    torch = torch_twins().torch
    target = torch_device(device)
    module = torch_layer(layer, shape[1]).to(target)
    x = torch.from_numpy(random_input(shape)).to(target).requires_grad_(backward)
    if not backward:
        def forward():
            with torch.no_grad():
                module(x)
        return forward
    with torch.no_grad():
        grad_out = torch.from_numpy(random_input(tuple(module(x).shape), seed=1)).to(target)
    leaves = [x, *module.parameters()]

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        module(x).backward(grad_out)
    return forward_backward


def torch_model(name, shape, device, train):
    """The same as ``tinyse_model``, for torch (the model from ``torch_twin_model``)."""
    torch = torch_twins().torch
    target = torch_device(device)
    model = torch_twin_model(name).to(target)
    images = torch.from_numpy(random_input(shape)).to(target)
    if not train:
        model.eval()

        def forward():
            with torch.no_grad():
                model(images)
        return forward
    labels = torch.from_numpy(random_labels(shape[0])).to(target)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def step():
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


# --- a whole epoch -------------------------------------------------------------------------------
def torch_epoch(model_name, device, data_dir, batch, seed=0):
    """(seconds, images) for PyTorch to train ``model_name`` for one epoch of CIFAR-10 (all training images).

    The twin of ``python -m tinyse.train --model MODEL --epochs 1 --val-split 0``: the same data
    loader (tinyse's crops and flips, in the training loop's thread), batch, optimiser and lr.
    """
    torch = torch_twins().torch
    target = torch_device(device)
    data = load_cifar("cifar10", root=data_dir)
    loader = BatchLoader(data.train_images, data.train_labels, batch, data.mean, data.std, shuffle=True,
                         augment=True, seed=seed)
    model = torch_twin_model(model_name).to(target)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    progress = Progress(len(loader), f"torch {model_name}, one epoch")
    started = time.perf_counter()
    for images, labels in loader.batches(0):
        images, labels = torch.from_numpy(images.data).to(target), torch.from_numpy(labels).to(target)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress.update(loss=loss.item())
    synchronizer("torch", device)()
    progress.close()
    return time.perf_counter() - started, len(data.train_labels)


# --- the PyTorch twins --------------------------------------------------------------------------
@functools.cache
def torch_twins():
    """The PyTorch side: torch itself and twins of tinyse's layers, made on first use.

    torch is imported here and nowhere else, so the tinyse side of the bench (and its memory
    measurement) never loads it.
    """
    import torch
    from torch import nn as tnn

    class SEBlock(tnn.Module):
        """U * sigmoid(fc2(relu(fc1(avgpool(U))))), hidden width max(1, C // r): tinyse.nn.SEBlock's twin."""

        def __init__(self, channels, reduction=16):
            super().__init__()
            hidden = max(1, channels // reduction)
            self.fc1 = tnn.Linear(channels, hidden)
            self.fc2 = tnn.Linear(hidden, channels)

        def forward(self, u):
            s = torch.sigmoid(self.fc2(torch.relu(self.fc1(u.mean(dim=(2, 3))))))  # (N, C)
            return u * s[:, :, None, None]

    class GlobalAvgPool(tnn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))  # (N, C, H, W) -> (N, C)

    class ShortcutA(tnn.Module):
        """Subsample by the stride, zero-pad the new channels half before, half after (tinyse's option A)."""

        def __init__(self, in_channels, out_channels, stride):
            super().__init__()
            self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

        def forward(self, x):
            extra = self.out_channels - self.in_channels
            x = x[:, :, :: self.stride, :: self.stride]
            return torch.nn.functional.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))

    class BasicBlock(tnn.Module):
        """relu(SE(bn2(conv2(relu(bn1(conv1(x)))))) + shortcut(x)): SE in the "standard" place, or none."""

        def __init__(self, in_channels, out_channels, stride, se):
            super().__init__()
            self.conv1 = tnn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
            self.bn1 = tnn.BatchNorm2d(out_channels)
            self.conv2 = tnn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
            self.bn2 = tnn.BatchNorm2d(out_channels)
            same_shape = stride == 1 and in_channels == out_channels
            self.shortcut = tnn.Identity() if same_shape else ShortcutA(in_channels, out_channels, stride)
            self.se = SEBlock(out_channels) if se else None

        def forward(self, x):
            branch = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            if self.se is not None:
                branch = self.se(branch)
            return torch.relu(branch + self.shortcut(x))

    class CifarResNet(tnn.Module):
        """stem -> three stages of ``blocks`` basic blocks (16, 32, 64 channels) -> pool -> fc."""

        def __init__(self, blocks, se, num_classes=10):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 16, 3, padding=1, bias=False)
            self.bn1 = tnn.BatchNorm2d(16)
            channels = 16
            for stage in (1, 2, 3):
                out, units = 16 * 2 ** (stage - 1), []
                for i in range(blocks):
                    units.append(BasicBlock(channels, out, 2 if stage > 1 and i == 0 else 1, se))
                    channels = out
                setattr(self, f"layer{stage}", tnn.Sequential(*units))
            self.pool = GlobalAvgPool()
            self.fc = tnn.Linear(channels, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            return self.fc(self.pool(self.layer3(self.layer2(self.layer1(x)))))

    return types.SimpleNamespace(
        torch=torch, nn=tnn, SEBlock=SEBlock, GlobalAvgPool=GlobalAvgPool, CifarResNet=CifarResNet
    )


def torch_twin_model(name):
    """The PyTorch twin of tinyse's ``name`` (resnet<depth> or se_resnet<depth>, basic blocks), holding the
    initial weights of ``models.create(name, seed=0)``; the strict load proves the layers are the same."""
    match = re.fullmatch(r"(se_)?resnet(\d+)", name)
    if not match or (int(match[2]) - 2) % 6:
        raise ValueError(f"no PyTorch twin for {name!r}: only basic-block CIFAR ResNets (resnet20, se_resnet20, ...)")
    twins = torch_twins()
    model = twins.CifarResNet(blocks=(int(match[2]) - 2) // 6, se=bool(match[1]))
    source = models.create(name, num_classes=10, seed=0)
    state = source.state_dict()
    model.load_state_dict({key: twins.torch.from_numpy(np.asarray(value)) for key, value in state.items()})
    return model


# --- devices and threads ------------------------------------------------------------------------
def torch_device(device):
    """torch's name for ``device``, or a clear error when torch cannot reach it."""
    if device == "gpu":
        if not torch_twins().torch.cuda.is_available():
            raise RuntimeError("device 'gpu' asked for, but this torch build sees no CUDA device")
        return "cuda"
    return "cpu"


def synchronizer(library, device):
    """A function that waits until ``library``'s queued work on ``device`` is done (a no-op on the CPU)."""
    if device == "cpu":
        return lambda: None
    if library == "tinyse":
        return module_for_device("gpu").cuda.Device().synchronize  # tinyse.backend: the one place with cupy
    torch_device(device)
    return torch_twins().torch.cuda.synchronize


def synchronizers(device):
    return {library: synchronizer(library, device) for library in LIBRARIES}


def thread_env(threads):
    """A copy of the environment with every BLAS thread variable set to ``threads``."""
    return {**os.environ, **{var: str(threads) for var in BLAS_ENV}}


def ensure_blas_threads(argv):
    """Re-execute ``python -m tinyse.bench argv`` with the BLAS thread variables equal to ``--threads``,
    unless they already are: BLAS reads them once, when NumPy is imported, before any of this runs."""
    threads = str(parse_args(argv).threads)
    if any(os.environ.get(var) != threads for var in BLAS_ENV):
        command = [sys.executable, "-m", "tinyse.bench", *argv]
        os.execve(sys.executable, command, thread_env(threads))


def blas_threads():
    """(threads NumPy's BLAS uses or None, where that number comes from)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        pools = [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]
        if pools:
            return pools[0]["num_threads"], "threadpoolctl"
    for var in BLAS_ENV:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]), var
    return None, "no thread variable set: the BLAS default (usually every core)"


def blas_name():
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas.get('version', '')}".strip()
    except (KeyError, TypeError, ValueError):  # older NumPy (no mode=), or a build that does not say
        return "unknown"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names(device):
    if device != "gpu":
        return None
    cupy = module_for_device("gpu")
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    return {"tinyse": name.decode() if isinstance(name, bytes) else name,
            "torch": torch_twins().torch.cuda.get_device_name()}


def header(device, threads):
    """What the numbers were measured on."""
    torch = torch_twins().torch
    blas, source = blas_threads()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_name(),
        "blas_threads": blas,
        "blas_threads_source": source,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "threads": threads,
        "device": device,
        "gpu": gpu_names(device),
    }


# --- timing -------------------------------------------------------------------------------------
def time_alternating(calls, warmup, repeats, syncs=None, clock=time.perf_counter, settle=0.0):
    """Call the callables in turn, round after round, and time each call.

    calls    {key: zero-argument callable}, run in this order within a round
    syncs    {key: zero-argument callable} waiting for the device before each clock read
    settle   before each timed call, repeat the same call untimed until this many seconds have
             passed. After a parallel region, OpenBLAS's and OpenMP's worker threads keep spinning
             on the cores for up to about 0.2 s, and a call of the other library that starts
             meanwhile runs several times slower (measured: a torch conv timed right after a NumPy
             matmul took 3x its time alone). Resting instead (sleep) does not work: the threads,
             and on a virtual machine the cores, go to sleep, and the timed call pays to wake them.
    Returns {key: [seconds of each of the ``repeats`` timed calls]}; the first ``warmup``
    rounds are run the same way and thrown away.
    """
    syncs = syncs or {}
    times = {key: [] for key in calls}
    for round_index in range(warmup + repeats):
        for key, call in calls.items():
            sync = syncs.get(key, lambda: None)
            sync()
            settle_until = clock() + settle
            while settle and clock() < settle_until:
                call()
                sync()
            start = clock()
            call()
            sync()
            elapsed = clock() - start
            if round_index >= warmup:
                times[key].append(elapsed)
    return times


def summarise(name, shape, times):
    """One row of results from the times of each library: medians, ratio, images per second."""
    result = {"name": name, "shape": list(shape), "batch": shape[0]}
    for library, seconds in times.items():
        median = statistics.median(seconds)
        result[library] = {"times_s": seconds, "median_s": median, "images_per_s": shape[0] / median}
    result["ratio"] = result["tinyse"]["median_s"] / result["torch"]["median_s"]
    return result


def measure(rows, warmup, repeats, syncs, settle=0.0):
    """Time the rows together: each round calls tinyse then torch for the first row, then for the next ..."""
    calls = {(index, library): make() for index, row in enumerate(rows)
             for library, make in (("tinyse", row.make_tinyse), ("torch", row.make_torch))}
    times = time_alternating(calls, warmup, repeats, {key: syncs[key[1]] for key in calls}, settle=settle)
    results = [summarise(row.name, row.shape, {library: times[index, library] for library in LIBRARIES})
               for index, row in enumerate(rows)]
    del calls
    gc.collect()  # free these rows' arrays before the next ones are built
    return results


def groups(rows):
    """The rows as lists to time together: consecutive rows of one non-empty ``group``, every other row alone."""
    batches = []
    for row in rows:
        if batches and row.group and batches[-1][-1].group == row.group:
            batches[-1].append(row)
        else:
            batches.append([row])
    return batches


def se_overhead(rows):
    """For each library, the median over rounds of SE-ResNet-20's time / ResNet-20's time in that round,
    for the kinds of model row where both were timed together."""
    by_name = {row["name"]: row for row in rows}
    overhead = {}
    for suffix in ("train step", "eval fwd"):
        plain, se = by_name.get(f"resnet20 {suffix}"), by_name.get(f"se_resnet20 {suffix}")
        if plain and se:
            overhead[suffix] = {
                library: statistics.median(se_s / plain_s for se_s, plain_s in
                                           zip(se[library]["times_s"], plain[library]["times_s"], strict=True))
                for library in LIBRARIES
            }
    return overhead


# --- memory ------------------------------------------------------------------------------------
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
        cuda = torch_twins().torch.cuda
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


def measure_memory(device, batch, threads):
    """{library: memory_child's result}, each from its own fresh ``python -m tinyse.bench`` process."""
    results = {}
    for library in LIBRARIES:
        command = [sys.executable, "-m", "tinyse.bench", "--memory-child", library,
                   "--device", device, "--batch", str(batch), "--threads", str(threads)]
        done = subprocess.run(command, check=False, capture_output=True, text=True, env=thread_env(threads))
        if done.returncode != 0:
            raise RuntimeError(f"the {library} memory process failed:\n{done.stderr[-3000:]}")
        results[library] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


# --- output -------------------------------------------------------------------------------------
def mib(count):
    return f"{count / 2**20:.1f} MiB"


def format_report(report):
    """The header, the table, the derived lines and the memory, as printed."""
    info, settings = report["header"], report["settings"]
    blas_threads_text = info["blas_threads"] if info["blas_threads"] is not None else "?"
    gpu = f" ({info['gpu']['tinyse']})" if info["gpu"] else ""
    warmup, repeats = settings["warmup"], settings["repeats"]
    lines = [
        f"tinyse vs PyTorch  {info['date']}",
        f"machine   {info['machine']}, {info['cores']} cores ({info['platform']})",
        f"numpy     {info['numpy']}, BLAS {info['blas']}, {blas_threads_text} threads ({info['blas_threads_source']})",
        f"torch     {info['torch']}, {info['torch_threads']} threads (eager, NCHW)",
        f"device    {info['device']}{gpu}, float32, --threads {info['threads']}",
        f"timing    median of {repeats['op']} (ops) / {repeats['model']} (models) alternating runs, "
        + f"after {warmup['op']} / {warmup['model']} warm-up",
        "",
    ]
    columns = (f"{'row':<24}{'input':>15}{'tinyse ms':>12}{'torch ms':>11}{'ratio':>8}"
               f"{'tinyse img/s':>14}{'torch img/s':>13}")
    lines += [columns, "-" * len(columns)]
    for row in report["rows"]:
        ours, theirs = row["tinyse"], row["torch"]
        lines.append(
            f"{row['name']:<24}{format_shape(row['shape']):>15}{ours['median_s'] * 1e3:>12.2f}"
            f"{theirs['median_s'] * 1e3:>11.2f}{row['ratio']:>8.2f}"
            f"{ours['images_per_s']:>14,.0f}{theirs['images_per_s']:>13,.0f}"
        )
    for suffix, overhead in report["se_overhead"].items():
        lines.append(f"SE overhead, se_resnet20 / resnet20 {suffix} (median of the rounds' ratios): "
                     f"tinyse {overhead['tinyse']:.3f}x, torch {overhead['torch']:.3f}x")
    if report["memory"]:
        first = report["memory"]["tinyse"]
        title = f"peak memory of a {first['model']} training step, batch {first['batch']}"
        lines += ["", f"{title} ({first['steps']} steps, each library in a fresh process):"]
        for library, memory in report["memory"].items():
            text = f"  {library:<7}{memory['measure']} {mib(memory['peak_bytes'])}"
            if "peak_reserved_bytes" in memory:
                text += f" (reserved {mib(memory['peak_reserved_bytes'])})"
            if memory["device"] == "cpu":
                text += f", {mib(memory['above_baseline_bytes'])} above the {mib(memory['baseline_bytes'])}"
                text += " after imports and model building"
            else:
                text += f", {mib(memory['above_baseline_bytes'])} above the model and data"
            lines.append(text)
    return "\n".join(lines)


# --- the command line ---------------------------------------------------------------------------
def parse_args(argv=None):
    title_and_examples = "\n\n".join(__doc__.split("\n\n")[:2])
    parser = argparse.ArgumentParser(prog="python -m tinyse.bench", description=title_and_examples,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--device", default="cpu", choices=("cpu", "gpu"))
    add("--threads", type=int, default=os.cpu_count(),
        help="threads for torch and NumPy's BLAS (default os.cpu_count(), here %(default)s)")
    add("--only", metavar="PATTERN",
        help="run only the rows whose 'name NxCxHxW' matches this regular expression ('memory' for the memory)")
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


def run(args):
    """Time the chosen rows and measure memory; returns the report (what --json writes)."""
    warmup, repeats = counts(args)
    syncs = synchronizers(args.device)
    pattern = re.compile(args.only, re.IGNORECASE) if args.only else None
    rows = [row for row in build_rows(args.batch, args.device) if pattern is None or pattern.search(row.label)]
    with_memory = not args.no_memory and (pattern is None or pattern.search("memory"))
    report = {
        "header": header(args.device, args.threads),
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
        print(" " + "; ".join(f"tinyse {result['tinyse']['median_s'] * 1e3:.2f} ms, torch "
                              f"{result['torch']['median_s'] * 1e3:.2f} ms" for result in results),
              file=sys.stderr, flush=True)
    report["se_overhead"] = se_overhead(report["rows"])
    if with_memory:
        print(f"memory: {MEMORY_MODEL} training step, one fresh process per library ...", file=sys.stderr, flush=True)
    report["memory"] = measure_memory(args.device, args.batch, args.threads) if with_memory else None
    return report


def main(argv=None):
    """Run the bench and print its table; returns the report. See the module docstring."""
    args = parse_args(argv)
    if args.memory_child:  # a fresh process of measure_memory: one JSON line on stdout
        if args.memory_child == "torch":
            torch_twins().torch.set_num_threads(args.threads)
        result = memory_child(args.memory_child, args.device, args.batch)
        print(json.dumps(result))
        return result
    try:
        module_for_device(args.device)  # tinyse.backend's clear error when there is no CuPy or no GPU
        torch_device(args.device)
    except RuntimeError as error:
        sys.exit(f"error: {error}")
    blas, source = blas_threads()
    if blas != args.threads:
        print(f"warning: NumPy's BLAS runs {blas if blas is not None else 'its default number of'} threads "
              f"({source}), not --threads {args.threads}: it fixed them when NumPy was imported. "
              "`python -m tinyse.bench` sets them itself.", file=sys.stderr)
    torch = torch_twins().torch
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
        report = run(args)
    finally:
        torch.set_num_threads(previous_threads)  # main() may run inside another program (the tests)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)
    return report


if __name__ == "__main__":
    ensure_blas_threads(sys.argv[1:])
    main()
