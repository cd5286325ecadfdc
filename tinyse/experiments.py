"""The SE paper's comparisons at a student's budget: ``python -m tinyse.experiments``.

    python -m tinyse.experiments compare                      # ResNet-20 vs SE-ResNet-20, seeds 0 1 2
    python -m tinyse.experiments compare --model resnet56 --seeds 0 1 2 3 4 --device gpu
    python -m tinyse.experiments reduction                    # SE-ResNet-20 with r = 2 4 8 16 32
    python -m tinyse.experiments squeeze --with-plain         # avg, max, and plain ResNet-20 for reference
    python -m tinyse.experiments excitation --values sigmoid tanh
    python -m tinyse.experiments integration                  # standard, pre, post, identity (the paper's Fig. 5)
    python -m tinyse.experiments stages                       # SE in stage 1, 2, 3 only, or in all
    python -m tinyse.experiments summarize experiments/compare-resnet20   # rebuild the results, no training

Every variant is trained once per seed with one shared recipe, each run by
``tinyse.train`` in its own folder ``OUT/VARIANT/seedN`` (config.json,
metrics.jsonl, last.npz, curves.png). The seed sets the initial weights, the
training subset and the data order, so the plain and SE runs of one seed see
the same images in the same order: their difference is paired by seed.

The default budget is sized for a CPU: 10 epochs (cosine schedule) on 10,000
training images (a random subset per seed), no validation split, tested on
all 10,000 test images after every epoch; batch 128, lr 0.1, He et al.'s
augmentation. One run is therefore 100,000 training images and 100,000 test
images; divide by your machine's speeds to plan (``python -m tinyse.train``
prints the training images/s on each epoch line, and evaluation is a few
times faster). ``compare`` is 6 runs (2 variants x 3 seeds), an ablation of
5 values 15 runs (``--seeds 0`` for a first look). SE adds a few percent to
the time.

Re-running the same command skips finished runs (their metrics.jsonl reaches
the requested epochs), resumes interrupted ones from their last.npz, and
refuses a folder whose runs used another recipe. Ctrl-C stops after the
current step, keeps the run resumable, and writes the results so far.

The experiment folder receives:
    experiment.json   the experiment's name, model and variants (read by ``summarize``)
    results.json      every finished run: variant, seed, test accuracy, training seconds, params, MACs, recipe;
                      and the statistics per variant and of each SE variant minus the plain model
    results.md        the same as tables: mean +- sample std over seeds, min - max, error, params, MACs, time
    results.png       test accuracy against epoch: each seed thin, the mean over seeds thick
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

from tinyse import models
from tinyse import train as train_module
from tinyse.backend import module_for_device
from tinyse.checkpoint import atomic_write
from tinyse.data import DataError
from tinyse.memory import keep_freed_memory
from tinyse.models import se_options
from tinyse.nn.se import SQUEEZES
from tinyse.ops.se import GATES
from tinyse.summary import INPUT_SHAPE, summary

# The default budget (see the docstring) and the values each ablation tries by default (the paper's).
BUDGET = {"epochs": 10, "train_subset": 10000, "test_subset": None, "schedule": "cosine", "val_split": 0,
          "batch_size": 128, "lr": 0.1}
SEEDS = (0, 1, 2)
ABLATIONS = {
    "reduction": ("2", "4", "8", "16", "32"),
    "squeeze": SQUEEZES,
    "excitation": GATES,
    "integration": se_options.INTEGRATIONS,
    "stages": ("1", "2", "3", "all"),
}
# Settings of a run that do not change its result: a folder may be resumed or summarized with others.
NOT_RECIPE = ("out", "seed", "device", "data_dir", "progress", "prefetch", "resumed")


# --- what to train --------------------------------------------------------------------------
def plain_and_se(model):
    """(plain name, SE name) of a model family: "resnet20" or "se_resnet20" -> ("resnet20", "se_resnet20")."""
    plain = model.removeprefix("se_")
    if plain not in models.list() or f"se_{plain}" not in models.list():
        families = [m for m in models.list() if f"se_{m}" in models.list()]
        raise ValueError(f"unknown model family {model!r}; choose one of {', '.join(families)}")
    return plain, f"se_{plain}"


def variant(label, model, *train_args):
    """One arm of an experiment: a label for the tables, its folder name, and its ``tinyse.train`` arguments."""
    return {"label": label, "folder": label.replace("=", "-"), "model": model, "train_args": list(train_args)}


def compare_variants(model):
    plain, se = plain_and_se(model)
    return [variant(plain, plain), variant(se, se)]


def ablation_variants(option, model, values=None, with_plain=False):
    """One SE variant per value of ``option`` (reduction, squeeze, excitation, integration or stages).

    Values are strings, as typed: reduction "2", squeeze "max", stages "1" (SE in stage 1 only) or "all".
    """
    if option not in ABLATIONS:
        raise ValueError(f"unknown ablation {option!r}; choose one of {', '.join(ABLATIONS)}")
    plain, se = plain_and_se(model)
    values = [str(v) for v in (ABLATIONS[option] if values is None else values)]
    if not values:
        raise ValueError(f"no values for the {option} ablation")
    if len(set(values)) != len(values):
        raise ValueError(f"repeated values for the {option} ablation: {values}")
    variants = [variant(plain, plain)] if with_plain else []
    for value in values:
        if option == "reduction" and not (value.isdigit() and int(value) >= 1):
            raise ValueError(f"reduction must be a whole number >= 1, got {value!r}")
        if option != "reduction" and value not in ABLATIONS[option]:
            raise ValueError(f"unknown {option} {value!r}; choose from {', '.join(ABLATIONS[option])}")
        if option == "stages":
            stages = ["1", "2", "3"] if value == "all" else [value]
            variants.append(variant(f"stages={value}", se, "--stages", *stages))
        else:
            variants.append(variant(f"{option}={value}", se, f"--{option}", value))
    return variants


def run_config(out, variant, seed, recipe, device="cpu", data_dir=None, progress=True):
    """The ``tinyse.train`` config of one run (built by train's own command line, so every default is train's)."""
    run_folder = os.path.join(out, variant["folder"], f"seed{seed}")
    args = ["--model", variant["model"], "--seed", str(seed), "--out", run_folder, "--device", device,
            *variant["train_args"]]
    for key, value in recipe.items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    if data_dir:
        args += ["--data-dir", data_dir]
    if not progress:
        args.append("--no-progress")
    return train_module.config_from_args(train_module.parse_args(args))


# --- run folders ----------------------------------------------------------------------------
def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, value):
    atomic_write(path, lambda f: f.write((json.dumps(value, indent=2) + "\n").encode()))


def epoch_rows(folder):
    """The metrics of each epoch of a run folder, the last line of an epoch winning (a run resumed after a crash
    between its metrics line and its checkpoint repeats that epoch); [] if there are none yet."""
    if not os.path.exists(os.path.join(folder, "metrics.jsonl")):
        return []
    by_epoch = {row["epoch"]: row for row in train_module.read_metrics(folder)}
    return [by_epoch[e] for e in sorted(by_epoch)]


def is_finished(folder, epochs):
    rows = epoch_rows(folder)
    return bool(rows) and rows[-1]["epoch"] >= epochs


def differences(saved, wanted):
    """The settings (not paths or devices) in which two run configs differ: {key: (saved, wanted)}.
    A setting only one of them has (train gained or lost an option since) does not count."""
    keys = (saved.keys() & wanted.keys()) - set(NOT_RECIPE)
    return {k: (saved.get(k), wanted.get(k)) for k in sorted(keys) if saved.get(k) != wanted.get(k)}


def check_experiment_folder(out, name, model, variants, wanted):
    """Refuse a folder that holds another experiment or runs of another recipe; record this experiment's variants."""
    path = os.path.join(out, "experiment.json")
    known = read_json(path) if os.path.exists(path) else {"name": name, "model": model, "variants": []}
    if (known["name"], known["model"]) != (name, model):
        raise ValueError(f"{out} holds the {known['name']} experiment of {known['model']}: choose another --out")
    for config_path in glob.glob(os.path.join(out, "*", "seed*", "config.json")):
        saved = read_json(config_path)
        wanted_here = dict(wanted, **{k: saved.get(k) for k in ("model", *train_module.SE_OPTIONS)})
        changed = differences(saved, wanted_here)
        if changed:
            shown = ", ".join(f"{k} {old} (wanted {new})" for k, (old, new) in changed.items())
            raise ValueError(f"{os.path.dirname(config_path)} was trained with {shown}: choose another --out")
    folders = {v["folder"] for v in known["variants"]}
    known["variants"] += [v for v in variants if v["folder"] not in folders]
    os.makedirs(out, exist_ok=True)
    write_json(path, known)


def run_experiment(name, model, variants, seeds, out, recipe=None, device="cpu", data_dir=None, progress=True,
                   train=None):
    """Train every (seed, variant) not finished yet, seed by seed (so paired results arrive early); then summarize.

    ``recipe`` overrides entries of BUDGET; ``train`` replaces ``tinyse.train.train`` (for tests).
    Returns (stopped, results): stopped is True when Ctrl-C interrupted a run.
    """
    train = train or train_module.train
    seeds = list(seeds)
    if not seeds:
        raise ValueError("no seeds: give at least one, e.g. --seeds 0 1 2")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"repeated seeds: {seeds}")
    recipe = dict(BUDGET, **(recipe or {}))
    plan = [(v, seed, run_config(out, v, seed, recipe, device, data_dir, progress)) for seed in seeds for v in variants]
    check_experiment_folder(out, name, model, variants, plan[0][2])
    for i, (v, seed, config) in enumerate(plan, 1):
        head = f"[{i}/{len(plan)}] {v['label']} seed {seed}"
        folder = config["out"]
        if is_finished(folder, config["epochs"]):
            print(f"{head}: finished before, skipped")
            continue
        if os.path.exists(os.path.join(folder, "last.npz")):  # interrupted: continue it exactly
            config = train_module.config_from_args(train_module.parse_args(
                ["--resume", folder, "--device", device, *(["--data-dir", data_dir] if data_dir else []),
                 *([] if progress else ["--no-progress"])]
            ))
        print(f"{head}: training in {folder}", flush=True)
        result = train(config)
        if result["stopped"]:
            print(f"{head}: interrupted; run the same command again to continue")
            return True, summarize(out)
        rows = epoch_rows(folder)
        print(f"{head}: test accuracy {100 * rows[-1]['test_acc']:.2f}% "
              f"after {sum(r['seconds'] for r in rows):.0f} s of training", flush=True)
    return False, summarize(out)


# --- results --------------------------------------------------------------------------------
_SIZES = {}  # (model, dataset, SE options) -> (params, macs): one model build per variant, not per run


def model_size(config):
    """(parameters, multiply-adds per 32x32 image) of the model a run config builds."""
    key = json.dumps({k: config.get(k) for k in ("model", "dataset", *train_module.SE_OPTIONS)}, sort_keys=True)
    if key not in _SIZES:
        num_classes = {"cifar10": 10, "cifar100": 100}[config["dataset"]]
        model = train_module.build_model(dict(config, device="cpu"), num_classes)
        counts = summary(model, INPUT_SHAPE, show=False)
        _SIZES[key] = counts["total_params"], counts["total_macs"]
    return _SIZES[key]


def run_record(variant, folder):
    """What results.json keeps of one finished run."""
    config, rows = read_json(os.path.join(folder, "config.json")), epoch_rows(folder)
    params, macs = model_size(config)
    options = {k: config.get(k) for k in train_module.SE_OPTIONS if config.get(k) is not None}
    se = se_options.resolve(True, **options) if config["model"].startswith("se_") else None
    return {
        "variant": variant["label"], "seed": config["seed"], "model": config["model"], "se": se,
        "test_acc": rows[-1]["test_acc"], "train_seconds": sum(r["seconds"] for r in rows),
        "params": params, "macs": macs, "folder": folder,
        "recipe": {k: v for k, v in config.items() if k not in NOT_RECIPE and k != "model"
                   and k not in train_module.SE_OPTIONS},
    }


def spread(values):
    """mean, sample std (None for one value), min and max of a list of numbers."""
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return {"n": len(values), "mean": float(values.mean()), "std": std,
            "min": float(values.min()), "max": float(values.max())}


def variant_stats(runs):
    """Per variant: test accuracy in % (mean, std, min, max over seeds), error %, params, MACs, mean training s."""
    accuracy = spread([100 * r["test_acc"] for r in runs])
    return {"accuracy": accuracy, "error": 100 - accuracy["mean"], "params": runs[0]["params"],
            "macs": runs[0]["macs"], "train_seconds": float(np.mean([r["train_seconds"] for r in runs]))}


def paired_difference(se_label, plain_label, runs, stats):
    """SE minus plain test accuracy (points) over the seeds both have, and a sentence that reads it."""
    se = {r["seed"]: 100 * r["test_acc"] for r in runs if r["variant"] == se_label}
    plain = {r["seed"]: 100 * r["test_acc"] for r in runs if r["variant"] == plain_label}
    seeds = sorted(se.keys() & plain.keys())
    if not seeds:
        return None
    diff = spread([se[s] - plain[s] for s in seeds])
    diff.update(variant=se_label, baseline=plain_label, seeds=seeds)
    seed_spreads = [stats[label]["accuracy"]["std"] for label in (se_label, plain_label)]
    head = f"{se_label} minus {plain_label}: {diff['mean']:+.2f} points"
    if diff["n"] < 2:
        diff["exceeds_seed_spread"] = None
        diff["reading"] = f"{head} on one seed: no seed spread to judge it against; run more seeds."
        return diff
    seed_spread = max(seed_spreads)
    exceeds = abs(diff["mean"]) > seed_spread
    same_sign = diff["min"] > 0 or diff["max"] < 0
    diff["exceeds_seed_spread"] = exceeds
    diff["reading"] = (
        f"{head} over {diff['n']} seeds (per seed {diff['min']:+.2f} to {diff['max']:+.2f}), "
        f"{'larger than' if exceeds else 'within'} the seed-to-seed spread (std up to {seed_spread:.2f}), "
        f"{'the same sign for every seed' if same_sign else 'with seeds disagreeing in sign'}: "
        + ("a difference this budget resolves." if exceeds and same_sign else "not distinguishable from seed noise.")
    )
    return diff


def summarize(out):
    """Rebuild OUT/results.json and OUT/results.md from the finished run folders (no training); return the results."""
    path = os.path.join(out, "experiment.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no experiment.json in {out}: not an experiment folder")
    experiment = read_json(path)
    runs, unfinished = [], []
    for v in experiment["variants"]:
        folders = glob.glob(os.path.join(out, v["folder"], "seed*"))
        for folder in sorted(folders, key=lambda f: int(f.rsplit("seed", 1)[1])):
            config_path = os.path.join(folder, "config.json")
            if os.path.exists(config_path) and is_finished(folder, read_json(config_path)["epochs"]):
                runs.append(run_record(v, folder))
            else:
                unfinished.append(folder)
    labels = [v["label"] for v in experiment["variants"] if any(r["variant"] == v["label"] for r in runs)]
    stats = {label: variant_stats([r for r in runs if r["variant"] == label]) for label in labels}
    plain = [v["label"] for v in experiment["variants"] if v["label"] in stats and not v["model"].startswith("se_")]
    diffs = [paired_difference(label, plain[0], runs, stats) for label in labels if plain and label not in plain]
    results = dict(experiment, runs=runs, unfinished=unfinished, stats=stats, differences=[d for d in diffs if d])
    write_json(os.path.join(out, "results.json"), results)
    atomic_write(os.path.join(out, "results.md"), lambda f: f.write(results_markdown(results).encode()))
    if runs:
        plot_results(out, results)
    return results


def plot_results(out, results):
    """OUT/results.png: test accuracy against epoch, a colour per variant (thin: each seed, thick: their mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, label in enumerate(results["stats"]):
        color = f"C{index}"
        curves = [[100 * row["test_acc"] for row in train_module.read_metrics(run["folder"])]
                  for run in results["runs"] if run["variant"] == label]
        for curve in curves:
            axes.plot(range(1, len(curve) + 1), curve, color=color, alpha=0.35, linewidth=1)
        mean = np.mean([curve[: min(map(len, curves))] for curve in curves], axis=0)
        axes.plot(range(1, len(mean) + 1), mean, color=color, linewidth=2.5, marker="o",
                  label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
    recipe = results["runs"][0]["recipe"]
    images = f"{recipe['train_subset']:,}" if recipe["train_subset"] else "all"
    title = f"{results['name']}: {recipe['epochs']} epochs on {images} training images, {recipe['schedule']} lr"
    axes.set(xlabel="epoch", ylabel="test accuracy (%)", title=title, xticks=range(1, recipe["epochs"] + 1))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(os.path.join(out, "results.png"), lambda f: figure.savefig(f, format="png", dpi=100))
    plt.close(figure)


def recipe_line(recipe):
    subset = f"{recipe['train_subset']:,} training images (a random subset per seed)" if recipe["train_subset"] \
        else "all training images"
    test = f"the first {recipe['test_subset']:,} test images" if recipe["test_subset"] else "all test images"
    val = f", {recipe['val_split']:,} held out for validation" if recipe["val_split"] else ""
    epochs = f"{recipe['epochs']} epoch{'s' if recipe['epochs'] != 1 else ''}"
    return (f"Recipe: {recipe['dataset']}, {epochs}, {recipe['schedule']} schedule, "
            f"lr {recipe['lr']}, batch {recipe['batch_size']}, on {subset}{val}; tested on {test}.")


def results_markdown(results):
    """results.md: the recipe, a row per variant, the paired differences with their reading, a row per run."""
    stats, runs = results["stats"], results["runs"]
    model = results["model"]
    title = f"{model} against se_{model}" if results["name"] == "compare" else f"SE {results['name']} on se_{model}"
    lines = [f"# {title}", ""]
    if runs:
        lines += [recipe_line(runs[0]["recipe"]), ""]
    lines += [("Test accuracy after the last epoch, in %: mean ± sample std over seeds, and min – max; "
               "train s: seconds in training steps (evaluation excluded), mean over seeds."), "",
              "| variant | seeds | test acc % | min – max | error % | params | MACs | train s (mean) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, s in stats.items():
        a = s["accuracy"]
        std = "" if a["std"] is None else f" ± {a['std']:.2f}"
        lines.append(f"| {label} | {a['n']} | {a['mean']:.2f}{std} | {a['min']:.2f} – {a['max']:.2f} "
                     f"| {s['error']:.2f} | {s['params'] / 1e6:.3f} M | {s['macs'] / 1e6:.2f} M "
                     f"| {s['train_seconds']:.0f} |")
    if results["differences"]:
        lines += ["", "## Minus the plain model, paired by seed (accuracy points)", "",
                  "| variant | seeds | mean difference | std | min – max |", "|---|---:|---:|---:|---:|"]
        for d in results["differences"]:
            std = "–" if d["std"] is None else f"{d['std']:.2f}"
            lines.append(f"| {d['variant']} − {d['baseline']} | {d['n']} | {d['mean']:+.2f} | {std} "
                         f"| {d['min']:+.2f} – {d['max']:+.2f} |")
        lines += [""] + [d["reading"] for d in results["differences"]]
    lines += ["", "## Runs", "", "| variant | seed | test acc % | train s | folder |", "|---|---:|---:|---:|---|"]
    lines += [f"| {r['variant']} | {r['seed']} | {100 * r['test_acc']:.2f} | {r['train_seconds']:.0f} "
              f"| {r['folder']} |" for r in runs]
    if results["unfinished"]:
        lines += ["", "Unfinished (not counted): " + ", ".join(results["unfinished"])]
    return "\n".join(lines) + "\n"


# --- the command line -----------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tinyse.experiments", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    shared = argparse.ArgumentParser(add_help=False)
    add = shared.add_argument
    add("--model", default="resnet20", help="the model family: NAME and se_NAME are trained (default resnet20)")
    add("--seeds", type=int, nargs="+", default=list(SEEDS), help="default 0 1 2")
    add("--epochs", type=int, default=BUDGET["epochs"])
    add("--train-subset", type=int, default=BUDGET["train_subset"], help="0 for all 50,000 (default 10000)")
    add("--test-subset", type=int, default=BUDGET["test_subset"], help="the first N test images (default all)")
    add("--schedule", default=BUDGET["schedule"], choices=("step", "cosine", "constant"))
    add("--val-split", type=int, default=BUDGET["val_split"], help="training images held out (default 0)")
    add("--batch-size", type=int, default=BUDGET["batch_size"])
    add("--lr", type=float, default=BUDGET["lr"])
    add("--out", help="experiment folder (default experiments/COMMAND-MODEL)")
    add("--data-dir", help="where CIFAR is (default: $TINYSE_DATA, else ~/.cache/tinyse/data)")
    add("--device", default="cpu", choices=("cpu", "gpu"))
    add("--no-progress", dest="progress", action="store_false", help="no progress bar, only lines")
    commands.add_parser("compare", parents=[shared], help="the plain model against its SE twin")
    for option, values in ABLATIONS.items():
        sub = commands.add_parser(option, parents=[shared], help=f"SE with each {option}: {' '.join(values)}")
        sub.add_argument("--values", nargs="+", default=list(values), help=f"default {' '.join(values)}")
        sub.add_argument("--with-plain", action="store_true", help="also train the plain model, for reference")
    summarize_parser = commands.add_parser("summarize", help="rebuild results.json and results.md, no training")
    summarize_parser.add_argument("folder")
    return parser.parse_args(argv)


def main(argv=None):
    keep_freed_memory()  # a process-wide malloc setting, so the tool asks for it (tinyse/memory.py)
    args = parse_args(argv)
    try:
        if args.command == "summarize":
            print(results_markdown(summarize(args.folder)))
            return
        module_for_device(args.device)  # a clear error now if the GPU is missing
        if args.command == "compare":
            variants = compare_variants(args.model)
        else:
            variants = ablation_variants(args.command, args.model, args.values, args.with_plain)
        recipe = {k: getattr(args, k) for k in BUDGET}
        recipe["train_subset"] = recipe["train_subset"] or None
        family = plain_and_se(args.model)[0]
        out = args.out or os.path.join("experiments", f"{args.command}-{family}")
        stopped, results = run_experiment(args.command, family, variants, args.seeds, out, recipe, args.device,
                                          args.data_dir, args.progress)
    except (DataError, FileNotFoundError, FloatingPointError, RuntimeError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(results_markdown(results))
    print(f"written: {os.path.join(out, 'results.md')} and results.json")
    if stopped:
        sys.exit(130)


if __name__ == "__main__":
    main()
