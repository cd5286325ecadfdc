"""The SE paper's comparisons at a student's budget: ``python -m tinyse.experiments``.

    python -m tinyse.experiments compare                      # ResNet-20 vs SE-ResNet-20, seeds 0 1 2
    python -m tinyse.experiments compare --model resnet56 --seeds 0 1 2 3 4 --device gpu
    python -m tinyse.experiments reduction                    # SE-ResNet-20 with r = 2 4 8 16 32
    python -m tinyse.experiments squeeze --with-plain         # avg, max, and plain ResNet-20 for reference
    python -m tinyse.experiments excitation --values sigmoid tanh
    python -m tinyse.experiments integration                  # standard, pre, post, identity (the paper's Fig. 5)
    python -m tinyse.experiments stages                       # SE in stage 1, 2, 3 only, or in all
    python -m tinyse.experiments summarize experiments/compare-resnet20   # rebuild the results, no training

The studies of the fast recipe (``python -m tinyse.train --recipe fast``), kept in the repository:

    python -m tinyse.experiments recipe --seeds 0 1        # the recipe, and each ingredient switched off in turn
    python -m tinyse.experiments light-aug --seeds 0 1 2   # ResNet-20 vs SE-ResNet-20, the recipe before Muon (SGD)
    python -m tinyse.experiments se-vs-plain --seeds 0 1 2 # the same at its first augmentation (4-pixel crops)
    python -m tinyse.experiments fast --seeds 0 1 2        # the same at the tune study's peak lr, 0.4
    python -m tinyse.experiments no-smoothing --seeds 0    # se-vs-plain without label smoothing
    python -m tinyse.experiments torch-check --seeds 0 1   # the first recipe in tinyse and PyTorch: accuracy, time
    python -m tinyse.experiments light-aug-torch --seeds 0 1  # the same with the recipe before Muon
    python -m tinyse.experiments twenty-epochs --seeds 0   # SE-ResNet-20, the recipe before Muon, 20 epochs
    python -m tinyse.experiments light-aug --jobs 2        # two runs at a time, one thread each
    python -m tinyse.experiments tune --seeds 0 1          # the first recipe's settings moved one at a time
    python -m tinyse.experiments full-budget --seeds 0 1   # lr, batch, zero-init, wd, smoothing, r, aug, ...
    python -m tinyse.experiments light-aug-gates           # SE-ResNet-20, its gates started open or not
    python -m tinyse.experiments light-aug-muon            # SE-ResNet-20, its conv filters trained by Muon or SGD
    python -m tinyse.experiments muon-torch --seeds 0 1    # the recipe as it stands (Muon) in tinyse and PyTorch
    python -m tinyse.experiments muon-se-vs-plain          # ResNet-20 vs SE-ResNet-20, the recipe as it stands

A study's folder is docs/runs/STUDY (run from the repository's root). Each finished run leaves
there, beside tinyse.train's files, summary.json (its final numbers, time, threads, machine and
command) and weights.npz (the run's final weights, float32, about 1 MB: ``python -m tinyse.evaluate``
reads it); those two, config.json and metrics.jsonl are what git keeps (.gitignore drops the
checkpoints and curves). A run whose metrics reach its epochs is done, so on a fresh clone the
committed runs are skipped and still summarized, and a study grows run by run, machine by machine.
``recipe`` runs on a validation split (5,000 images held out) for 5 epochs and compares the
ingredients on the validation accuracy; ``tune`` moves one setting at a time (peak lr, batch, weight
decay) over the recipe's whole schedule of 15 epochs, on 15,000 images with 5,000 others held out,
and compares on the validation accuracy too; ``full-budget`` moves a setting the same way over the
whole budget (45,000 images, 5,000 held out): the peak lr 0.2 against 0.4, batch 64, zero-init, weight decay
1e-4, no label smoothing, SE at r=4, batch 256, 20 epochs and lighter augmentation (the recipe since), and on top of
it a moving average of the weights, the schedule's shape, momentum 0.95 and a whitened stem; the others
train on all 50,000 images for the recipe's 15 epochs (``twenty-epochs``: for 20) and report the test accuracy.
The statistics: mean ± sample std over seeds, and each variant minus the baseline (the full recipe, the plain
model, tinyse) paired by seed, with its 95% t-interval.

``--jobs 2`` runs two runs at a time, each in its own process with half the cores' threads. Whether
that finishes a study sooner than one run at a time on every core depends on how well one run keeps
the cores busy (NumPy's copies and elementwise loops run on one core); the images/s in each run's
metrics tell. The threads a run used are in its config and summary.json; a run is reproducible from
its seed with the same number of threads.

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
import datetime
import glob
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np

from tinyse import models
from tinyse import train as train_module
from tinyse.backend import module_for_device
from tinyse.checkpoint import atomic_write, load_checkpoint, load_ema, save_checkpoint
from tinyse.data import DataError
from tinyse.memory import keep_freed_memory
from tinyse.models import se_options
from tinyse.nn.se import SQUEEZES
from tinyse.ops.se import GATES
from tinyse.parallel import workers
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
NOT_RECIPE = ("out", "seed", "device", "data_dir", "progress", "prefetch", "resumed", "threads", "eval_every")

# The studies of the fast recipe: their default budget (tinyse.train flags; the rest is the recipe's), the
# number the statistics compare (the ingredient study chooses on the validation split), their default seeds.
# A study keeps the settings its runs were trained with: where the recipe moved on after it (the EMA dropped,
# the peak lr 0.2 -> 0.4 -> 0.2, 4-pixel crops and random flips -> the light-aug arm's, SGD -> Muon for the conv
# filters), its budget pins the old values, so its committed runs stay valid.
FIRST_FAST = {"recipe": "fast", "lr": 0.2, "crop_padding": 4, "flip": "random", "muon_lr": 0.0}
LIGHT_FAST = dict(FIRST_FAST, crop_padding=2, flip="alternate")  # the recipe before Muon (the light-aug arm)
MUON_FAST = dict(LIGHT_FAST, muon_lr=0.03)  # the recipe as it stands: the conv filters trained by Muon
STUDIES = {
    "recipe": {"budget": dict(FIRST_FAST, epochs=5, train_subset=15000, val_split=5000, test_subset=2000,
                              eval_every=5, ema=0.999),
               "metric": "val_acc", "seeds": (0, 1), "model": "se_resnet20"},
    "se-vs-plain": {"budget": FIRST_FAST, "metric": "test_acc", "seeds": (0, 1, 2), "model": "resnet20"},
    "torch-check": {"budget": FIRST_FAST, "metric": "test_acc", "seeds": (0, 1), "model": "se_resnet20"},
    # The recipe's 15-epoch schedule on a 15,000-image subset: the same shape of training at a third of the steps.
    "tune": {"budget": dict(FIRST_FAST, train_subset=15000, val_split=5000, test_subset=2000),
             "metric": "val_acc", "seeds": (0, 1), "model": "se_resnet20"},
    # The tune study's lr 0.4 did worse on the test set at the full budget (88.69% against 89.04% at 0.2, seed 0):
    # settings moved again over the recipe's whole budget, 45,000 images and 5,000 held out, chosen on validation.
    "full-budget": {"budget": dict(FIRST_FAST, val_split=5000), "metric": "val_acc", "seeds": (0, 1),
                    "model": "se_resnet20"},
    # The full-budget study's best arm on validation (no label smoothing, seed 0: +0.76) on all 50,000 images and
    # the test set, ResNet-20 and SE-ResNet-20 paired by seed; the recipe changes only when more seeds agree.
    "no-smoothing": {"budget": dict(FIRST_FAST, label_smoothing=0.0), "metric": "test_acc", "seeds": (0, 1, 2),
                     "model": "resnet20"},
    # The full-budget study's light-aug arm (2-pixel crops, alternating flip) on all 50,000 images and the test set:
    # ahead of the recipe on validation on both seeds, and so the recipe until Muon.
    "light-aug": {"budget": LIGHT_FAST, "metric": "test_acc", "seeds": (0, 1, 2), "model": "resnet20"},
    # The recipe before Muon trained by tinyse and by PyTorch. Its tinyse runs are the light-aug study's
    # SE-ResNet-20 runs (the same config, a test checks it), copied in rather than trained twice.
    "light-aug-torch": {"budget": LIGHT_FAST, "metric": "test_acc", "seeds": (0, 1), "model": "se_resnet20"},
    # The recipe before Muon stretched to 20 epochs (the warm-up with it): not a candidate for the 15-epoch recipe,
    # a measure on the test set of how far 15 epochs stop from where a third more would take it.
    "twenty-epochs": {"budget": dict(LIGHT_FAST, epochs=20), "metric": "test_acc", "seeds": (0, 1),
                      "model": "se_resnet20"},
    # The reduction ratio near convergence: SE-ResNet-20 at r=4 against the recipe's r=16 on the test set. Its r=16
    # runs are the light-aug study's SE-ResNet-20 runs (the same config, a test checks it), copied in.
    "light-aug-reduction": {"budget": LIGHT_FAST, "metric": "test_acc", "seeds": (0, 1, 2),
                            "model": "se_resnet20"},
    # SE's gates started open: fc2's bias at 2 in every SE block (gates near 0.88 instead of about 0.5), against the
    # recipe's SE as initialised, on the test set. Its as-initialised runs are the light-aug study's SE-ResNet-20
    # runs (the same config, a test checks it), copied in.
    "light-aug-gates": {"budget": LIGHT_FAST, "metric": "test_acc", "seeds": (0, 1, 2, 3, 4), "model": "se_resnet20"},
    # The conv filters trained by Muon (orthogonalised momentum) at MUON_LR, the rest by SGD as in the recipe, against
    # SGD for everything, on the test set. Its SGD runs are the light-aug study's SE-ResNet-20 runs (the same config, a
    # test checks it), copied in.
    "light-aug-muon": {"budget": LIGHT_FAST, "metric": "test_acc", "seeds": (0, 1, 2, 3, 4), "model": "se_resnet20"},
    # The recipe as it stands (Muon for the conv filters) trained by tinyse and by PyTorch. Its tinyse runs are the
    # light-aug-muon study's Muon runs (the same config, a test checks it), copied in rather than trained twice.
    "muon-torch": {"budget": MUON_FAST, "metric": "test_acc", "seeds": (0, 1), "model": "se_resnet20"},
    # The paper's claim with the recipe as it stands: ResNet-20 against SE-ResNet-20, Muon for the conv filters of
    # both. Its SE-ResNet-20 runs are the light-aug-muon study's Muon runs (the same config, a test checks it).
    "muon-se-vs-plain": {"budget": MUON_FAST, "metric": "test_acc", "seeds": (0, 1, 2), "model": "resnet20"},
    # The paper's claim on a deeper network: ResNet-56 against SE-ResNet-56 with the recipe before Muon (3.1 times
    # ResNet-20's multiply-adds, about two hours a run on one thread; three seeds).
    "deep": {"budget": LIGHT_FAST, "metric": "test_acc", "seeds": (0, 1, 2), "model": "resnet56"},
    # The recipe at the tune study's peak lr 0.4 (as it stood before light-aug): ResNet-20 and SE-ResNet-20.
    "fast": {"budget": dict(FIRST_FAST, lr=0.4), "metric": "test_acc", "seeds": (0, 1, 2), "model": "resnet20"},
}
# the studies that train NAME and se_NAME
COMPARE_STUDIES = ("se-vs-plain", "no-smoothing", "fast", "light-aug", "deep", "muon-se-vs-plain")
STUDY_FLAGS = ("epochs", "train_subset", "test_subset", "val_split", "batch_size", "lr", "eval_every")
# Lighter augmentation for a short budget (Jordan, 2024): crops from 2-pixel padding, the alternating flip.
LIGHT_AUGMENTATION = ["--crop-padding", "2", "--flip", "alternate"]
# Muon's peak lr for the conv filters, chosen on validation (docs/RESULTS.md, section 0): 0.05 was the best of 0.02,
# 0.05 and 0.1 on a short budget (5 epochs, 15,000 images), 0.03 better than 0.05 over the whole budget.
MUON_LR = "0.03"
# The ingredient study: the fast recipe, then each ingredient switched off in turn (label, tinyse.train flags).
INGREDIENTS_OFF = [
    ("no-onecycle", ["--schedule", "step"]),  # He et al.'s step schedule (/10 at 50%, 75%), same peak lr, no warm-up
    ("no-nesterov", ["--no-nesterov"]),
    ("no-label-smoothing", ["--label-smoothing", "0"]),
    ("decay-norm-and-bias", ["--decay-norm-and-bias"]),  # weight decay on every parameter
    ("no-ema", ["--ema", "0"]),
]
# The tuning study: the fast recipe, then one setting moved at a time (label, tinyse.train flags).
SETTINGS_MOVED = [
    ("lr=0.1", ["--lr", "0.1"]),
    ("lr=0.4", ["--lr", "0.4"]),
    ("batch=64", ["--batch-size", "64", "--lr", "0.1"]),  # twice the steps, the lr scaled with the batch
    ("weight-decay=1e-3", ["--weight-decay", "1e-3"]),
]


# --- what to train --------------------------------------------------------------------------
def plain_and_se(model):
    """(plain name, SE name) of a model family: "resnet20" or "se_resnet20" -> ("resnet20", "se_resnet20")."""
    plain = model.removeprefix("se_")
    if plain not in models.list() or f"se_{plain}" not in models.list():
        families = [m for m in models.list() if f"se_{m}" in models.list()]
        raise ValueError(f"unknown model family {model!r}; choose one of {', '.join(families)}")
    return plain, f"se_{plain}"


def variant(label, model, *train_args, library="tinyse"):
    """One arm of an experiment: a label for the tables, its folder name, its ``tinyse.train`` arguments, and the
    library that trains it ("tinyse", or "torch": ``tinyse.bench.train_torch`` with the same arguments)."""
    return {"label": label, "folder": label.replace("=", "-"), "model": model, "train_args": list(train_args),
            "library": library}


def recipe_variants(model):
    """The fast recipe, and one variant per ingredient switched off (INGREDIENTS_OFF)."""
    return [variant("fast", model)] + [variant(label, model, *args) for label, args in INGREDIENTS_OFF]


def tune_variants(model):
    """The fast recipe, and one variant per setting moved (SETTINGS_MOVED)."""
    return [variant("fast", model)] + [variant(label, model, *args) for label, args in SETTINGS_MOVED]


def full_budget_variants(model):
    """The fast recipe at its first peak lr (0.2); at the tune study's 0.4; at batch 64 with lr 0.2 (0.4 scaled);
    with every residual branch starting at zero; with less regularisation: He et al.'s weight decay (1e-4), and no
    label smoothing; SE at reduction 4 (stage 1's excitation has 4 hidden units instead of 1); batch 256 at lr 0.4
    (the peak scaled with the batch: half the steps); 20 epochs instead of 15, not a
    candidate for the 15-epoch recipe but a measure of how far it stops from where more epochs would take it; and
    the lighter augmentation of the fast-CIFAR literature (Jordan, 2024): crops from 2-pixel padding instead of 4,
    and each image mirrored in every other epoch instead of at random; and that augmentation with label smoothing 0.2
    instead of 0.1 (Jordan's value with it), with weight decay 1e-3 (wd=1e-4 cost 0.6 points: does more help?),
    with crops from 1-pixel padding (lighter still), with a moving average of the weights (decay 0.999: about
    1,000 steps, 3 epochs; the ingredient study's 5-epoch budget was too short to judge it), and the schedule's
    shape: a 1-epoch or a 5-epoch warm-up instead of 3, a cosine decay (a linear 3-epoch warm-up times a cosine
    over the whole run: longer near the peak and near zero than the straight line), and Nesterov momentum 0.95
    instead of 0.9 (a longer average of the gradients, twice the effective step lr / (1 - momentum) at the same
    lr), also at peak lr 0.1 (the recipe's effective step, only the longer average); and the stem conv started
    as a whitening of the input's 3x3 patches (Jordan 2024's first layer, here trained on: ``--whiten-stem``); SE at
    reduction 4 with its gates started open (the two SE settings each ahead of the recipe on the test set on most
    seeds, unresolved, together); and crops whose border is the image reflected at its edges instead of zeros
    (Jordan 2024's padding: no black band, whose statistics the test images never show); and the last three
    together; and the conv filters trained by Muon at peak lr MUON_LR (orthogonalised momentum, Jordan et al.
    2024), the rest by SGD as before."""
    return [variant("fast", model), variant("lr=0.4", model, "--lr", "0.4"),
            variant("batch=64", model, "--batch-size", "64"), variant("zero-init", model, "--zero-init-residual"),
            variant("wd=1e-4", model, "--weight-decay", "1e-4"),
            variant("no-label-smoothing", model, "--label-smoothing", "0"),
            variant("r=4", model, "--reduction", "4"),
            variant("batch=256", model, "--batch-size", "256", "--lr", "0.4"),
            variant("epochs=20", model, "--epochs", "20"),
            variant("light-aug", model, *LIGHT_AUGMENTATION),
            variant("light-aug+ls=0.2", model, *LIGHT_AUGMENTATION, "--label-smoothing", "0.2"),
            variant("light-aug+wd=1e-3", model, *LIGHT_AUGMENTATION, "--weight-decay", "1e-3"),
            variant("light-aug+pad=1", model, "--crop-padding", "1", "--flip", "alternate"),
            variant("light-aug+ema=0.999", model, *LIGHT_AUGMENTATION, "--ema", "0.999"),
            variant("light-aug+warmup=1", model, *LIGHT_AUGMENTATION, "--warmup-epochs", "1"),
            variant("light-aug+cosine", model, *LIGHT_AUGMENTATION, "--schedule", "cosine", "--warmup-epochs", "3"),
            variant("light-aug+warmup=5", model, *LIGHT_AUGMENTATION, "--warmup-epochs", "5"),
            variant("light-aug+momentum=0.95", model, *LIGHT_AUGMENTATION, "--momentum", "0.95"),
            variant("light-aug+momentum=0.95+lr=0.1", model, *LIGHT_AUGMENTATION, "--momentum", "0.95", "--lr", "0.1"),
            variant("light-aug+whiten", model, *LIGHT_AUGMENTATION, "--whiten-stem"),
            variant("light-aug+r=4+gate-bias=2", model, *LIGHT_AUGMENTATION, "--reduction", "4", "--se-gate-bias", "2"),
            variant("light-aug+reflect", model, *LIGHT_AUGMENTATION, "--crop-fill", "reflect"),
            variant("light-aug+r=4+gate-bias=2+reflect", model, *LIGHT_AUGMENTATION, "--reduction", "4",
                    "--se-gate-bias", "2", "--crop-fill", "reflect"),
            variant(f"light-aug+muon={MUON_LR}", model, *LIGHT_AUGMENTATION, "--muon-lr", MUON_LR)]


def twenty_epochs_variants(model):
    """The one arm of the twenty-epochs study: its budget already holds the 20 epochs."""
    return [variant("epochs=20", model)]


def reduction_variants(model):
    """SE at the recipe's reduction (16, no flag: the light-aug study's runs) and at 4: stage 1's excitation has
    4 hidden units instead of 1, stage 3's 16 instead of 4."""
    return [variant("r=16", model), variant("r=4", model, "--reduction", "4")]


def gate_variants(model):
    """SE as initialised (no flag: the light-aug study's runs; the gates start near 0.5) and with fc2's bias at 2 in
    every SE block (``--se-gate-bias 2``: the gates start near sigmoid(2) = 0.88)."""
    return [variant("as-initialised", model), variant("gate-bias=2", model, "--se-gate-bias", "2")]


def muon_variants(model):
    """SGD for every parameter (no flag: the light-aug study's runs) and Muon for the conv filters at MUON_LR, SGD for
    the rest (``--muon-lr``)."""
    return [variant("sgd", model), variant(f"muon={MUON_LR}", model, "--muon-lr", MUON_LR)]


def library_variants(model):
    """The same model and recipe trained by tinyse and by PyTorch."""
    return [variant("tinyse", model), variant("torch", model, library="torch")]


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


def run_args(out, variant, seed, recipe, device="cpu", data_dir=None, progress=True):
    """The ``tinyse.train`` command-line arguments of one run: the recipe's, then the variant's (which win)."""
    run_folder = os.path.join(out, variant["folder"], f"seed{seed}")
    args = ["--model", variant["model"], "--seed", str(seed), "--out", run_folder, "--device", device]
    for key, value in recipe.items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    args += variant["train_args"]
    if data_dir:
        args += ["--data-dir", data_dir]
    if not progress:
        args.append("--no-progress")
    return args


def run_config(out, variant, seed, recipe, device="cpu", data_dir=None, progress=True):
    """The ``tinyse.train`` config of one run (built by train's own command line, so every default is train's)."""
    args = train_module.parse_args(run_args(out, variant, seed, recipe, device, data_dir, progress))
    if variant.get("library", "tinyse") == "torch":
        from tinyse.bench import train_torch

        return train_torch.config_from_args(args)
    return train_module.config_from_args(args)


def train_function(variant, train=None):
    """What trains a variant's run: ``train`` if given (tests), else tinyse.train's or the PyTorch trainer."""
    if train is not None:
        return train
    if variant.get("library", "tinyse") == "torch":
        from tinyse.bench.train_torch import train_torch

        return train_torch
    return train_module.train


def command(variant, args):
    """The shell command that trains a run with ``args`` in its own process."""
    module = "tinyse.bench.train_torch" if variant.get("library", "tinyse") == "torch" else "tinyse.train"
    return [sys.executable, "-m", module, *args]


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
    A setting the saved config predates counts at the value it had then (train.BEFORE_RECIPES); one that
    only one of them has otherwise (train gained or lost an option since) does not count."""
    saved = dict(train_module.BEFORE_RECIPES, **saved)
    keys = (saved.keys() & wanted.keys()) - set(NOT_RECIPE)
    return {k: (saved.get(k), wanted.get(k)) for k in sorted(keys) if saved.get(k) != wanted.get(k)}


def check_experiment_folder(out, name, model, variants, wanted_config, extra=None):
    """Refuse a folder that holds another experiment or runs of another recipe; record this experiment's variants.

    ``wanted_config(variant, seed)``: the config a run of that variant and seed must have been trained with.
    ``extra``: entries experiment.json keeps besides the name, model and variants (the baseline, the metric).
    """
    path = os.path.join(out, "experiment.json")
    known = read_json(path) if os.path.exists(path) else {"name": name, "model": model, "variants": []}
    if (known["name"], known["model"]) != (name, model):
        raise ValueError(f"{out} holds the {known['name']} experiment of {known['model']}: choose another --out")
    by_folder = {v["folder"]: v for v in known["variants"] + variants}
    for config_path in glob.glob(os.path.join(out, "*", "seed*", "config.json")):
        folder = os.path.dirname(config_path)
        v = by_folder.get(os.path.basename(os.path.dirname(folder)))
        if v is None:
            continue  # not a run of this experiment's variants
        saved = read_json(config_path)
        changed = differences(saved, wanted_config(v, int(folder.rsplit("seed", 1)[1])))
        if changed:
            shown = ", ".join(f"{k} {old} (wanted {new})" for k, (old, new) in changed.items())
            raise ValueError(f"{folder} was trained with {shown}: choose another --out")
    folders = {v["folder"] for v in known["variants"]}
    known["variants"] += [v for v in variants if v["folder"] not in folders]
    known.update(extra or {})
    os.makedirs(out, exist_ok=True)
    write_json(path, known)


def run_experiment(name, model, variants, seeds, out, recipe=None, device="cpu", data_dir=None, progress=True,
                   train=None, jobs=1, base=None, baseline=None, metric="test_acc"):
    """Train every (seed, variant) not finished yet, seed by seed (so paired results arrive early); then summarize.

    ``recipe`` overrides entries of ``base`` (BUDGET unless given: the studies give theirs); ``train`` replaces
    the trainer (for tests); ``jobs`` > 1 runs that many runs at a time, each in its own process with
    1 / jobs of the cores (``run_in_processes``). ``baseline``: the variant the others are compared with
    (default: the plain model, if there is one); ``metric``: the number compared ("test_acc" or "val_acc").
    Every finished run gets its record (summary.json, weights.npz: ``record_run``).
    Returns (stopped, results): stopped is True when Ctrl-C interrupted a run.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("no seeds: give at least one, e.g. --seeds 0 1 2")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"repeated seeds: {seeds}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    recipe = dict(BUDGET if base is None else base, **(recipe or {}))

    def wanted(v, seed):
        return run_config(out, v, seed, recipe, device, data_dir, progress)

    plan = [(v, seed, wanted(v, seed)) for seed in seeds for v in variants]
    check_experiment_folder(out, name, model, variants, wanted, {"baseline": baseline, "metric": metric})
    todo = []
    for i, (v, seed, config) in enumerate(plan, 1):
        head = f"[{i}/{len(plan)}] {v['label']} seed {seed}"
        folder, args = config["out"], run_args(out, v, seed, recipe, device, data_dir, progress)
        if is_finished(folder, config["epochs"]):
            record_run(folder, name, v, args)  # a run finished before its record was written gets it now
            print(f"{head}: finished before, skipped")
            continue
        run = {"head": head, "variant": v, "folder": folder, "config": config, "args": args, "process_args": args}
        if os.path.exists(os.path.join(folder, "last.npz")) and v.get("library", "tinyse") == "tinyse":
            # interrupted: continue it exactly (a PyTorch run has no last.npz before its end: it starts over)
            run["process_args"] = ["--resume", folder, "--device", device,
                                   *(["--data-dir", data_dir] if data_dir else []),
                                   *([] if progress else ["--no-progress"])]
            run["config"] = train_module.config_from_args(train_module.parse_args(run["process_args"]))
        todo.append(run)
    stopped = run_in_this_process(todo, name, train) if jobs == 1 else run_in_processes(todo, name, jobs)
    if stopped:
        print("interrupted; run the same command again to continue")
    return stopped, summarize(out)


def finished_line(head, folder):
    rows = epoch_rows(folder)
    return (f"{head}: test accuracy {100 * rows[-1]['test_acc']:.2f}% "
            f"after {sum(r['seconds'] for r in rows):.0f} s of training")


def run_in_this_process(todo, name, train=None):
    """Train the runs one after another in this process, on every core; True when Ctrl-C stopped one."""
    for run in todo:
        print(f"{run['head']}: training in {run['folder']}", flush=True)
        result = train_function(run["variant"], train)(run["config"])
        if result["stopped"]:
            print(f"{run['head']}: interrupted")
            return True
        record_run(run["folder"], name, run["variant"], run["args"])
        print(finished_line(run["head"], run["folder"]), flush=True)
    return False


def run_in_processes(todo, name, jobs, poll_seconds=0.5):
    """Train the runs ``jobs`` at a time, each in a process of its own with cores / jobs threads (BLAS, tinyse's
    batch split and torch all held to that number: ``thread_env``), its output in RUN/train.log; True when
    Ctrl-C stopped them.

    Ctrl-C reaches the runs too (one process group): each stops after its step and saves, as alone.
    """
    from tinyse.bench.machine import thread_env

    threads = max(1, workers() // jobs)
    env = thread_env(threads)
    pending, running, stopped = list(todo), [], False
    while pending or running:
        while pending and len(running) < jobs and not stopped:
            run = pending.pop(0)
            os.makedirs(run["folder"], exist_ok=True)
            log = open(os.path.join(run["folder"], "train.log"), "a")  # noqa: SIM115 (closed when the run ends)
            process = subprocess.Popen(command(run["variant"], run["process_args"]), stdout=log,
                                       stderr=subprocess.STDOUT, env=env)
            running.append((process, run, log))
            print(f"{run['head']}: training in {run['folder']} ({threads} thread{'s' if threads > 1 else ''}, "
                  f"log in train.log)", flush=True)
        try:
            time.sleep(poll_seconds)
        except KeyboardInterrupt:
            stopped = True  # the runs got the Ctrl-C too: wait for them to save
        for process, run, log in list(running):
            code = process.poll()
            if code is None:
                continue
            running.remove((process, run, log))
            log.close()
            if code == 0:
                record_run(run["folder"], name, run["variant"], run["args"])
                print(finished_line(run["head"], run["folder"]), flush=True)
            elif code == 130:
                stopped = True
                print(f"{run['head']}: interrupted", flush=True)
            else:
                tail = open(os.path.join(run["folder"], "train.log")).read().splitlines()[-5:]  # noqa: SIM115
                print(f"{run['head']}: failed (exit code {code}); the end of its train.log:\n  "
                      + "\n  ".join(tail), flush=True)
    return stopped


# --- the committed record of a run ----------------------------------------------------------------
def record_run(folder, study, variant, args):
    """Write FOLDER/summary.json (the final numbers, time, threads, machine, the command with ``args``) and
    FOLDER/weights.npz (the run's final weights: its moving average with --ema, float32) once its training has
    finished; return the summary. Nothing is rewritten when summary.json exists (a committed run stays as
    committed)."""
    path = os.path.join(folder, "summary.json")
    if os.path.exists(path):
        return read_json(path)
    last = os.path.join(folder, "last.npz")
    if not os.path.exists(last):
        return None  # nothing to take the weights from (a folder written by hand, in the tests)
    config, rows = read_json(os.path.join(folder, "config.json")), epoch_rows(folder)
    weights, _, meta = load_checkpoint(last)
    ema = load_ema(last)
    if ema is not None:
        weights = {k[len("model/"):]: v for k, v in ema.items() if k.startswith("model/")}
    which = "ema" if ema is not None else "raw"
    save_checkpoint(os.path.join(folder, "weights.npz"), weights, None,
                    {"state": meta["state"], "config": config, "weights": which})
    final = {k: v for k, v in rows[-1].items() if k.endswith(("_acc", "_loss", "_tta"))}
    library = config.get("library", "tinyse")
    summary = {
        "study": study, "variant": variant["label"], "seed": config["seed"], "model": config["model"],
        "library": library, "recipe": config.get("recipe", "he"), "epochs": len(rows), "final": final,
        "weights": {"file": "weights.npz", "of": which},
        "train_seconds": sum(r["seconds"] for r in rows),
        "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in rows),
        "threads": config.get("threads"), "machine": machine(library),
        "command": shlex.join(["python", *command(variant, args)[1:]]),
        "recorded": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    write_json(path, summary)
    return summary


def machine(library):
    """What a run was measured on: CPU, cores, Python, NumPy and its BLAS, the load on the cores when it ended
    (and torch's version for torch runs)."""
    from importlib.metadata import PackageNotFoundError, version

    from tinyse.bench.machine import blas_kernels, blas_name, cpu_model

    found = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
             "numpy": np.__version__, "blas": blas_name(), "blas_kernels": "{} ({})".format(*blas_kernels()),
             # other work on the cores slows a run (PyTorch's threads most: 4x at a load of 6 on 2 cores, measured)
             "load_average_1_5_15_min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if library == "torch":
        try:
            found["torch"] = version("torch")
        except PackageNotFoundError:
            found["torch"] = None
    return found


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
    """What results.json keeps of one finished run: its final accuracies (test; with the run's options also the
    validation split's, the flip TTA's and the raw weights'; None when the run has none), time, size, recipe."""
    config, rows = read_json(os.path.join(folder, "config.json")), epoch_rows(folder)
    params, macs = model_size(config)
    options = {k: config.get(k) for k in train_module.SE_OPTIONS if config.get(k) is not None}
    se = se_options.resolve(True, **options) if config["model"].startswith("se_") else None
    final = rows[-1]
    return {
        "variant": variant["label"], "seed": config["seed"], "model": config["model"], "se": se,
        "library": config.get("library", "tinyse"),
        "test_acc": final["test_acc"], "val_acc": final.get("val_acc"),
        "test_acc_flip_tta": final.get("test_acc_flip_tta"), "raw_test_acc": final.get("raw_test_acc"),
        "train_seconds": sum(r["seconds"] for r in rows), "threads": config.get("threads"),
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


# Student's t quantile t(0.975, df) for df = 1..30 (two-sided 95%), from the standard tables; tests hold each
# to 0.975 of the t distribution computed by integrating its density.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_975(df):
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (the half-width of a 95% interval, in
    standard errors): the table to 30, beyond it the first terms of the Cornish-Fisher expansion around 1.96."""
    if df < 1:
        raise ValueError(f"a t interval needs df >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def variant_stats(runs, metric="test_acc"):
    """Per variant: ``metric`` in % (mean, std, min, max over seeds) as "accuracy", error %, params, MACs, mean
    training s; and the spreads of the test accuracy (when ``metric`` is another), the flip TTA's and the raw
    weights' test accuracy when every run has them."""
    accuracy = spread([100 * r[metric] for r in runs])
    stats = {"accuracy": accuracy, "error": 100 - accuracy["mean"], "params": runs[0]["params"],
             "macs": runs[0]["macs"], "train_seconds": float(np.mean([r["train_seconds"] for r in runs]))}
    extras = {"test_accuracy": "test_acc", "flip_tta": "test_acc_flip_tta", "raw": "raw_test_acc"}
    for name, key in extras.items():
        if key != metric and all(r.get(key) is not None for r in runs):
            stats[name] = spread([100 * r[key] for r in runs])
    return stats


def paired_difference(se_label, plain_label, runs, stats, metric="test_acc"):
    """``se_label`` minus ``plain_label`` accuracy (points, ``metric``) over the seeds both have, with its 95%
    t-interval (mean ± t(0.975, n - 1) * std / sqrt(n), for 2 seeds or more), and a sentence that reads it."""
    se = {r["seed"]: 100 * r[metric] for r in runs if r["variant"] == se_label}
    plain = {r["seed"]: 100 * r[metric] for r in runs if r["variant"] == plain_label}
    seeds = sorted(se.keys() & plain.keys())
    if not seeds:
        return None
    diff = spread([se[s] - plain[s] for s in seeds])
    diff.update(variant=se_label, baseline=plain_label, seeds=seeds, ci95=None)
    if diff["n"] >= 2:
        half = t_975(diff["n"] - 1) * diff["std"] / math.sqrt(diff["n"])
        diff["ci95"] = [diff["mean"] - half, diff["mean"] + half]
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
    metric = experiment.get("metric") or "test_acc"
    stats = {label: variant_stats([r for r in runs if r["variant"] == label], metric) for label in labels}
    if experiment.get("baseline"):
        baselines = [experiment["baseline"]] if experiment["baseline"] in stats else []
    else:  # the paper's comparisons: the plain model
        baselines = [v["label"] for v in experiment["variants"]
                     if v["label"] in stats and not v["model"].startswith("se_")]
    diffs = [paired_difference(label, baselines[0], runs, stats, metric)
             for label in labels if baselines and label != baselines[0]]
    results = dict(experiment, runs=runs, unfinished=unfinished, stats=stats, differences=[d for d in diffs if d],
                   time_ratio=time_ratio(runs))
    write_json(os.path.join(out, "results.json"), results)
    atomic_write(os.path.join(out, "results.md"), lambda f: f.write(results_markdown(results).encode()))
    if runs:
        plot_results(out, results)
    return results


def time_ratio(runs):
    """tinyse's training seconds over PyTorch's, for runs of both libraries: {"mean": ratio of the mean times,
    "per_seed": {seed: ratio}}; None unless the runs include both."""
    seconds = {library: {r["seed"]: r["train_seconds"] for r in runs if r.get("library", "tinyse") == library}
               for library in ("tinyse", "torch")}
    if not seconds["tinyse"] or not seconds["torch"]:
        return None
    per_seed = {seed: seconds["tinyse"][seed] / seconds["torch"][seed]
                for seed in sorted(seconds["tinyse"].keys() & seconds["torch"].keys())}
    mean = np.mean(list(seconds["tinyse"].values())) / np.mean(list(seconds["torch"].values()))
    return {"mean": float(mean), "per_seed": per_seed}


def plot_results(out, results):
    """OUT/results.png: test accuracy against epoch, a colour per variant (thin: each seed, thick: their mean)."""
    from matplotlib.figure import Figure  # no pyplot: no backend switched under a notebook

    metric = results.get("metric") or "test_acc"
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for index, label in enumerate(results["stats"]):
        color = f"C{index}"
        curves = [{row["epoch"]: 100 * row[metric] for row in epoch_rows(run["folder"]) if metric in row}
                  for run in results["runs"] if run["variant"] == label]  # epochs without an evaluation left out
        for curve in curves:
            axes.plot(list(curve), list(curve.values()), color=color, alpha=0.35, linewidth=1)
        shared = sorted(set.intersection(*(set(curve) for curve in curves)))
        axes.plot(shared, [np.mean([curve[e] for curve in curves]) for e in shared], color=color, linewidth=2.5,
                  marker="o", label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
    recipe = results["runs"][0]["recipe"]
    images = f"{recipe['train_subset']:,}" if recipe["train_subset"] else "all"
    title = f"{results['name']}: {recipe['epochs']} epochs on {images} training images, {recipe['schedule']} lr"
    ylabel = {"test_acc": "test accuracy (%)", "val_acc": "validation accuracy (%)"}[metric]
    axes.set(xlabel="epoch", ylabel=ylabel, title=title, xticks=range(1, recipe["epochs"] + 1))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(os.path.join(out, "results.png"), lambda f: figure.savefig(f, format="png", dpi=100))


def recipe_line(recipe):
    subset = f"{recipe['train_subset']:,} training images (a random subset per seed)" if recipe["train_subset"] \
        else "all training images"
    test = f"the first {recipe['test_subset']:,} test images" if recipe["test_subset"] else "all test images"
    val = f", {recipe['val_split']:,} held out for validation" if recipe["val_split"] else ""
    epochs = f"{recipe['epochs']} epoch{'s' if recipe['epochs'] != 1 else ''}"
    extras = []
    if recipe.get("nesterov"):
        extras.append("Nesterov momentum")
    if recipe.get("weight_decay") is not None:
        extras.append(f"weight decay {recipe['weight_decay']:g}"
                      + ("" if recipe.get("decay_norm_and_bias", True) else " (not on batch norm and biases)"))
    if recipe.get("label_smoothing"):
        extras.append(f"label smoothing {recipe['label_smoothing']:g}")
    if (recipe.get("crop_padding", 4), recipe.get("flip", "random")) != (4, "random"):
        extras.append(f"crops from {recipe.get('crop_padding', 4)}-pixel padding, {recipe.get('flip', 'random')} flip")
    if recipe.get("muon_lr"):
        extras.append(f"Muon for the conv filters at peak lr {recipe['muon_lr']:g}")
    if recipe.get("ema"):
        extras.append(f"EMA of the weights {recipe['ema']:g} per step")
    if recipe.get("tta", "none") != "none":
        extras.append(f"{recipe['tta']} TTA reported beside")
    extras = "".join(f", {extra}" for extra in extras)
    name = f" {recipe['recipe']} ({recipe['dataset']}, " if recipe.get("recipe") else f" {recipe['dataset']}, "
    return (f"Recipe:{name}{epochs}, {recipe['schedule']} schedule, lr {recipe['lr']}, batch {recipe['batch_size']}"
            f"{extras}{')' if recipe.get('recipe') else ''}, on {subset}{val}; tested on {test}.")


TITLES = {
    "compare": "{model} against se_{model}",
    "recipe": "The fast recipe on {model}: each ingredient switched off in turn",
    "tune": "The fast recipe on {model}: one setting moved at a time",
    "full-budget": "The fast recipe on {model}: one setting moved over the whole budget",
    "se-vs-plain": "{model} against se_{model}, the first fast recipe",
    "no-smoothing": "{model} against se_{model}, the first fast recipe without label smoothing",
    "light-aug": "{model} against se_{model}, the fast recipe (peak lr 0.2, lighter augmentation)",
    "fast": "{model} against se_{model}, the fast recipe at peak lr 0.4",
    "deep": "{model} against se_{model}, the fast recipe before Muon (peak lr 0.2, lighter augmentation)",
    "muon-se-vs-plain": "{model} against se_{model}, the fast recipe as it stands (Muon for the conv filters)",
    "torch-check": "{model}, the same recipe in tinyse and in PyTorch",
    "light-aug-torch": "{model}, the fast recipe (peak lr 0.2, lighter augmentation) in tinyse and in PyTorch",
    "muon-torch": "{model}, the fast recipe as it stands (Muon for the conv filters) in tinyse and in PyTorch",
    "twenty-epochs": "{model}, the fast recipe before Muon stretched to 20 epochs",
    "light-aug-reduction": "{model}, the fast recipe before Muon, SE at reduction 4 against 16",
    "light-aug-gates": "{model}, the fast recipe before Muon, SE's gates started open against as initialised",
    "light-aug-muon": "{model}, the fast recipe as it stands, its conv filters trained by Muon against SGD",
}
# How to read a study's variant labels, under its recipe line.
VARIANTS_READ = {
    "recipe": "Each variant but `fast` switches off the one ingredient its label names.",
    "tune": "Each variant but `fast` moves the one setting its label names (batch=64 with lr 0.1: the peak lr scaled "
            "with the batch). `fast` is the recipe as it was then, at peak lr 0.2.",
    "full-budget": "`fast` is the recipe at its first peak lr, 0.2; `lr=0.4` at the peak the tune study chose on "
                   "15,000 images; `batch=64` halves the batch at lr 0.2, the peak 0.4 scaled with the batch (twice "
                   "the steps); `zero-init` starts each residual branch's last batch norm at weight 0; `wd=1e-4` "
                   "decays the weights at He et al.'s 1e-4 instead of 5e-4; `no-label-smoothing` trains on the "
                   "one-hot labels; `r=4` gives every SE block reduction 4 instead of 16; `batch=256` doubles "
                   "the batch and the peak lr (0.4: half the steps); `epochs=20` trains a third longer (the same "
                   "schedule stretched), to measure what the 15-epoch budget costs; `light-aug` crops from 2-pixel "
                   "padding instead of 4 and mirrors each image in every other epoch (the alternating flip) "
                   "instead of at random; `light-aug+ls=0.2` adds label smoothing 0.2 to it, `light-aug+wd=1e-3` "
                   "weight decay 1e-3; `light-aug+pad=1` crops from 1-pixel padding instead of 2; "
                   "`light-aug+ema=0.999` evaluates a moving average of the weights (decay 0.999 per step; its "
                   "raw weights are light-aug's, and its raw column should match that arm); "
                   "`light-aug+warmup=1` and `light-aug+warmup=5` rise to the peak over 1 and 5 epochs instead "
                   "of 3; `light-aug+cosine` decays along a cosine over the whole run (times a linear 3-epoch "
                   "warm-up) instead of a straight line; `light-aug+momentum=0.95` trains with Nesterov momentum "
                   "0.95 instead of 0.9 (twice the effective step lr / (1 - momentum)), `+lr=0.1` at half the "
                   "peak lr (the recipe's effective step); `light-aug+whiten` starts the stem conv's 16 filters as "
                   "+ and - the 8 leading principal directions of the training images' 3x3 patches, each scaled to "
                   "unit variance (`--whiten-stem`); `light-aug+r=4+gate-bias=2` gives every SE block reduction 4 and "
                   "starts its gates open (fc2's bias at 2); `light-aug+reflect` fills the crops' 2-pixel border "
                   "with the image reflected at its edges instead of zeros (`--crop-fill reflect`); "
                   "`light-aug+r=4+gate-bias=2+reflect` the two together; `light-aug+muon=0.03` trains the conv "
                   "filters with Muon (orthogonalised Nesterov momentum, each filter bank's scale held fixed) at "
                   "peak lr 0.03 on the same schedule, the rest with SGD as before (`--muon-lr 0.03`). Here all train "
                   "on 45,000 images and are compared on "
                   "the 5,000 held out.",
    "light-aug-reduction": "`r=16` is the recipe's SE (the light-aug study's SE-ResNet-20 runs, copied in); `r=4` "
                           "gives every SE block four times the hidden units (stage 1: 4 instead of 1).",
    "light-aug-gates": "`as-initialised` is the recipe's SE (the light-aug study's SE-ResNet-20 runs, copied in): "
                       "fc2's bias uniform in ±1/sqrt(C/r), the gates near 0.5 at the start; `gate-bias=2` starts "
                       "fc2's bias at 2 in every SE block (`--se-gate-bias 2`), the gates near sigmoid(2) = 0.88.",
    "light-aug-muon": "`sgd` is the recipe (the light-aug study's SE-ResNet-20 runs, copied in): SGD with Nesterov "
                      "momentum for every parameter; `muon=0.03` trains the conv filters with Muon at peak lr 0.03 "
                      "(`--muon-lr 0.03`: the momentum orthogonalised, each filter bank's scale held fixed), batch "
                      "norm, the SE blocks' and the classifier's parameters with SGD as before.",
}
METRIC_NAMES = {"test_acc": "test acc %", "val_acc": "val acc %"}


def results_markdown(results):
    """results.md: the recipe, a row per variant, the paired differences with their reading, a row per run."""
    stats, runs = results["stats"], results["runs"]
    model, metric = results["model"], results.get("metric") or "test_acc"
    title = TITLES.get(results["name"], "SE {name} on se_{model}").format(model=model, name=results["name"])
    lines = [f"# {title}", ""]
    if runs:
        lines += [recipe_line(runs[0]["recipe"]), ""]
    if results["name"] in VARIANTS_READ:
        lines += [VARIANTS_READ[results["name"]], ""]
    split = "validation" if metric == "val_acc" else "test"
    extras = [(name, header) for name, header in
              (("test_accuracy", "test acc %"), ("flip_tta", "flip TTA test %"), ("raw", "raw weights test %"))
              if any(name in s for s in stats.values())]
    lines += [(f"{split.capitalize()} accuracy after the last epoch, in %: mean ± sample std over seeds, and min – "
               "max; train s: seconds in training steps (evaluation excluded), mean over seeds"
               + ("; flip TTA: the mean logits of each test image and its mirror image; raw weights: the weights "
                  "SGD trained, beside the run's own weights (their moving average, with --ema)" if extras else "")
               + "."), "",
              f"| variant | seeds | {METRIC_NAMES[metric]} | min – max | error % | params | MACs | train s (mean) |"
              + "".join(f" {header} |" for _, header in extras),
              "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extras)]
    for label, s in stats.items():
        a = s["accuracy"]
        lines.append(f"| {label} | {a['n']} | {format_spread(a)} | {a['min']:.2f} – {a['max']:.2f} "
                     f"| {s['error']:.2f} | {s['params'] / 1e6:.3f} M | {s['macs'] / 1e6:.2f} M "
                     f"| {s['train_seconds']:.0f} |" + "".join(f" {format_spread(s[name]) if name in s else '–'} |"
                                                              for name, _ in extras))
    if results["differences"]:
        baseline = results["differences"][0]["baseline"]
        heading = "the plain model" if not results.get("baseline") else baseline
        lines += ["", f"## Minus {heading}, paired by seed ({split} accuracy points)", "",
                  "| variant | seeds | mean difference | std | min – max | 95% t-interval |",
                  "|---|---:|---:|---:|---:|---:|"]
        for d in results["differences"]:
            std = "–" if d["std"] is None else f"{d['std']:.2f}"
            interval = "–" if not d.get("ci95") else f"{d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f}"
            lines.append(f"| {d['variant']} − {d['baseline']} | {d['n']} | {d['mean']:+.2f} | {std} "
                         f"| {d['min']:+.2f} – {d['max']:+.2f} | {interval} |")
        lines += [""] + [d["reading"] for d in results["differences"]]
    ratio = results.get("time_ratio")
    if ratio:
        per_seed = ", ".join(f"seed {seed}: {r:.2f}×" for seed, r in ratio["per_seed"].items())
        threads = sorted({r["threads"] for r in runs if r.get("threads")})
        lines += ["", f"Training time, tinyse / PyTorch: {ratio['mean']:.2f}× (mean seconds over seeds; {per_seed})"
                  + (f", {' and '.join(map(str, threads))} thread(s) per run." if threads else ".")]
    columns = [metric] if metric == "test_acc" else [metric, "test_acc"]  # the compared number, then the test's
    lines += ["", "## Runs", "", "| variant | seed | " + " | ".join(METRIC_NAMES[c] for c in columns)
              + " | train s | folder |", "|---|---:|" + "---:|" * len(columns) + "---:|---|"]
    lines += [f"| {r['variant']} | {r['seed']} | " + " | ".join(f"{100 * r[c]:.2f}" for c in columns)
              + f" | {r['train_seconds']:.0f} | {r['folder']} |" for r in runs]
    if results["unfinished"]:
        lines += ["", "Unfinished (not counted): " + ", ".join(results["unfinished"])]
    return "\n".join(lines) + "\n"


def format_spread(a):
    """"mean ± std" of a ``spread`` (just the mean for one value)."""
    return f"{a['mean']:.2f}" + ("" if a["std"] is None else f" ± {a['std']:.2f}")


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
    add("--jobs", type=int, default=1,
        help="runs at a time, each in its own process with cores / jobs threads (default 1: one run on every core)")
    commands.add_parser("compare", parents=[shared], help="the plain model against its SE twin")
    for option, values in ABLATIONS.items():
        sub = commands.add_parser(option, parents=[shared], help=f"SE with each {option}: {' '.join(values)}")
        sub.add_argument("--values", nargs="+", default=list(values), help=f"default {' '.join(values)}")
        sub.add_argument("--with-plain", action="store_true", help="also train the plain model, for reference")
    for study, settings in STUDIES.items():
        sub = commands.add_parser(study, help=STUDY_HELP[study])
        add = sub.add_argument
        add("--model", default=settings["model"],
            help=f"{'the model family' if study in COMPARE_STUDIES else 'the model'} (default {settings['model']})")
        add("--seeds", type=int, nargs="+", default=list(settings["seeds"]),
            help=f"default {' '.join(map(str, settings['seeds']))}")
        budget = settings["budget"]
        add("--epochs", type=int, help=f"default {budget.get('epochs', 'the recipe’s: 15')}")
        add("--train-subset", type=int, help=f"train on N images only (default {budget.get('train_subset', 'all')})")
        add("--test-subset", type=int, help=f"the first N test images (default {budget.get('test_subset', 'all')})")
        add("--val-split", type=int, help=f"training images held out (default {budget.get('val_split', 0)})")
        add("--batch-size", type=int, help="default the recipe's (128); scale --lr with it")
        add("--lr", type=float, help=f"the peak lr (default {budget.get('lr', 'the recipe’s: 0.2')})")
        add("--eval-every", type=int, help=f"default {budget.get('eval_every', 'the recipe’s: 5')}")
        add("--variants", nargs="+", metavar="LABEL",
            help="train only these arms (their labels, as in results.md); the results still cover every arm run")
        add("--out", help=f"study folder (default docs/runs/{study})")
        add("--data-dir", help="where CIFAR is (default: $TINYSE_DATA, else ~/.cache/tinyse/data)")
        add("--device", default="cpu", choices=("cpu", "gpu"))
        add("--no-progress", dest="progress", action="store_false", help="no progress bar, only lines")
        add("--jobs", type=int, default=1,
            help="runs at a time, each in its own process with cores / jobs threads (default 1)")
    summarize_parser = commands.add_parser("summarize", help="rebuild results.json and results.md, no training")
    summarize_parser.add_argument("folder")
    return parser.parse_args(argv)


STUDY_HELP = {
    "recipe": "the fast recipe and each ingredient switched off in turn (5 epochs, validation split)",
    "tune": "the fast recipe with its peak lr, batch or weight decay moved (15 epochs on 15,000 images, validation)",
    "full-budget": "the fast recipe at peak lr 0.2 and 0.4, at batch 64, with zero-initialised residual "
                   "branches, weight decay 1e-4, no label smoothing, SE at r=4, batch 256, 20 epochs and lighter "
                   "augmentation (with label smoothing 0.1 and 0.2, weight decay 1e-3, 1-pixel crops, a moving "
                   "average of the weights, a 1- or 5-epoch warm-up, a cosine decay, momentum 0.95, a whitened "
                   "stem, SE at r=4 with open gates, reflected crop borders), on 45,000 images, 5,000 held out "
                   "(validation)",
    "se-vs-plain": "ResNet-20 against SE-ResNet-20 with the first fast recipe (peak lr 0.2, 4-pixel crops, random "
                   "flips), paired by seed",
    "no-smoothing": "the same without label smoothing (the full-budget study's best arm), paired by seed",
    "light-aug": "the same with 2-pixel crops and the alternating flip (the full-budget study's light-aug arm): "
                 "the fast recipe before Muon",
    "deep": "ResNet-56 against SE-ResNet-56 with the fast recipe before Muon, paired by seed",
    "muon-se-vs-plain": "ResNet-20 against SE-ResNet-20 with the fast recipe as it stands (Muon for the conv "
                        "filters), paired by seed",
    "fast": "ResNet-20 against SE-ResNet-20 with the fast recipe at the tune study's peak lr 0.4 and 4-pixel crops, "
            "paired by seed",
    "torch-check": "the first fast recipe trained by tinyse and by PyTorch: accuracy and time",
    "light-aug-torch": "the fast recipe before Muon (the light-aug study's) trained by tinyse and by PyTorch",
    "muon-torch": "the fast recipe as it stands (Muon for the conv filters; the light-aug-muon study's Muon arm) "
                  "trained by tinyse and by PyTorch",
    "twenty-epochs": "the fast recipe before Muon stretched to 20 epochs (warm-up 4): what 15 epochs cost, on the "
                     "test set",
    "light-aug-reduction": "SE-ResNet-20 with the fast recipe before Muon at reduction 4 against 16 (the light-aug "
                           "study's runs), paired by seed, on the test set",
    "light-aug-gates": "SE-ResNet-20 with the fast recipe before Muon, its SE gates started near 0.88 (fc2's bias "
                       "at 2) against as initialised (near 0.5: the light-aug study's runs), paired by seed, on the "
                       "test set",
    "light-aug-muon": "SE-ResNet-20 with the fast recipe as it stands, its conv filters trained by Muon (peak lr 0.03) "
                      "against SGD for every parameter (the light-aug study's runs), paired by seed, on the test set",
}


def study_variants(study, model):
    """(model, variants, baseline) of a study (one of STUDIES) on ``model``."""
    if study in COMPARE_STUDIES:
        plain = plain_and_se(model)[0]
        return plain, compare_variants(model), plain
    if model not in models.list():
        raise ValueError(f"unknown model {model!r}; known models: {', '.join(models.list())}")
    variants = {"recipe": recipe_variants, "tune": tune_variants, "full-budget": full_budget_variants,
                "twenty-epochs": twenty_epochs_variants, "light-aug-reduction": reduction_variants,
                "light-aug-gates": gate_variants, "light-aug-muon": muon_variants}.get(study, library_variants)(model)
    return model, variants, variants[0]["label"]


def run_study(args):
    """Run the study ``args.command`` (one of STUDIES) from its command line; returns (out, (stopped, results))."""
    study = STUDIES[args.command]
    recipe = dict(study["budget"], **{k: getattr(args, k) for k in STUDY_FLAGS if getattr(args, k) is not None})
    out = args.out or os.path.join("docs", "runs", args.command)
    model, variants, baseline = study_variants(args.command, args.model)
    if args.variants:
        labels = [v["label"] for v in variants]
        unknown = [label for label in args.variants if label not in labels]
        if unknown:
            raise ValueError(f"no arm {', '.join(map(repr, unknown))} in the {args.command} study; its arms: "
                             f"{', '.join(labels)}")
        variants = [v for v in variants if v["label"] in args.variants]
    return out, run_experiment(args.command, model, variants, args.seeds, out, recipe, args.device, args.data_dir,
                               args.progress, jobs=args.jobs, base={}, baseline=baseline, metric=study["metric"])


def main(argv=None):
    keep_freed_memory()  # a process-wide malloc setting, so the tool asks for it (tinyse/memory.py)
    args = parse_args(argv)
    try:
        if args.command == "summarize":
            print(results_markdown(summarize(args.folder)))
            return
        module_for_device(args.device)  # a clear error now if the GPU is missing
        if args.command in STUDIES:
            out, (stopped, results) = run_study(args)
        else:
            if args.command == "compare":
                variants = compare_variants(args.model)
            else:
                variants = ablation_variants(args.command, args.model, args.values, args.with_plain)
            recipe = {k: getattr(args, k) for k in BUDGET}
            recipe["train_subset"] = recipe["train_subset"] or None
            family = plain_and_se(args.model)[0]
            out = args.out or os.path.join("experiments", f"{args.command}-{family}")
            stopped, results = run_experiment(args.command, family, variants, args.seeds, out, recipe, args.device,
                                              args.data_dir, args.progress, jobs=args.jobs)
    except (DataError, FileNotFoundError, FloatingPointError, RuntimeError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(results_markdown(results))
    print(f"written: {os.path.join(out, 'results.md')} and results.json")
    if stopped:
        sys.exit(130)


if __name__ == "__main__":
    main()
