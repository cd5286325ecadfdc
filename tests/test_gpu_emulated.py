"""Everything tinyse does on a GPU, end to end: the command lines with ``--device gpu``, and 20 training steps
that must equal the CPU's. GPU-marked: they run where CuPy sees a GPU, and in CI on the emulated CuPy

    TINYSE_EMULATE_GPU=1 python -m pytest -m gpu tests/test_gpu_emulated.py

The command lines run as their users run them, in a fresh process: ``python -m tinyse.testing.emulated_cupy
tinyse.train --device gpu ...`` on the emulated CuPy, ``python -m tinyse.train --device gpu ...`` on a real
one. Their data is a small CIFAR-10 made from the real one (found through TINYSE_DATA, as the other tests find
it): the first images of each training file and of each class of the test set, in the official format, so
that every run stays in seconds on the emulator. Without the real CIFAR-10 the same layout is filled with
random pixels, and the GPU path is checked all the same.
"""
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from test_data import make_cifar10_folder, real_data_root, write_pickle
from threadpoolctl import threadpool_limits

import tinyse.functional as F
from tinyse import models
from tinyse.backend import to_device
from tinyse.bench.machine import thread_env
from tinyse.checkpoint import load_checkpoint
from tinyse.data import DATASETS
from tinyse.evaluate import evaluate_checkpoint
from tinyse.optim import SGD
from tinyse.tensor import Tensor
from tinyse.testing import emulated_cupy
from tinyse.train import config_from_args, parse_args, train

from conftest import rel_error, requires_gpu

pytestmark = [requires_gpu, pytest.mark.gpu]

CIFAR10 = DATASETS["cifar10"]
TRAIN_PER_FILE, TEST_PER_CLASS = 8, 4  # 40 training images, 40 test images (4 of each class)
RUN = ["--model", "se_resnet20", "--train-subset", "32", "--test-subset", "16", "--val-split", "0",
       "--batch-size", "16", "--epochs", "2", "--no-progress"]  # 2 steps an epoch


def command(module, *args):
    """``python -m module args`` on the GPU tinyse sees: through the emulated CuPy when the tests run on it."""
    runner = ["-m", "tinyse.testing.emulated_cupy", module] if emulated_cupy.installed() else ["-m", module]
    return [sys.executable, *runner, *args]


def run(module, *args, env=None):
    """Run a command line to its end, with one BLAS thread (see ``one_blas_thread``); a failure shows its output."""
    done = subprocess.run(command(module, *args), capture_output=True, text=True, env={**thread_env(1), **(env or {})},
                          timeout=300)
    assert done.returncode == 0, f"{module} {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """The emulated GPU multiplies matrices with NumPy's BLAS; on a busy machine (CI's, or two cores shared with
    other jobs) BLAS's spinning threads made these runs eight times slower (a training run of the fixture
    below, on two cores shared with two other trainings: 99 s with two BLAS threads, 12 s with one)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def small_cifar10(tmp_path_factory):
    """A folder holding cifar-10-batches-py with the first TRAIN_PER_FILE images of each training file and the
    first TEST_PER_CLASS test images of each class (in their order), from the real CIFAR-10 when it is there."""
    root = tmp_path_factory.mktemp("cifar")
    source = real_data_root() / CIFAR10["folder"]
    if not source.exists():  # random pixels; the test labels made balanced, as the real ones are
        folder, _ = make_cifar10_folder(root, per_batch=TEST_PER_CLASS * 10)
        with open(folder / "test_batch", "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        write_pickle(folder / "test_batch", dict(batch, labels=[i % 10 for i in range(TEST_PER_CLASS * 10)]), 2)
        return root
    folder = root / CIFAR10["folder"]
    folder.mkdir()
    for file in CIFAR10["train_files"] + CIFAR10["test_files"]:
        with open(source / file, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        labels = np.array(batch["labels"])
        if file in CIFAR10["train_files"]:
            keep = np.arange(TRAIN_PER_FILE)
        else:
            keep = np.sort(np.concatenate([np.flatnonzero(labels == k)[:TEST_PER_CLASS] for k in range(10)]))
        small = {"batch_label": batch["batch_label"], "labels": labels[keep].tolist(), "data": batch["data"][keep],
                 "filenames": [batch["filenames"][i] for i in keep]}
        write_pickle(folder / file, small, protocol=2)
    with open(source / "batches.meta", "rb") as f:
        write_pickle(folder / "batches.meta", pickle.load(f, encoding="latin1"), protocol=2)
    return root


@pytest.fixture(scope="module")
def gpu_run(small_cifar10, tmp_path_factory):
    """``python -m tinyse.train --device gpu --prefetch``: SE-ResNet-20, two epochs of two steps; its folder."""
    out = tmp_path_factory.mktemp("runs") / "whole"
    done = run("tinyse.train", *RUN, "--device", "gpu", "--prefetch", "--data-dir", str(small_cifar10),
               "--out", str(out))
    assert "epoch   2" in done.stdout
    return out


def test_train_on_the_gpu_writes_the_run_folder(gpu_run):
    assert {"config.json", "metrics.jsonl", "last.npz", "curves.png"} <= {path.name for path in gpu_run.iterdir()}
    config = json.loads((gpu_run / "config.json").read_text())
    assert config["device"] == "gpu" and config["prefetch"]
    rows = [json.loads(line) for line in (gpu_run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(np.isfinite(row["train_loss"]) and np.isfinite(row["test_loss"]) for row in rows)
    weights, _, meta = load_checkpoint(gpu_run / "last.npz")
    assert meta["state"]["epoch"] == 2 and all(isinstance(v, np.ndarray) for v in weights.values())


def test_a_run_stopped_on_the_gpu_resumes_there_to_the_same_weights(gpu_run, small_cifar10, tmp_path):
    """Stopped after 3 of its 4 steps (in this process), then ``--resume --device gpu``: the same weights and
    metrics as the whole run, to float32 rounding. The whole run prefetched its batches and this one did not:
    prefetching must not change the data."""
    parts = tmp_path / "parts"
    config = config_from_args(parse_args([*RUN, "--device", "gpu", "--data-dir", str(small_cifar10),
                                          "--out", str(parts)]))
    assert train(config, stop_after_steps=3)["stopped"]
    done = run("tinyse.train", "--resume", str(parts), "--device", "gpu", "--no-progress")
    assert "resuming" in done.stdout and "epoch 2, step 1" in done.stdout
    resumed, whole = load_checkpoint(parts / "last.npz")[0], load_checkpoint(gpu_run / "last.npz")[0]
    assert list(resumed) == list(whole)
    for key, value in whole.items():
        assert rel_error(resumed[key], value) < 1e-5, key
    metrics = [[json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
               for run_dir in (parts, gpu_run)]
    for resumed_row, whole_row in zip(*metrics, strict=True):
        assert resumed_row["train_loss"] == pytest.approx(whole_row["train_loss"], rel=1e-5)
        assert resumed_row["test_acc"] == whole_row["test_acc"]


def test_evaluate_on_the_gpu_scores_what_the_cpu_scores(gpu_run, small_cifar10):
    done = run("tinyse.evaluate", str(gpu_run / "last.npz"), "--device", "gpu", "--batch-size", "16",
               "--data-dir", str(small_cifar10))
    on_cpu = evaluate_checkpoint(gpu_run / "last.npz", str(small_cifar10), "cpu", 16)
    assert f"test images: {on_cpu['images']}" in done.stdout
    assert f"top-1 accuracy: {100 * on_cpu['top1']:.2f}%" in done.stdout


def test_analyze_on_the_gpu_writes_its_figures_and_numbers(gpu_run, small_cifar10, tmp_path):
    out = tmp_path / "analysis"
    done = run("tinyse.analyze", str(gpu_run / "last.npz"), "--device", "gpu", "--per-class", "2",
               "--batch-size", "10", "--data-dir", str(small_cifar10), "--out", str(out))
    assert "20 test images" in done.stdout
    assert {"excitations.png", "specificity.png", "excitations.npz"} <= {path.name for path in out.iterdir()}
    with np.load(out / "excitations.npz") as saved:
        assert len(saved.files) > 0


def test_demo_on_the_gpu_and_its_profile(tmp_path):
    """``python -m tinyse.demo --device gpu``'s loss falls; with TINYSE_PROFILE=1 each backward pass prints the
    per-op table, the device waited for around every op (tests/test_profile.py counts the waits)."""
    done = run("tinyse.demo", "--device", "gpu", "--steps", "10")
    losses = [float(line.split()[-1]) for line in done.stdout.splitlines() if line.startswith("step")]
    assert len(losses) == 2 and losses[-1] < losses[0]
    profiled = run("tinyse.demo", "--device", "gpu", "--steps", "2", env={"TINYSE_PROFILE": "1"})
    tables = profiled.stderr.split("op                  calls")
    assert len(tables) == 3  # one table per backward pass
    rows = {line.split()[0]: line.split()[1:] for line in tables[-1].strip().splitlines()[:-1]}
    assert {"Conv2d", "BatchNorm", "SEExcite", "CrossEntropy"} <= set(rows)
    assert float(rows["Conv2d"][2]) > 0, "the conv's backward took no time"


def test_bench_on_the_gpu_times_tinyse_counts_launches_and_measures_memory(tmp_path):
    """``python -m tinyse.bench --device gpu --quick``, the op rows at one shape, the eval rows, the memory and
    the launch counts (the training-step rows are left out for time: the launch count and the memory process
    run training steps). Where torch has no CUDA, tinyse's column alone."""
    path = tmp_path / "bench.json"
    done = run("tinyse.bench", "--device", "gpu", "--quick", "--batch", "2", "--threads", "1",
               "--only", "x8x8$|eval|memory|launches", "--json", str(path))
    report = json.loads(path.read_text())
    assert len(report["rows"]) == 6 + 2 and all(row["tinyse"]["median_s"] > 0 for row in report["rows"])
    assert report["memory"]["tinyse"]["peak_bytes"] > 0
    if emulated_cupy.installed():
        train_step = report["launches"]["train step"]
        assert train_step["kernel_launches"] > 0 and "optimizer step" in train_step["parts"]
        assert f"per SE-ResNet-20 training step: {train_step['kernel_launches']} kernel launches" in done.stdout
    else:
        assert "kernel launches: not counted" in done.stdout
    if report["header"]["libraries"] == ["tinyse"]:
        assert "torch: no CUDA here, tinyse's column only" in done.stderr


def test_twenty_sgd_steps_on_the_gpu_equal_the_cpus():
    """SE-ResNet-20 from the same initial weights, trained by SGD (lr 0.05, momentum 0.9, weight decay 5e-4) for
    20 steps on the same batches (4 batches of 2 images, 16x16, 5 times over) on each device, in float64: every
    loss and every final tensor within 1e-10 of the CPU's (max|gpu - cpu| / max|cpu|; measured 4e-15).

    Why float64: these 20 steps overfit 8 images (the loss falls 15x), and such a trajectory amplifies rounding.
    In float32, two CPU runs that differ only in BLAS's thread count end 4e-3 apart in their weights, so a
    float32 comparison would test rounding luck; float64 keeps that amplified rounding near 1e-14, and any
    difference in the GPU path's maths (an im2col off by a pixel, a kernel's wrong sign, a missed momentum
    term) shows at once. The float32 GPU path is held to torch's float32 results op by op in the other tests."""
    rng = np.random.default_rng(0)
    distinct = [(rng.standard_normal((2, 3, 16, 16)), rng.integers(0, 10, 2)) for _ in range(4)]
    batches = [distinct[step % 4] for step in range(20)]
    trained = {}
    for device in ("cpu", "gpu"):
        model = models.create("se_resnet20", num_classes=10, seed=0).to(device, np.float64)
        optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        losses = []
        for images, labels in batches:
            loss = F.cross_entropy(model(Tensor(to_device(images, device))), to_device(labels, device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        trained[device] = losses, model.state_dict()
    (cpu_losses, cpu_state), (gpu_losses, gpu_state) = trained["cpu"], trained["gpu"]
    assert cpu_losses[-1] < cpu_losses[0] / 10, "the steps trained nothing: the comparison would show little"
    assert rel_error(np.array(gpu_losses), np.array(cpu_losses)) < 1e-10, (gpu_losses, cpu_losses)
    for key, value in cpu_state.items():
        assert rel_error(gpu_state[key], value) < 1e-10, key


def test_a_training_epoch_reads_the_loss_from_the_device_only_at_its_end(small_cifar10, tmp_path):
    """The loss and the correct answers of each step stay on the device (``train.record_step``): with no bar
    drawn, an epoch of 4 steps reads them once, at its end: a float and an int, 2 host synchronisations
    (reading them at every step, as before, made 8). Nothing else in the loop waits for the GPU."""
    from tinyse import train as train_module

    args = ["--data-dir", str(small_cifar10), "--out", str(tmp_path / "run"), "--device", "gpu", *RUN]
    config = config_from_args(parse_args([*args, "--batch-size", "8"]))  # 32 images: 4 steps
    _, loaders = train_module.build_data(config)
    model = train_module.build_model(config, 10)
    optimizer = train_module.build_optimizer(config, model)
    state = train_module.RunState()
    with emulated_cupy.counting() as counts:
        finished = train_module.train_epoch(
            model, optimizer, lambda epoch: 0.05, loaders["train"], state, train_module.StopRequest(),
            train_module.Progress(4, enabled=False))
    totals = state.epoch_totals
    assert finished and state.step == 4 and totals.seen == totals.read_seen == 32
    assert counts["host_syncs"] == 2, counts
    assert 0 < totals.loss_sum / 32 < 10 and 0 <= totals.correct <= 32
