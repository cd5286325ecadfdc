"""python -m tinyse.bench: the rows (rows.py), the alternating timing loop (timing.py), the report it prints
and writes (cli.py, report.py), the PyTorch twins of the model rows, and the memory processes (peak_memory.py).
Tiny batches and repeats; nothing here asserts on speed."""
import itertools
import json
import statistics

import numpy as np
import pytest
import torch
from test_data import make_cifar10_folder
from threadpoolctl import threadpool_limits

from tinyse import models
from tinyse.backend import gpu_available, to_device
from tinyse.bench import main
from tinyse.bench.launches import count_launches, format_counts
from tinyse.bench.rows import MODELS, Row, build_rows, torch_twin_model
from tinyse.bench.timing import groups, measure, summarise, time_alternating
from tinyse.tensor import Tensor
from tinyse.testing import emulated_cupy

from conftest import DEVICES, rel_error, requires_gpu


def test_rows_cover_every_op_at_every_stage_and_both_models():
    rows = build_rows(batch=128)
    labels = [row.label for row in rows]
    assert len(labels) == len(set(labels)) == 6 * 3 + 4
    for op in ("conv3x3 fwd", "conv3x3 fwd+bwd", "batchnorm fwd+bwd", "relu fwd+bwd", "se_block fwd+bwd",
               "global_avgpool fwd+bwd"):
        for shape in ("128x16x32x32", "128x32x16x16", "128x64x8x8"):
            assert f"{op} {shape}" in labels
    for model in ("resnet20", "se_resnet20"):
        assert f"{model} train step 128x3x32x32" in labels
        assert f"{model} eval fwd 256x3x32x32" in labels


def test_timing_alternates_drops_the_warmup_and_times_each_call():
    calls, now = [], [0.0]
    durations = itertools.count(1)  # the k-th call lasts k seconds on the fake clock

    def library(name):
        def call():
            calls.append(name)
            now[0] += next(durations)
        return call

    syncs = {"tinyse": lambda: calls.append("sync"), "torch": lambda: calls.append("sync")}
    times = time_alternating({"tinyse": library("tinyse"), "torch": library("torch")}, warmup=2, repeats=3,
                             syncs=syncs, clock=lambda: now[0])
    assert calls == ["sync", "tinyse", "sync", "sync", "torch", "sync"] * 5  # synchronised before each clock read
    assert times == {"tinyse": [5, 7, 9], "torch": [6, 8, 10]}  # calls 1-4 were the two warm-up rounds


def test_settle_repeats_each_call_untimed_first():
    events, now = [], [0.0]

    def library(name, seconds):
        def call():
            events.append(name)
            now[0] += seconds
        return call

    # tinyse calls last 1 s and torch calls 2 s; settling takes 2.5 s of calls before each timed one
    times = time_alternating({"tinyse": library("tinyse", 1.0), "torch": library("torch", 2.0)}, warmup=0,
                             repeats=2, clock=lambda: now[0], settle=2.5)
    assert events == ["tinyse"] * 4 + ["torch"] * 3 + ["tinyse"] * 4 + ["torch"] * 3  # 3 + 2 untimed, then timed
    assert times == {"tinyse": [1.0, 1.0], "torch": [2.0, 2.0]}


def test_rows_of_one_group_are_timed_in_one_alternating_loop():
    events = []

    def make(label):
        return lambda: lambda: events.append(label)

    rows = [Row(name, (1, 1, 1, 1), "model", make(f"{name} tinyse"), make(f"{name} torch"), group=group)
            for name, group in (("a", ""), ("b", "step"), ("c", "step"), ("d", ""))]
    assert [[row.name for row in batch] for batch in groups(rows)] == [["a"], ["b", "c"], ["d"]]
    syncs = {"tinyse": lambda: None, "torch": lambda: None}
    results = measure(rows[1:3], warmup=1, repeats=2, syncs=syncs)
    assert events == ["b tinyse", "b torch", "c tinyse", "c torch"] * 3
    assert [result["name"] for result in results] == ["b", "c"]
    assert all(len(result[library]["times_s"]) == 2 for result in results for library in ("tinyse", "torch"))


def test_summary_takes_medians_and_their_ratio():
    result = summarise("relu fwd+bwd", (8, 16, 4, 4), {"tinyse": [3.0, 1.0, 2.0], "torch": [4.0, 8.0, 6.0]})
    assert result["tinyse"]["median_s"] == 2.0 and result["torch"]["median_s"] == 6.0
    assert result["ratio"] == 2.0 / 6.0
    assert result["tinyse"]["images_per_s"] == 8 / 2.0


def test_quick_run_writes_the_report(tmp_path, capsys):
    path = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    printed = main(["--quick", "--batch", "2", "--threads", "1", "--only", r"relu|global_avgpool.*x8x8|train",
                    "--json", str(path)])
    assert torch.get_num_threads() == threads  # main() puts torch's thread count back
    report = json.loads(path.read_text())
    assert report == json.loads(json.dumps(printed))
    header_keys = {"date", "machine", "cores", "numpy", "blas", "blas_threads", "torch", "threads", "device"}
    assert header_keys <= report["header"].keys()
    assert report["header"]["threads"] == 1 and report["header"]["device"] == "cpu"
    assert [(row["name"], row["shape"]) for row in report["rows"]] == [
        ("relu fwd+bwd", [2, 16, 32, 32]),
        ("relu fwd+bwd", [2, 32, 16, 16]),
        ("relu fwd+bwd", [2, 64, 8, 8]),
        ("global_avgpool fwd+bwd", [2, 64, 8, 8]),
        ("resnet20 train step", [2, 3, 32, 32]),
        ("se_resnet20 train step", [2, 3, 32, 32]),
    ]
    for row in report["rows"]:
        for library in ("tinyse", "torch"):
            timing = row[library]
            assert len(timing["times_s"]) == 3  # --quick: 3 repeats
            assert timing["median_s"] == statistics.median(timing["times_s"])
            assert timing["images_per_s"] == pytest.approx(row["batch"] / timing["median_s"])
        assert row["ratio"] == pytest.approx(row["tinyse"]["median_s"] / row["torch"]["median_s"])
    train = {row["name"]: row for row in report["rows"][-2:]}
    for library in ("tinyse", "torch"):
        se, plain = train["se_resnet20 train step"][library], train["resnet20 train step"][library]
        expected = statistics.median(a / b for a, b in zip(se["times_s"], plain["times_s"]))  # paired by round
        assert report["se_overhead"]["train step"][library] == pytest.approx(expected)
    assert report["memory"] is None  # the pattern does not match "memory"
    table = capsys.readouterr().out
    kernels_line = next(line for line in table.splitlines() if line.startswith("kernels"))
    assert report["header"]["blas_kernels_source"] in kernels_line
    assert "relu fwd+bwd" in table and "2x64x8x8" in table and "SE overhead" in table


@pytest.mark.parametrize("device", DEVICES)
def test_every_op_row_runs_on_each_device(device, capsys):
    """On a GPU that torch cannot reach (a CPU build of torch; the emulated GPU), the bench times tinyse alone
    and says so, rather than refusing to run."""
    report = main(["--device", device, "--batch", "2", "--threads", "1", "--warmup", "0", "--repeats", "1",
                   "--only", r"x8x8$", "--no-memory"])
    assert len(report["rows"]) == 6 and report["header"]["device"] == device
    printed = capsys.readouterr()
    if device == "gpu" and not torch.cuda.is_available():
        assert "torch: no CUDA here, tinyse's column only" in printed.err
        assert report["header"]["libraries"] == ["tinyse"]
        assert all("torch" not in row and row["ratio"] is None and row["tinyse"]["median_s"] > 0
                   for row in report["rows"])
        assert "no CUDA here, tinyse's column only" in printed.out
    else:
        assert all(row["torch"]["median_s"] > 0 for row in report["rows"])


@pytest.mark.skipif(gpu_available(), reason="checks the error on a machine without a GPU")
def test_gpu_without_a_gpu_is_a_clear_error():
    with pytest.raises(SystemExit, match="device 'gpu'"):
        main(["--device", "gpu", "--only", "relu"])


@pytest.mark.parametrize("name", MODELS)
def test_torch_twin_computes_what_the_tinyse_model_computes(name):
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ours, twin = models.create(name, num_classes=10, seed=0), torch_twin_model(name)
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(twin, mode)()
        with torch.no_grad():
            expected = twin(torch.from_numpy(images))
        assert rel_error(to_device(ours(Tensor(images)).data, "cpu"), expected) < 1e-4, mode


def test_a_model_without_a_torch_twin_is_a_clear_error():
    with pytest.raises(ValueError, match="no PyTorch twin for 'inception'"):
        torch_twin_model("inception")


def test_memory_is_measured_in_fresh_processes():
    report = main(["--quick", "--batch", "2", "--threads", "1", "--only", "memory"])
    assert report["rows"] == []
    memory = report["memory"]
    for library in ("tinyse", "torch"):
        assert memory[library]["library"] == library and memory[library]["model"] == "se_resnet20"
        assert memory[library]["peak_bytes"] >= memory[library]["baseline_bytes"] > 0
    assert not memory["tinyse"]["torch_imported"]  # the tinyse process pays for no torch


def test_torch_epoch_trains_on_every_training_image(tmp_path, capsys):
    make_cifar10_folder(tmp_path, per_batch=6)  # 30 training images
    result = main(["--torch-epoch", "resnet20", "--data-dir", str(tmp_path), "--batch", "8", "--threads", "1"])
    assert result["images"] == 30 and result["seconds"] > 0
    assert "one CIFAR-10 epoch (30 images, batch 8)" in capsys.readouterr().out


@requires_gpu
@pytest.mark.gpu
def test_launches_are_counted_by_part_and_do_not_depend_on_the_batch():
    """count_launches (python -m tinyse.bench --device gpu prints its totals) on the emulated CuPy: the parts add
    up to the total, a batch of 2 and of 4 launch the same kernels (so the bench counts at batch 2 what batch 128
    launches), and a training step never waits for the device (it reads no value back)."""
    if not emulated_cupy.installed():
        pytest.skip("counts kernel launches with the emulated CuPy's counters")
    # one BLAS thread: the emulator multiplies with NumPy, whose spinning threads made this 6x slower on a busy machine
    with threadpool_limits(limits=1, user_api="blas"):
        small, larger = [count_launches("se_resnet20", batch, train=True) for batch in (2, 4)]
    for field in ("kernel_launches", "host_syncs", "host_to_device", "device_to_host", "launches_by_name"):
        assert small[field] == larger[field], field
        assert sum((part[field] for part in small["parts"].values()), type(small[field])()) == small[field], field
    expected_parts = {"Conv2d.forward", "Conv2d.backward", "SEExcite.forward", "autograd", "optimizer step"}
    assert expected_parts <= set(small["parts"])
    assert small["host_syncs"] == 0 and small["device_to_host"] == 0
    table = format_counts(small).splitlines()
    assert f"{small['kernel_launches']} kernel launches" in table[0]
    assert len(table) == 2 + len(small["parts"])  # the totals, the column titles, a line per part
    assert all(any(line.startswith(part) for line in table[2:]) for part in small["parts"])


# Kernel launches per SE-ResNet-20 step on the GPU (batch-independent), measured on the emulated CuPy. Were 1817 /
# 354 before SGD, batch norm, the SE excitation, the pools, the conv and the loss got their own kernels, and
# SGD one kernel for all the parameters; PyTorch's CUDA step is about 440 launches. The target is 400 for the
# training step. A change that adds launches fails here; one that removes them lowers these numbers.
LAUNCH_BUDGET = {("se_resnet20", True): 400, ("se_resnet20", False): 137, ("resnet20", True): 256}


@requires_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("model, train", list(LAUNCH_BUDGET), ids=lambda v: str(v))
def test_launches_per_step_stay_within_the_budget(model, train):
    if not emulated_cupy.installed():
        pytest.skip("counts kernel launches with the emulated CuPy's counters")
    with threadpool_limits(limits=1, user_api="blas"):
        counts = count_launches(model, 2, train=train)
    assert counts["kernel_launches"] <= LAUNCH_BUDGET[model, train], format_counts(counts)
    assert counts["host_syncs"] == 0


def test_the_header_names_the_blas_kernels_and_who_chose_them(monkeypatch):
    from threadpoolctl import threadpool_info

    from tinyse.bench.machine import blas_kernels

    loaded = [pool["architecture"] for pool in threadpool_info() if pool.get("internal_api") == "openblas"]
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert blas_kernels() == (loaded[0] if loaded else None, "OPENBLAS_CORETYPE=Haswell")
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert blas_kernels()[1] == "OpenBLAS's choice for this CPU"
