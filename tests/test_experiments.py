"""python -m tinyse.experiments: the sweep, its results, skipping and resuming runs, the statistics, bad input.

Training runs use a fabricated CIFAR-10 (tests/test_data.py's helper: 100 training
and 20 test images) and a one-step budget; the statistics are checked on run
folders written by hand, with accuracies chosen to make the reading go each way.
"""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from test_data import make_cifar10_folder
from threadpoolctl import threadpool_limits

from tinyse import experiments, models
from tinyse import train as train_module
from tinyse.evaluate import evaluate_checkpoint
from tinyse.nn import SEBlock
from tinyse.parallel import workers

TINY = {"epochs": 1, "train_subset": 32, "test_subset": 20, "batch_size": 32}


@pytest.fixture
def fake_cifar10(tmp_path):
    make_cifar10_folder(tmp_path / "data", per_batch=20)
    return tmp_path


def run_compare(root, seeds=(0, 1), train=None, jobs=1, out="exp", **recipe):
    return experiments.run_experiment(
        "compare", "resnet20", experiments.compare_variants("resnet20"), seeds, str(root / out),
        dict(TINY, **recipe), data_dir=str(root / "data"), progress=False, train=train, jobs=jobs,
    )


def test_compare_writes_one_entry_per_variant_and_seed(fake_cifar10):
    stopped, results = run_compare(fake_cifar10)
    out = fake_cifar10 / "exp"
    assert not stopped
    assert [(r["variant"], r["seed"]) for r in results["runs"]] == [
        ("resnet20", 0), ("resnet20", 1), ("se_resnet20", 0), ("se_resnet20", 1)]
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the accuracy curves
    for run in results["runs"]:
        rows = train_module.read_metrics(run["folder"])
        assert run["test_acc"] == rows[-1]["test_acc"] and run["train_seconds"] == rows[-1]["seconds"] > 0
        assert run["params"] == models.create(run["model"]).num_parameters()
        assert run["recipe"]["epochs"] == 1 and run["recipe"]["train_subset"] == 32 and run["recipe"]["val_split"] == 0
        assert run["recipe"]["schedule"] == "cosine"
    plain, se = results["stats"]["resnet20"], results["stats"]["se_resnet20"]
    assert se["params"] > plain["params"] and se["macs"] > plain["macs"]
    assert results["runs"][2]["se"]["reduction"] == 16 and results["runs"][0]["se"] is None
    markdown = (out / "results.md").read_text()
    assert "| resnet20 | 2 |" in markdown and "| se_resnet20 − resnet20 | 2 |" in markdown
    assert results["differences"][0]["reading"] in markdown


def test_finished_runs_are_skipped_and_an_interrupted_one_resumes(fake_cifar10):
    run_compare(fake_cifar10, seeds=[0], epochs=2)
    out = fake_cifar10 / "exp"
    metrics = {p: p.stat().st_mtime_ns for p in out.glob("*/seed0/metrics.jsonl")}
    assert len(metrics) == 2

    def must_not_train(config, stop_after_steps=None):
        raise AssertionError(f"retrained {config['out']}")

    _, again = run_compare(fake_cifar10, seeds=[0], epochs=2, train=must_not_train)
    assert {p: p.stat().st_mtime_ns for p in metrics} == metrics
    assert len(again["runs"]) == 2

    # seed 1: the SE run is stopped (as Ctrl-C would) mid-way; the next call resumes it and leaves the rest alone
    calls = []

    def stop_the_se_run(config, stop_after_steps=None):
        calls.append((Path(config["out"]).parent.name, bool(config.get("resumed"))))
        return train_module.train(config, stop_after_steps=1 if config["model"] == "se_resnet20" else None)

    stopped, partial = run_compare(fake_cifar10, seeds=[0, 1], epochs=2, train=stop_the_se_run)
    assert stopped and calls == [("resnet20", False), ("se_resnet20", False)]
    assert len(partial["runs"]) == 3 and partial["unfinished"] == [str(out / "se_resnet20" / "seed1")]

    def record(config, stop_after_steps=None):
        calls.append((Path(config["out"]).parent.name, bool(config.get("resumed"))))
        return train_module.train(config)

    calls.clear()
    stopped, results = run_compare(fake_cifar10, seeds=[0, 1], epochs=2, train=record)
    assert not stopped and calls == [("se_resnet20", True)]
    assert len(results["runs"]) == 4 and not results["unfinished"]
    assert [r["epoch"] for r in train_module.read_metrics(out / "se_resnet20" / "seed1")] == [1, 2]


def test_a_folder_trained_with_another_recipe_is_refused(fake_cifar10):
    run_compare(fake_cifar10, seeds=[0])
    with pytest.raises(ValueError, match=r"epochs 1 \(wanted 2\)"):
        run_compare(fake_cifar10, seeds=[1], epochs=2)
    with pytest.raises(ValueError, match="holds the compare experiment"):
        experiments.run_experiment("squeeze", "resnet20", experiments.ablation_variants("squeeze", "resnet20"),
                                   [0], str(fake_cifar10 / "exp"), TINY)


# --- statistics on hand-written run folders ----------------------------------------------------
def write_run(out, variant, seed, test_acc, seconds=(2.0, 3.0), epochs=2):
    """A finished run folder as tinyse.train leaves it (config.json and metrics.jsonl only)."""
    config = experiments.run_config(str(out), variant, seed, dict(experiments.BUDGET, epochs=epochs))
    os.makedirs(config["out"])
    Path(config["out"], "config.json").write_text(json.dumps(config))
    rows = [{"epoch": e + 1, "seconds": seconds[e], "test_acc": 0.1 if e + 1 < epochs else test_acc}
            for e in range(epochs)]
    Path(config["out"], "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_experiment(out, plain_accs, se_accs):
    variants = experiments.compare_variants("resnet20")
    os.makedirs(out)
    Path(out, "experiment.json").write_text(json.dumps({"name": "compare", "model": "resnet20", "variants": variants}))
    for seed, (p, s) in enumerate(zip(plain_accs, se_accs)):
        write_run(out, variants[0], seed, p)
        write_run(out, variants[1], seed, s)


def test_summary_statistics_equal_numpy_on_the_per_run_metrics(tmp_path):
    plain, se = [0.612, 0.655, 0.631], [0.640, 0.652, 0.671]
    fake_experiment(tmp_path / "exp", plain, se)
    experiments.main(["summarize", str(tmp_path / "exp")])  # the command line, as a user would rebuild results
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    for label, accs in (("resnet20", plain), ("se_resnet20", se)):
        a, stats = 100 * np.array(accs), results["stats"][label]
        assert stats["accuracy"]["n"] == 3
        assert stats["accuracy"]["mean"] == pytest.approx(a.mean())
        assert stats["accuracy"]["std"] == pytest.approx(a.std(ddof=1))
        assert (stats["accuracy"]["min"], stats["accuracy"]["max"]) == pytest.approx((a.min(), a.max()))
        assert stats["error"] == pytest.approx(100 - a.mean())
        assert stats["train_seconds"] == pytest.approx(5.0)
    d = 100 * (np.array(se) - np.array(plain))
    diff = results["differences"][0]
    assert (diff["variant"], diff["baseline"], diff["seeds"]) == ("se_resnet20", "resnet20", [0, 1, 2])
    assert diff["mean"] == pytest.approx(d.mean()) and diff["std"] == pytest.approx(d.std(ddof=1))
    assert (diff["min"], diff["max"]) == pytest.approx((d.min(), d.max()))
    # +2.17 points, but the plain model's seeds spread by 2.15 and seed 1 goes the other way
    assert diff["exceeds_seed_spread"] and "with seeds disagreeing in sign" in diff["reading"]
    assert "not distinguishable from seed noise" in diff["reading"]
    markdown = (tmp_path / "exp" / "results.md").read_text()
    assert f"| resnet20 | 3 | {100 * np.mean(plain):.2f} ± {100 * np.std(plain, ddof=1):.2f} |" in markdown


def test_the_reading_says_whether_the_difference_exceeds_the_seed_spread(tmp_path):
    fake_experiment(tmp_path / "clear", [0.600, 0.605, 0.610], [0.640, 0.643, 0.652])
    clear = experiments.summarize(str(tmp_path / "clear"))["differences"][0]
    assert clear["exceeds_seed_spread"] and clear["reading"].endswith("a difference this budget resolves.")
    assert clear["reading"].startswith("se_resnet20 minus resnet20: +4.00 points over 3 seeds")
    fake_experiment(tmp_path / "noise", [0.600, 0.640, 0.620], [0.610, 0.630, 0.625])
    noise = experiments.summarize(str(tmp_path / "noise"))["differences"][0]
    assert not noise["exceeds_seed_spread"] and "within the seed-to-seed spread" in noise["reading"]
    fake_experiment(tmp_path / "one", [0.600], [0.640])
    one = experiments.summarize(str(tmp_path / "one"))["differences"][0]
    assert one["exceeds_seed_spread"] is None and "one seed" in one["reading"]


def test_unfinished_runs_are_left_out_of_the_statistics(tmp_path):
    out = tmp_path / "exp"
    fake_experiment(out, [0.60, 0.62], [0.63, 0.64])
    metrics = out / "se_resnet20" / "seed1" / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")  # only epoch 1 of 2
    results = experiments.summarize(str(out))
    assert results["stats"]["se_resnet20"]["accuracy"]["n"] == 1
    assert results["unfinished"] == [str(out / "se_resnet20" / "seed1")]
    assert results["differences"][0]["seeds"] == [0]


# --- the ablations ---------------------------------------------------------------------------
def test_each_ablation_value_reaches_the_model():
    for option, values in experiments.ABLATIONS.items():
        variants = experiments.ablation_variants(option, "resnet20", with_plain=True)
        assert [v["label"] for v in variants] == ["resnet20"] + [f"{option}={v}" for v in values]
        assert len({v["folder"] for v in variants}) == len(variants)
    stage2 = experiments.ablation_variants("stages", "resnet20", ["2"])[0]
    config = experiments.run_config("out", stage2, 0, experiments.BUDGET)
    assert config["stages"] == [2]
    model = train_module.build_model(config, 10)
    se_blocks = [name for name, m in model.named_modules() if isinstance(m, SEBlock)]
    assert se_blocks and all(name.startswith("layer2.") for name in se_blocks), se_blocks
    r8 = experiments.ablation_variants("reduction", "se_resnet20", ["8"])[0]
    config = experiments.run_config("out", r8, 0, experiments.BUDGET)
    assert config["reduction"] == 8 and config["model"] == "se_resnet20"
    assert next(m for m in train_module.build_model(config, 10).modules() if isinstance(m, SEBlock)).hidden == 2


@pytest.mark.parametrize("option, values, message", [
    ("squeeze", ["mean"], "unknown squeeze 'mean'; choose from avg, max"),
    ("excitation", ["softmax"], "unknown excitation 'softmax'"),
    ("integration", ["after"], "unknown integration 'after'"),
    ("stages", ["4"], "unknown stages '4'"),
    ("reduction", ["0"], "reduction must be a whole number >= 1, got '0'"),
    ("reduction", ["4", "4"], "repeated values"),
    ("reduction", [], "no values"),
    ("width", ["2"], "unknown ablation 'width'"),
])
def test_bad_ablation_values_are_clear_errors(option, values, message):
    with pytest.raises(ValueError, match=message):
        experiments.ablation_variants(option, "resnet20", values)


def test_bad_input_on_the_command_line_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit, match="unknown squeeze 'mean'"):
        experiments.main(["squeeze", "--values", "mean", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="unknown model family 'vgg16'"):
        experiments.main(["compare", "--model", "vgg16", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=r"no experiment\.json"):
        experiments.main(["summarize", str(tmp_path)])
    with pytest.raises(SystemExit):  # argparse: --seeds needs at least one
        experiments.main(["compare", "--seeds"])
    assert "expected at least one argument" in capsys.readouterr().err
    for seeds, message in (([], "no seeds"), ([0, 0], "repeated seeds")):
        with pytest.raises(ValueError, match=message):
            experiments.run_experiment("compare", "resnet20", experiments.compare_variants("resnet20"), seeds,
                                       str(tmp_path / "y"), TINY)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# --- the 95% t-interval -------------------------------------------------------------------------------
def student_t_cdf(t, df, steps=200001):
    """P(T <= t) for Student's t with ``df`` degrees of freedom: 1/2 plus the density integrated from 0 to t
    (Simpson's rule), the density written out from its definition."""
    x = np.linspace(0.0, t, steps)
    log_scale = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = np.exp(log_scale - (df + 1) / 2 * np.log1p(x**2 / df))
    h = x[1] - x[0]
    return 0.5 + h / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 19, 30, 31, 60, 200])
def test_the_t_quantile_leaves_2_5_percent_above_it(df):
    assert student_t_cdf(experiments.t_975(df), df) == pytest.approx(0.975, abs=2e-5)


def test_a_paired_difference_carries_its_95_percent_t_interval(tmp_path):
    plain, se = [0.600, 0.605, 0.610], [0.640, 0.643, 0.652]
    fake_experiment(tmp_path / "exp", plain, se)
    diff = experiments.summarize(str(tmp_path / "exp"))["differences"][0]
    d = 100 * (np.array(se) - np.array(plain))
    half = 4.303 * d.std(ddof=1) / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert diff["ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
    markdown = (tmp_path / "exp" / "results.md").read_text()
    assert "95% t-interval" in markdown and f"| {diff['ci95'][0]:+.2f} to {diff['ci95'][1]:+.2f} |" in markdown
    fake_experiment(tmp_path / "one", [0.6], [0.64])
    assert experiments.summarize(str(tmp_path / "one"))["differences"][0]["ci95"] is None


def test_the_time_ratio_is_tinyse_over_pytorch_training_seconds():
    runs = [{"seed": 0, "library": "tinyse", "train_seconds": 300.0}, {"seed": 0, "library": "torch",
                                                                       "train_seconds": 100.0},
            {"seed": 1, "library": "tinyse", "train_seconds": 500.0}, {"seed": 1, "library": "torch",
                                                                       "train_seconds": 100.0}]
    assert experiments.time_ratio(runs) == {"mean": 4.0, "per_seed": {0: 3.0, 1: 5.0}}
    assert experiments.time_ratio(runs[::2]) is None  # one library only


# --- the studies of the fast recipe ------------------------------------------------------------------
STUDY_TINY = ["--epochs", "1", "--train-subset", "32", "--test-subset", "20", "--batch-size", "16", "--eval-every",
              "1", "--no-progress"]


def study(root, name, *extra, out="runs"):
    return experiments.main([name, *STUDY_TINY, "--data-dir", str(root / "data"), "--out", str(root / out / name),
                             *extra])


def test_the_recipe_study_switches_each_ingredient_off_alone():
    variants = experiments.recipe_variants("se_resnet20")
    assert [v["label"] for v in variants] == ["fast", "no-onecycle", "no-nesterov", "no-label-smoothing",
                                             "decay-norm-and-bias", "no-ema"]
    budget = experiments.STUDIES["recipe"]["budget"]
    fast = experiments.run_config("out", variants[0], 0, budget)
    assert (fast["recipe"], fast["epochs"], fast["val_split"], fast["schedule"]) == ("fast", 5, 5000, "onecycle")
    changed = {}
    for v in variants[1:]:
        config = experiments.run_config("out", v, 0, budget)
        changed[v["label"]] = {k: config[k] for k in fast if config[k] != fast[k] and k != "out"}
    assert changed == {"no-onecycle": {"schedule": "step", "warmup_epochs": 0.0},
                       "no-nesterov": {"nesterov": False}, "no-label-smoothing": {"label_smoothing": 0.0},
                       "decay-norm-and-bias": {"decay_norm_and_bias": True}, "no-ema": {"ema": 0.0}}


def test_the_tuning_study_moves_one_setting_at_a_time_over_the_recipes_schedule():
    variants = experiments.tune_variants("se_resnet20")
    budget = experiments.STUDIES["tune"]["budget"]
    fast = experiments.run_config("out", variants[0], 0, budget)
    assert (fast["recipe"], fast["epochs"], fast["train_subset"], fast["val_split"]) == ("fast", 15, 15000, 5000)
    assert experiments.STUDIES["tune"]["metric"] == "val_acc"
    changed = {}
    for v in variants[1:]:
        config = experiments.run_config("out", v, 0, budget)
        changed[v["label"]] = {k: config[k] for k in fast if config[k] != fast[k] and k != "out"}
    assert changed == {"lr=0.1": {"lr": 0.1}, "lr=0.4": {"lr": 0.4}, "batch=64": {"batch_size": 64, "lr": 0.1},
                       "weight-decay=1e-3": {"weight_decay": 1e-3}}
    assert [v["folder"] for v in variants] == ["fast", "lr-0.1", "lr-0.4", "batch-64", "weight-decay-1e-3"]


def test_the_full_budget_study_moves_one_setting_over_the_whole_training_set_less_a_validation_split():
    model, variants, baseline = experiments.study_variants("full-budget", "se_resnet20")
    budget = experiments.STUDIES["full-budget"]["budget"]
    first, *others = (experiments.run_config("out", v, 0, budget) for v in variants)
    assert (model, baseline, experiments.STUDIES["full-budget"]["metric"]) == ("se_resnet20", "fast", "val_acc")
    assert (first["recipe"], first["epochs"], first["train_subset"], first["val_split"]) == ("fast", 15, None, 5000)
    assert (first["lr"], first["batch_size"]) == (0.2, 128)
    changed = {v["label"]: {k: c[k] for k in first if c[k] != first[k] and k != "out"}
               for v, c in zip(variants[1:], others)}
    assert changed == {"lr=0.4": {"lr": 0.4}, "batch=64": {"batch_size": 64},
                       "zero-init": {"zero_init_residual": True}, "wd=1e-4": {"weight_decay": 1e-4},
                       "no-label-smoothing": {"label_smoothing": 0.0}, "r=4": {"reduction": 4},
                       "batch=256": {"batch_size": 256, "lr": 0.4}, "epochs=20": {"epochs": 20, "warmup_epochs": 4.0},
                       "light-aug": {"crop_padding": 2, "flip": "alternate"},
                       "light-aug+ls=0.2": {"crop_padding": 2, "flip": "alternate", "label_smoothing": 0.2},
                       "light-aug+wd=1e-3": {"crop_padding": 2, "flip": "alternate", "weight_decay": 1e-3},
                       "light-aug+pad=1": {"crop_padding": 1, "flip": "alternate"},
                       "light-aug+ema=0.999": {"crop_padding": 2, "flip": "alternate", "ema": 0.999},
                       "light-aug+warmup=1": {"crop_padding": 2, "flip": "alternate", "warmup_epochs": 1.0},
                       "light-aug+cosine": {"crop_padding": 2, "flip": "alternate", "schedule": "cosine"},
                       "light-aug+warmup=5": {"crop_padding": 2, "flip": "alternate", "warmup_epochs": 5.0},
                       "light-aug+momentum=0.95": {"crop_padding": 2, "flip": "alternate", "momentum": 0.95},
                       "light-aug+momentum=0.95+lr=0.1": {"crop_padding": 2, "flip": "alternate", "momentum": 0.95,
                                                          "lr": 0.1},
                       "light-aug+whiten": {"crop_padding": 2, "flip": "alternate", "whiten_stem": True},
                       "light-aug+r=4+gate-bias=2": {"crop_padding": 2, "flip": "alternate", "reduction": 4,
                                                     "se_gate_bias": 2.0},
                       "light-aug+reflect": {"crop_padding": 2, "flip": "alternate", "crop_fill": "reflect"},
                       "light-aug+r=4+gate-bias=2+reflect": {"crop_padding": 2, "flip": "alternate", "reduction": 4,
                                                             "se_gate_bias": 2.0, "crop_fill": "reflect"},
                       "light-aug+muon=0.03": {"crop_padding": 2, "flip": "alternate", "muon_lr": 0.03}}


@pytest.mark.parametrize("study, moved", [("no-smoothing", {"label_smoothing": (0.1, 0.0)}),
                                          ("light-aug", {"crop_padding": (4, 2), "flip": ("random", "alternate")})])
def test_the_studies_beside_se_vs_plain_move_one_setting_on_the_test_set(study, moved):
    configs = {}
    for name in ("se-vs-plain", study):
        model, variants, baseline = experiments.study_variants(name, "resnet20")
        assert (model, baseline) == ("resnet20", "resnet20")
        assert [v["model"] for v in variants] == ["resnet20", "se_resnet20"]
        configs[name] = experiments.run_config("out", variants[1], 0, experiments.STUDIES[name]["budget"])
    assert experiments.STUDIES[study]["metric"] == "test_acc"
    before, after = configs["se-vs-plain"], configs[study]
    assert {k: (before[k], after[k]) for k in before if before[k] != after[k]} == moved
    assert (after["train_subset"], after["val_split"]) == (None, 0)


def test_the_twenty_epochs_study_is_the_recipe_as_it_stands_stretched_to_20_epochs():
    model, variants, baseline = experiments.study_variants("twenty-epochs", "se_resnet20")
    assert (model, baseline, [v["folder"] for v in variants]) == ("se_resnet20", "epochs=20", ["epochs-20"])
    _, compared, _ = experiments.study_variants("light-aug", "resnet20")
    fifteen = experiments.run_config("out", compared[1], 0, experiments.STUDIES["light-aug"]["budget"])
    twenty = experiments.run_config("out", variants[0], 0, experiments.STUDIES["twenty-epochs"]["budget"])
    assert experiments.differences(fifteen, twenty) == {"epochs": (15, 20), "warmup_epochs": (3.0, 4.0)}
    assert experiments.STUDIES["twenty-epochs"]["metric"] == "test_acc"


RUNS = Path(__file__).resolve().parents[1] / "docs" / "runs"


@pytest.mark.parametrize("name", sorted(experiments.STUDIES))
def test_every_committed_run_matches_its_studys_budget_as_the_code_stands(name):
    """A committed run is skipped on a fresh clone only if its config is what the study would train now: a recipe
    that moves on (the fast recipe's peak lr 0.2 -> 0.4) must leave each study's own budget pinned."""
    folder = RUNS / name
    configs = sorted(folder.glob("*/seed*/config.json"))
    if not configs:
        pytest.skip(f"no committed runs of {name}")
    model = experiments.STUDIES[name]["model"]
    if (folder / "experiment.json").exists():
        model = json.loads((folder / "experiment.json").read_text())["model"]
    model, variants, _ = experiments.study_variants(name, model)
    by_folder = {v["folder"]: v for v in variants}
    for path in configs:
        v = by_folder[path.parent.parent.name]
        wanted = experiments.run_config(str(folder), v, int(path.parent.name.removeprefix("seed")),
                                        experiments.STUDIES[name]["budget"])
        assert experiments.differences(json.loads(path.read_text()), wanted) == {}, path


def test_every_study_folder_is_in_the_runs_index_with_its_command():
    """docs/runs/README.md is how a reader finds a study: a folder without its row there is lost."""
    index = (RUNS / "README.md").read_text()
    for folder in sorted(p for p in RUNS.iterdir() if p.is_dir()):
        assert folder.name in experiments.STUDIES, folder
        assert f"| `{folder.name}/` | `python -m tinyse.experiments {folder.name} --seeds" in index, folder.name


def test_every_fast_study_pins_the_settings_the_recipe_has_moved_since_it_began():
    """The recipe's peak lr went 0.2 -> 0.4 -> 0.2, its augmentation to 2-pixel crops and the alternating flip, its
    conv filters' optimiser from SGD to Muon: a study that leaves one of those to the recipe would change its runs
    each time the recipe moves."""
    moved = ("lr", "crop_padding", "flip", "muon_lr")
    fast = train_module.RECIPES["fast"]
    assert tuple(fast[k] for k in moved) == (0.2, 2, "alternate", 0.03)
    for name, settings in experiments.STUDIES.items():
        if settings["budget"].get("recipe") == "fast":
            assert set(moved) <= set(settings["budget"]), name
    assert experiments.STUDIES["fast"]["budget"]["lr"] == 0.4
    light = experiments.STUDIES["light-aug"]["budget"]
    assert {k: light[k] for k in moved} == {**{k: fast[k] for k in moved}, "muon_lr": 0.0}


def test_the_recipe_study_runs_records_and_compares_on_validation(fake_cifar10, capsys):
    study(fake_cifar10, "recipe", "--seeds", "0", "--val-split", "20")
    out = fake_cifar10 / "runs" / "recipe"
    results = json.loads((out / "results.json").read_text())
    assert results["metric"] == "val_acc" and results["baseline"] == "fast" and len(results["runs"]) == 6
    assert [d["variant"] for d in results["differences"]] == [v["label"] for v in
                                                              experiments.recipe_variants("se_resnet20")[1:]]
    assert all(d["baseline"] == "fast" and d["ci95"] is None for d in results["differences"])  # one seed
    assert results["stats"]["fast"]["accuracy"]["mean"] == pytest.approx(100 * results["runs"][0]["val_acc"])
    assert "test_accuracy" in results["stats"]["fast"] and "flip_tta" in results["stats"]["fast"]
    markdown = (out / "results.md").read_text()
    assert "| variant | seeds | val acc % |" in markdown and "## Minus fast, paired by seed" in markdown
    summary = json.loads((out / "fast" / "seed0" / "summary.json").read_text())
    assert summary["study"] == "recipe" and summary["weights"] == {"file": "weights.npz", "of": "ema"}
    assert summary["command"].startswith("python -m tinyse.train --model se_resnet20 --seed 0 --out ")
    assert summary["final"]["test_acc"] == results["runs"][0]["test_acc"] and summary["threads"] >= 1
    no_ema = json.loads((out / "no-ema" / "seed0" / "summary.json").read_text())
    assert no_ema["weights"]["of"] == "raw"


def test_a_study_trains_only_the_arms_it_is_given_and_refuses_an_unknown_one(fake_cifar10, capsys):
    study(fake_cifar10, "recipe", "--seeds", "0", "--val-split", "20", "--variants", "no-ema")
    out = fake_cifar10 / "runs" / "recipe"
    assert sorted(p.parent.name for p in out.glob("*/seed0")) == ["no-ema"]
    assert [(r["variant"], r["seed"]) for r in json.loads((out / "results.json").read_text())["runs"]] == [
        ("no-ema", 0)]
    with pytest.raises(SystemExit, match="no arm 'no-adam' in the recipe study; its arms: fast, no-onecycle"):
        study(fake_cifar10, "recipe", "--seeds", "0", "--val-split", "20", "--variants", "no-ema", "no-adam")


def committed_copy(source, destination):
    """What a fresh clone of the repository holds of a study: the files git keeps."""
    kept = ("experiment.json", "results.json", "results.md", "results.png", "config.json", "metrics.jsonl",
            "summary.json", "weights.npz")
    for path in Path(source).rglob("*"):
        if path.is_file() and path.name in kept:
            target = Path(destination) / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())


def test_committed_runs_are_done_on_a_fresh_clone_and_the_study_grows_from_them(fake_cifar10, monkeypatch):
    study(fake_cifar10, "se-vs-plain", "--seeds", "0")
    committed_copy(fake_cifar10 / "runs" / "se-vs-plain", fake_cifar10 / "clone" / "se-vs-plain")
    clone = fake_cifar10 / "clone" / "se-vs-plain"
    assert not list(clone.rglob("last.npz"))
    weights = clone / "se_resnet20" / "seed0" / "weights.npz"
    assert 0 < weights.stat().st_size < 2_000_000
    trained = []
    real_train = train_module.train

    def recording_train(config, stop_after_steps=None):
        trained.append(config["out"])
        return real_train(config, stop_after_steps)

    monkeypatch.setattr(train_module, "train", recording_train)
    study(fake_cifar10, "se-vs-plain", "--seeds", "0", "1", out="clone")
    assert sorted(Path(p).relative_to(clone).as_posix() for p in trained) == ["resnet20/seed1", "se_resnet20/seed1"]
    results = json.loads((clone / "results.json").read_text())
    assert [(r["variant"], r["seed"]) for r in results["runs"]] == [
        ("resnet20", 0), ("resnet20", 1), ("se_resnet20", 0), ("se_resnet20", 1)]
    diff = results["differences"][0]
    assert (diff["variant"], diff["baseline"], diff["n"]) == ("se_resnet20", "resnet20", 2)
    assert diff["ci95"][0] < diff["mean"] < diff["ci95"][1]
    # a committed record is kept as committed, and its weights evaluate to the run's test accuracy
    assert json.loads((clone / "resnet20" / "seed0" / "summary.json").read_text()) == json.loads(
        (fake_cifar10 / "runs" / "se-vs-plain" / "resnet20" / "seed0" / "summary.json").read_text())
    report = evaluate_checkpoint(weights)
    assert report["top1"] == pytest.approx(results["runs"][2]["test_acc"])


def test_the_torch_check_trains_both_libraries_and_reports_the_time_ratio(fake_cifar10):
    study(fake_cifar10, "torch-check", "--seeds", "0", "--model", "resnet20")
    out = fake_cifar10 / "runs" / "torch-check"
    results = json.loads((out / "results.json").read_text())
    assert [(r["variant"], r["library"]) for r in results["runs"]] == [("tinyse", "tinyse"), ("torch", "torch")]
    assert results["time_ratio"]["per_seed"] == {"0": pytest.approx(
        results["runs"][0]["train_seconds"] / results["runs"][1]["train_seconds"])}
    assert "Training time, tinyse / PyTorch: " in (out / "results.md").read_text()
    torch_summary = json.loads((out / "torch" / "seed0" / "summary.json").read_text())
    assert torch_summary["command"].startswith("python -m tinyse.bench.train_torch ")
    assert torch_summary["library"] == "torch" and torch_summary["machine"]["torch"]


def test_the_muon_se_vs_plain_study_pairs_resnet20_with_the_light_aug_muon_studys_runs():
    """Its SE-ResNet-20 runs are the light-aug-muon study's Muon runs copied in; ResNet-20 differs in the model only."""
    model, variants, baseline = experiments.study_variants("muon-se-vs-plain", "resnet20")
    assert (model, baseline, [v["model"] for v in variants]) == ("resnet20", "resnet20", ["resnet20", "se_resnet20"])
    _, muon_study, _ = experiments.study_variants("light-aug-muon", "se_resnet20")
    for seed in experiments.STUDIES["muon-se-vs-plain"]["seeds"]:
        muon = experiments.run_config("a", muon_study[1], seed, experiments.STUDIES["light-aug-muon"]["budget"])
        plain, se = (experiments.run_config("b", v, seed, experiments.STUDIES["muon-se-vs-plain"]["budget"])
                     for v in variants)
        assert experiments.differences(se, muon) == {}
        assert experiments.differences(plain, muon) == {"model": ("resnet20", "se_resnet20")}


def test_the_muon_torch_check_trains_what_the_light_aug_muon_study_trains_and_the_recipe_as_it_stands():
    """Its tinyse runs are the light-aug-muon study's Muon runs copied in: valid only while the configs agree."""
    _, torch_check, _ = experiments.study_variants("muon-torch", "se_resnet20")
    _, muon_study, _ = experiments.study_variants("light-aug-muon", "se_resnet20")
    recipe = train_module.config_from_args(train_module.parse_args(["--recipe", "fast"]))
    for seed in (0, 1):
        muon = experiments.run_config("a", muon_study[1], seed, experiments.STUDIES["light-aug-muon"]["budget"])
        assert experiments.differences(muon, dict(recipe, seed=seed)) == {}
        for v in torch_check:
            config = experiments.run_config("b", v, seed, experiments.STUDIES["muon-torch"]["budget"])
            library = {} if v["library"] == "tinyse" else {"library": ("torch", "tinyse")}
            assert experiments.differences(config, muon) == library


def test_the_light_aug_torch_check_trains_what_the_light_aug_study_trains_for_se_resnet20():
    """Its tinyse runs are the light-aug study's SE-ResNet-20 runs copied in: valid only while the configs agree."""
    _, torch_check, _ = experiments.study_variants("light-aug-torch", "se_resnet20")
    _, compared, _ = experiments.study_variants("light-aug", "resnet20")
    assert [(v["label"], v["library"]) for v in torch_check] == [("tinyse", "tinyse"), ("torch", "torch")]
    for seed in (0, 1):
        light = experiments.run_config("a", compared[1], seed, experiments.STUDIES["light-aug"]["budget"])
        for v in torch_check:
            config = experiments.run_config("b", v, seed, experiments.STUDIES["light-aug-torch"]["budget"])
            library = {} if v["library"] == "tinyse" else {"library": ("torch", "tinyse")}
            assert experiments.differences(config, light) == library
            assert (config["model"], config["crop_padding"], config["flip"]) == ("se_resnet20", 2, "alternate")


@pytest.mark.parametrize("study, folders, moved", [
    ("light-aug-reduction", ["r-16", "r-4"], {"reduction": (4, None)}),  # SE at r=4 against the recipe's 16
    ("light-aug-gates", ["as-initialised", "gate-bias-2"], {"se_gate_bias": (2.0, None)}),  # SE's gates started open
    ("light-aug-muon", ["sgd", "muon-0.03"], {"muon_lr": (0.03, 0.0)}),  # the conv filters trained by Muon
])
def test_a_study_with_the_light_aug_studys_se_resnet20_runs_copied_in_moves_one_setting(study, folders, moved):
    """Its baseline runs are the light-aug study's SE-ResNet-20 runs copied in: valid only while the configs agree."""
    model, variants, baseline = experiments.study_variants(study, "se_resnet20")
    assert (model, baseline, [v["folder"] for v in variants]) == ("se_resnet20", variants[0]["label"], folders)
    assert variants[0]["train_args"] == [] and variants[1]["train_args"]  # the copied runs are the recipe's
    _, compared, _ = experiments.study_variants("light-aug", "resnet20")
    for seed in experiments.STUDIES[study]["seeds"]:
        light = experiments.run_config("a", compared[1], seed, experiments.STUDIES["light-aug"]["budget"])
        copied, arm = (experiments.run_config("b", v, seed, experiments.STUDIES[study]["budget"]) for v in variants)
        assert experiments.differences(copied, light) == {}
        assert experiments.differences(arm, light) == moved
    assert experiments.STUDIES[study]["metric"] == "test_acc"


def test_the_deep_study_is_the_light_aug_study_on_resnet56():
    """ResNet-56 against SE-ResNet-56: the recipe as it stands, only the depth changed."""
    model, variants, baseline = experiments.study_variants("deep", experiments.STUDIES["deep"]["model"])
    assert (model, baseline, [v["model"] for v in variants]) == ("resnet56", "resnet56", ["resnet56", "se_resnet56"])
    _, light_variants, _ = experiments.study_variants("light-aug", "resnet20")
    for deep, light in zip(variants, light_variants):
        config = experiments.run_config("a", deep, 0, experiments.STUDIES["deep"]["budget"])
        wanted = experiments.run_config("a", light, 0, experiments.STUDIES["light-aug"]["budget"])
        assert experiments.differences(config, wanted) == {"model": (deep["model"], light["model"])}


def test_every_study_has_a_title_for_its_results():
    assert set(experiments.STUDIES) <= set(experiments.TITLES)


def test_two_runs_at_a_time_each_in_its_own_process_with_one_thread(fake_cifar10):
    stopped, results = run_compare(fake_cifar10, seeds=[0], jobs=2)
    assert not stopped and len(results["runs"]) == 2
    for run in results["runs"]:
        folder = Path(run["folder"])
        assert (folder / "train.log").read_text().count("epoch   1") == 1
        assert json.loads((folder / "config.json").read_text())["threads"] == max(1, workers() // 2)
        assert (folder / "summary.json").exists() and (folder / "weights.npz").exists()
    # the same runs trained one at a time, in this process, with as many threads (tinyse's and BLAS's, as each
    # child process had): the same weights. BLAS's thread count matters too: a product split over two threads
    # may add in another order.
    os.environ["TINYSE_NUM_THREADS"], before = "1", os.environ.get("TINYSE_NUM_THREADS")
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            serial = run_compare(fake_cifar10, seeds=[0], out="serial")[1]
    finally:
        os.environ.pop("TINYSE_NUM_THREADS") if before is None else os.environ.update(TINYSE_NUM_THREADS=before)
    assert [r["test_acc"] for r in serial["runs"]] == [r["test_acc"] for r in results["runs"]]
    if workers() == 2:
        for run in serial["runs"]:
            parallel = Path(run["folder"].replace("serial", "exp")) / "weights.npz"
            with np.load(Path(run["folder"]) / "weights.npz") as a, np.load(parallel) as b:
                assert all(np.array_equal(a[k], b[k]) for k in a.files if k.startswith("model/"))
