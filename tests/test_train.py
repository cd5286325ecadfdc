"""python -m tinyse.train and python -m tinyse.evaluate: the run folder, exact resume, failures, real training.

Most tests train ResNet-20 on a small CIFAR-10 made in the official format
(fabricated by tests/test_data.py's helpers), so they run anywhere in seconds;
one test trains SE-ResNet-20 on the real CIFAR-10 (found through TINYSE_DATA).
"""
import io
import itertools
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
from test_data import make_cifar10_folder, make_cifar100_folder, real_data_root

import tinyse
from tinyse import train as train_module
from tinyse.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from tinyse.evaluate import accuracy_report, evaluate_checkpoint
from tinyse.evaluate import main as evaluate_main
from tinyse.progress import Progress, RunTiming, format_duration
from tinyse.train import StopRequest, config_from_args, parse_args, train

from conftest import DEVICES

QUICK = ["--model", "resnet20", "--batch-size", "16", "--val-split", "20", "--no-progress", "--lr", "0.05"]


def quick_config(tmp_path, *extra, out="run"):
    """The config of a small run on fabricated data: 80 training images, 20 held out, 20 test images."""
    args = parse_args([*QUICK, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / out), *extra])
    return config_from_args(args)


@pytest.fixture
def fake_cifar10(tmp_path):
    make_cifar10_folder(tmp_path / "data", per_batch=20)
    return tmp_path


def weights(path):
    return load_checkpoint(path)[0]


def test_a_run_writes_config_metrics_checkpoints_and_curves(fake_cifar10):
    config = quick_config(fake_cifar10, "--epochs", "2")
    result = train(config)
    out = Path(config["out"])
    assert not result["stopped"] and result["metrics"]["epoch"] == 2
    assert json.loads((out / "config.json").read_text())["model"] == "resnet20"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "seconds"):
        assert all(key in r for r in rows), key
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, optimizer_state, meta = load_checkpoint(out / "last.npz")
    assert meta["state"]["epoch"] == 2 and meta["config"]["model"] == "resnet20"
    assert any(k.startswith("momentum_buffer") for k in optimizer_state)
    # best.npz is the epoch with the best validation accuracy (never chosen on the test set)
    best_epoch = max(rows, key=lambda r: r["val_acc"])["epoch"]
    assert load_checkpoint(out / "best.npz")[2]["state"]["epoch"] == best_epoch
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")], "temporary files left behind"


@pytest.mark.parametrize("stop_after", [3, 5, 7])  # mid-epoch 1, the first step of epoch 2, mid-epoch 2
def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(fake_cifar10, stop_after):
    """On the CPU, stopping (as Ctrl-C does) and resuming gives bit-identical weights, buffers and metrics."""
    whole = quick_config(fake_cifar10, "--epochs", "2", "--prefetch", out="whole")
    train(whole)
    parts = quick_config(fake_cifar10, "--epochs", "2", "--prefetch", out="parts")
    assert train(parts, stop_after_steps=stop_after)["stopped"]
    resume_and_compare(parts, whole)


def resume_and_compare(parts, whole):
    """Resume the stopped run ``parts``; its weights and metrics must equal those of the run ``whole``."""
    resumed = config_from_args(parse_args(["--resume", parts["out"], "--no-progress"]))
    assert not train(resumed)["stopped"]
    expected, actual = weights(Path(whole["out"]) / "last.npz"), weights(Path(parts["out"]) / "last.npz")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert np.array_equal(expected[key], actual[key]), key

    def drop_time(rows):
        return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s", "eval_seconds")} for r in rows]

    assert drop_time(train_module.read_metrics(whole["out"])) == drop_time(train_module.read_metrics(parts["out"]))


def test_a_stopped_run_saves_its_epoch_totals_by_name_and_old_positional_checkpoints_still_resume(fake_cifar10):
    """last.npz keeps the epoch's running sums as named fields; a checkpoint of the earlier layout, the list
    "partial": [loss_sum, correct, seen, seconds], resumes to the same weights and metrics."""
    whole = quick_config(fake_cifar10, "--epochs", "2", out="whole")
    train(whole)
    parts = quick_config(fake_cifar10, "--epochs", "2", out="parts")
    assert train(parts, stop_after_steps=3)["stopped"]
    last = Path(parts["out"]) / "last.npz"
    with np.load(last) as archive:
        arrays = {key: archive[key] for key in archive.files}
    meta = json.loads(str(arrays["meta"]))
    totals = meta["state"].pop("epoch_totals")
    assert sorted(totals) == ["correct", "loss_sum", "seconds", "seen"] and totals["seen"] == 3 * 16
    assert meta["state"]["epoch"] == 0 and meta["state"]["step"] == 3
    meta["state"]["partial"] = [totals["loss_sum"], totals["correct"], totals["seen"], totals["seconds"]]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(last, **arrays)
    resume_and_compare(parts, whole)


def test_a_saved_state_that_is_not_a_training_state_is_a_clear_error():
    state = train_module.RunState.from_dict({"epoch": 1, "step": 2, "best_val_acc": 0.5})
    assert (state.epoch, state.step, state.epoch_totals.seen) == (1, 2, 0)
    with pytest.raises(ValueError, match=r"cannot resume from run/last\.npz: its saved state .*'speed'"):
        train_module.RunState.from_dict({"epoch": 1, "speed": 3}, "run/last.npz")


def test_a_loss_that_turns_nan_stops_with_epoch_and_step_and_keeps_the_last_checkpoint(fake_cifar10, monkeypatch):
    config = quick_config(fake_cifar10, "--epochs", "1")
    train(config)
    last = Path(config["out"]) / "last.npz"
    saved = weights(last)
    real_cross_entropy, calls = train_module.F.cross_entropy, []

    def cross_entropy_that_fails_at_step_3(logits, labels, **options):
        loss = real_cross_entropy(logits, labels, **options)
        calls.append(1)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(train_module.F, "cross_entropy", cross_entropy_that_fails_at_step_3)
    config["epochs"], config["resumed"] = 2, True
    with pytest.raises(FloatingPointError, match=r"became nan in epoch 2, by step (\d+)") as raised:
        train(config)
    found_at = int(re.search(r"by step (\d+)", str(raised.value)).group(1))
    # the loss is read to the host only at a redraw, every READ_EVERY steps and at the epoch's end
    assert 3 <= found_at <= min(train_module.READ_EVERY, len(calls))
    for key, value in weights(last).items():
        assert np.array_equal(value, saved[key]), "the last good checkpoint changed"


def test_checkpoints_are_written_whole_or_not_at_all(fake_cifar10, monkeypatch):
    """A failure while writing leaves the previous checkpoint intact and no temporary file."""
    config = quick_config(fake_cifar10, "--epochs", "1")
    train(config)
    out = Path(config["out"])
    model = train_module.build_model(config, 10)
    before = (out / "last.npz").read_bytes()

    def savez_that_dies(file, **arrays):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", savez_that_dies)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(out / "last.npz", model, train_module.SGD(model.parameters(), 0.1), {"state": {}})
    assert (out / "last.npz").read_bytes() == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".tmp")) == []


def test_atomic_write_gives_an_ordinary_file_mode(tmp_path):
    """The temporary file is private (mkstemp); the finished file gets 0o666 minus the umask, as open() would."""
    umask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", lambda f: f.write(b"x"))
        with open(tmp_path / "b.txt", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


def test_ctrl_c_asks_the_loop_to_stop_and_a_second_one_stops_at_once():
    # raise_signal sends SIGINT to this thread, so its handler has run when the call returns (os.kill sends it to
    # the process, and any other thread may take it: under load the handler can then run after the check).
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("device", DEVICES)
def test_a_cpu_checkpoint_evaluates_on_any_device(fake_cifar10, device, capsys):
    config = quick_config(fake_cifar10, "--epochs", "1")
    train(config)
    on_cpu = evaluate_checkpoint(Path(config["out"]) / "last.npz", device="cpu")
    on_device = evaluate_checkpoint(Path(config["out"]) / "last.npz", device=device)
    assert on_device["top1"] == pytest.approx(on_cpu["top1"])
    assert on_cpu["images"] == 20
    final_test_acc = train_module.read_metrics(config["out"])[-1]["test_acc"]
    assert on_cpu["top1"] == pytest.approx(final_test_acc)  # evaluation agrees with the training loop's


def direct_accuracy(logits, labels, classes):
    """top-1, top-5 and per-class top-1 accuracy counted image by image: the reference for accuracy_report."""
    top1_hits, top5_hits = [], []
    for row, label in zip(logits, labels):
        ranked_above = int((row > row[label]).sum())  # classes whose logit beats the label's (no ties here)
        top1_hits.append(ranked_above == 0)
        top5_hits.append(ranked_above < 5)
    per_class = {}
    for k, name in enumerate(classes):
        hits = [hit for hit, label in zip(top1_hits, labels) if label == k]
        if hits:  # a class with no test image gets no row
            per_class[name] = sum(hits) / len(hits)
    return {"top1": sum(top1_hits) / len(labels), "top5": sum(top5_hits) / len(labels), "per_class": per_class}


def test_accuracy_report_counts_top1_top5_and_each_class_as_written_out_by_hand():
    classes = ["a", "b", "c", "d", "e", "f", "g"]
    logits = np.array([
        [0.0, 1.0, 9.0, 2.0, 3.0, 4.0, 5.0],  # label c (2): ranked first -> top-1 and top-5
        [7.0, 9.0, 8.0, 1.0, 2.0, 3.0, 4.0],  # label a (0): ranked third -> top-5 only
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # label a (0): ranked last -> neither
        [1.0, 9.0, 0.0, 2.0, 3.0, 4.0, 5.0],  # label b (1): ranked first
    ])
    labels = np.array([2, 0, 0, 1])
    report = accuracy_report(logits, labels, classes)
    assert report == {"top1": 0.5, "top5": 0.75, "per_class": {"a": 0.0, "b": 1.0, "c": 1.0}, "images": 4}

    rng = np.random.default_rng(0)
    classes.append("h")
    labels = rng.integers(0, 7, size=60)  # class "h" has no image, so no row
    logits = rng.standard_normal((60, 8))
    logits[np.arange(20), labels[:20]] += 3  # a third of the images with their label clearly on top
    report, expected = accuracy_report(logits, labels, classes), direct_accuracy(logits, labels, classes)
    assert report["top1"] == pytest.approx(expected["top1"]) and report["top5"] == pytest.approx(expected["top5"])
    assert report["per_class"] == pytest.approx(expected["per_class"]) and report["images"] == 60
    # not a degenerate case: top-5 finds more than top-1, and the classes' accuracies differ
    assert expected["top1"] < expected["top5"] < 1 and len(set(expected["per_class"].values())) > 2
    assert "h" not in report["per_class"]


def test_evaluate_prints_top5_and_a_per_class_table_for_cifar100(tmp_path, capsys):
    """A checkpoint whose last layer has zero weights predicts its bias for every image, so its ranking of
    the classes, and with it top-1, top-5 and every class's accuracy, is known before evaluating."""
    _, data = make_cifar100_folder(tmp_path / "data", n_train=80, n_test=40)
    labels = np.array(data["test_labels"])
    present = list(dict.fromkeys(labels.tolist()))  # the test set's classes, in order of first appearance
    first, runners_up = present[0], present[1:5]
    config = quick_config(tmp_path, "--dataset", "cifar100")
    model = train_module.build_model(config, 100)
    weights = model.state_dict()
    weights["fc.weight"] = np.zeros_like(weights["fc.weight"])
    weights["fc.bias"] = np.zeros_like(weights["fc.bias"])
    weights["fc.bias"][[first, *runners_up]] = [5, 4, 3, 2, 1]  # every image: `first`, then the runners-up
    model.load_state_dict(weights)
    checkpoint = tmp_path / "ranked.npz"
    save_checkpoint(checkpoint, model, train_module.SGD(model.parameters(), 0.1), {"state": {"epoch": 0},
                                                                                    "config": config})

    report = evaluate_main([str(checkpoint), "--data-dir", str(tmp_path / "data")])
    top1, top5 = np.mean(labels == first), np.isin(labels, [first, *runners_up]).mean()
    assert 0 < top1 < top5 < 1  # the fabricated test set has other classes too
    assert report["top1"] == pytest.approx(top1) and report["top5"] == pytest.approx(top5)
    assert report["per_class"] == {f"fine_{k}": float(k == first) for k in sorted(present)}
    printed = capsys.readouterr().out
    assert f"top-1 accuracy: {100 * top1:.2f}%" in printed and f"top-5 accuracy: {100 * top5:.2f}%" in printed
    rows = re.findall(r"^(fine_\d+) +(\d+\.\d\d)%$", printed, re.MULTILINE)  # the per-class table
    assert rows == [(f"fine_{k}", "100.00" if k == first else "0.00") for k in sorted(present)]


def test_resume_without_a_checkpoint_and_missing_gpu_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="nothing to resume"):
        train_module.main(["--resume", str(tmp_path)])
    if not tinyse.gpu_available():
        with pytest.raises(SystemExit, match="needs CuPy"):
            train_module.main(["--device", "gpu"])


def test_missing_data_offline_says_where_to_put_it(tmp_path, monkeypatch):
    def offline(url, destination, progress=True):
        raise OSError("no network")

    monkeypatch.setattr("tinyse.data.download.download_url", offline)
    with pytest.raises(SystemExit, match="cifar-10-batches-py"):
        train_module.main([*QUICK, "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "run")])


REAL_RUN = ["--model", "se_resnet20", "--train-subset", "4000", "--test-subset", "1000", "--val-split", "0",
            "--epochs", "4", "--schedule", "cosine", "--no-progress"]


def test_se_resnet20_learns_real_cifar10_in_a_few_minutes(tmp_path):
    """SE-ResNet-20, 4 epochs on 4,000 real CIFAR-10 images (about 3 minutes on 2 CPU cores): test accuracy
    on 1,000 test images far above chance (10%). Measured 38.9% (seed 0); asserted: > 30%."""
    root = real_data_root()
    if not (root / "cifar-10-batches-py").exists():
        pytest.skip(f"real CIFAR-10 not found in {root}: set TINYSE_DATA")
    config = config_from_args(parse_args([*REAL_RUN, "--data-dir", str(root), "--out", str(tmp_path / "real")]))
    metrics = train(config)["metrics"]
    assert metrics["test_acc"] > 0.30, metrics


# --- the progress line: elapsed time and ETA, for the epoch and the run ---------------------------------
class Terminal(io.StringIO):
    """A stream that says it is a terminal, so the bar draws."""

    def isatty(self):
        return True


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("seconds, shown", [(0, "0:00"), (59.4, "0:59"), (65, "1:05"), (3599.6, "1:00:00"),
                                            (3725, "1:02:05"), (36000, "10:00:00"), (None, "?"), (-1, "?")])
def test_durations_read_as_minutes_or_hours(seconds, shown):
    assert format_duration(seconds) == shown


def test_the_line_shows_the_epochs_and_the_runs_elapsed_time_and_eta():
    """2 s per step, 4 of 10 done: the epoch is 0:08 in with 6 steps (0:12) left; the run had 100 s before, and
    after this epoch comes another of 10 steps and 30 s of evaluation: 12 + 20 + 30 = 62 s left."""
    clock, stream = FakeClock(), Terminal()
    progress = Progress(10, "epoch 2/3", stream=stream, clock=clock,
                        run=RunTiming(elapsed_before=100, steps_after=10, seconds_after=30))
    for _ in range(4):
        clock.now += 2
        progress.update(loss=1.5)
    times = progress.times()
    assert times == {"elapsed": 8, "eta": 12, "run_elapsed": 108, "run_eta": 62}
    line = stream.getvalue().split("\r")[-1]
    assert line.startswith("epoch 2/3 [#########...............] 4/10  loss 1.5  0:08 eta 0:12  run 1:48 eta 1:02")
    progress.close()
    assert stream.getvalue().endswith("\r\033[K")


def test_with_a_steady_pace_elapsed_rises_and_eta_falls_to_zero():
    clock = FakeClock()
    progress = Progress(20, clock=clock, stream=Terminal(), run=RunTiming(50.0, 40, 10.0))
    assert progress.times()["eta"] is None and "eta ?" in progress.line()  # no rate before the first step
    seen = []
    for _ in range(20):
        clock.now += 1.5
        progress.update()
        seen.append(progress.times())
    for key in ("elapsed", "run_elapsed"):
        assert all(a[key] < b[key] for a, b in itertools.pairwise(seen))
    for key in ("eta", "run_eta"):
        assert all(a[key] > b[key] for a, b in itertools.pairwise(seen))
    assert seen[-1]["eta"] == 0 and seen[-1]["run_eta"] == 40 * 1.5 + 10.0
    assert seen[0]["run_elapsed"] + seen[0]["run_eta"] == pytest.approx(50 + 60 * 1.5 + 10)  # the whole run


def test_a_resumed_epoch_measures_its_pace_on_the_steps_it_runs():
    clock = FakeClock()
    progress = Progress(10, clock=clock, stream=Terminal())
    progress.skip_to(6)
    clock.now += 3
    progress.update()  # one step in 3 s: 3 steps left take 9 s
    assert progress.times()["eta"] == 9 and progress.times()["run_eta"] is None
    assert "run" not in progress.line()


def test_the_bar_is_silent_off_a_terminal():
    stream = io.StringIO()
    progress = Progress(3, stream=stream)
    progress.update()
    progress.close()
    assert stream.getvalue() == ""


def test_the_epoch_line_carries_the_runs_clock(fake_cifar10, capsys):
    train(quick_config(fake_cifar10, "--epochs", "2"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and all(re.search(r"run \d+:\d\d eta \d+:\d\d$", line) for line in lines)
    assert lines[-1].endswith("eta 0:00")


def test_the_run_clock_counts_training_and_evaluation():
    config = {"epochs": 4, "eval_every": 2}
    rows = [{"epoch": 1, "seconds": 100.0}, {"epoch": 2, "seconds": 120.0, "eval_seconds": 30.0}]
    assert train_module.run_clock(config, rows) == (250.0, 2 * 120.0 + 30.0)  # epochs 3, 4; one evaluation (at 4)
    state = train_module.RunState(epoch=2)
    timing = train_module.run_timing(config, rows, state, steps_per_epoch=50)
    assert timing == RunTiming(elapsed_before=250.0, steps_after=50, seconds_after=30.0)


def test_the_figures_leave_matplotlibs_backend_alone(tmp_path):
    """The curves, the study's results and the excitation figures draw on a bare Figure: a notebook's inline
    backend (here svg, as a stand-in) stays, where matplotlib.use("Agg") switched every later figure off."""
    import matplotlib

    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 2.0, "train_acc": 0.2}) + "\n")
        train_module.plot_curves(str(tmp_path))
        assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(previous)
