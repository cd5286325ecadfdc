"""Train a model on CIFAR-10 or CIFAR-100: ``python -m tinyse.train``.

    python -m tinyse.train --recipe fast                     # SE-ResNet-20, 15 epochs: the CPU recipe
    python -m tinyse.train                                   # He et al.'s recipe (164 epochs: a GPU's job)
    python -m tinyse.train --recipe fast --label-smoothing 0 --val-split 5000   # one ingredient off, validation
    python -m tinyse.train --model resnet20 --epochs 30 --schedule cosine --device gpu
    python -m tinyse.train --train-subset 5000 --epochs 3    # a quick run
    python -m tinyse.train --resume runs/se_resnet20         # continue an interrupted run exactly

Two recipes (``--recipe``), each a set of defaults that every flag still overrides:

    ingredient                  he (default)            fast                       flag
    epochs                      164                     15                         --epochs
    batch                       128                     128                        --batch-size
    learning rate               0.1                     0.2 (the peak)             --lr
    schedule                    step: /10 at 50%, 75%   onecycle: 20% up, linear   --schedule, --warmup-epochs,
                                                        to 0 (Smith & Topin 2019)  --div-factor
    momentum                    0.9                     0.9, Nesterov              --momentum, --[no-]nesterov
    conv filters' optimiser     SGD                     Muon, peak lr 0.03 (Jordan --muon-lr LR (0: SGD)
                                                        et al. 2024), same schedule
    weight decay                1e-4, on everything     5e-4, not on batch norm    --weight-decay,
                                                        and biases (nor Muon's     --[no-]decay-norm-and-bias
                                                        filters: their scale is
                                                        held fixed)
    crops                       from 4-pixel padding    from 2-pixel padding       --crop-padding
    crops' border               zeros                   zeros                      --crop-fill (zeros, reflect)
    flips                       random, p = 1/2         alternate: every other     --flip
                                                        epoch (Jordan 2024)
    label smoothing             0                       0.1                        --label-smoothing
    moving average (EMA)        none                    none (at 0.999 it cost     --ema DECAY (0: none)
                                                        0.6 points at 15 epochs:
                                                        docs/RESULTS.md)
    test-time flip              no                      reported beside            --tta
    validation split            5,000                   0 (train on all 50,000)    --val-split
    evaluate every              epoch                   5 epochs (and the last)    --eval-every
    residual branches start     as initialised          as initialised             --zero-init-residual (at 0)
    stem conv starts            Kaiming-normal          Kaiming-normal             --whiten-stem (patch whitening)
    SE gates start              near 0.5                near 0.5                   --se-gate-bias B (sigmoid(B))

He et al.'s recipe is the SE paper's CIFAR baseline (64k iterations; random crops with 4-pixel
padding and random horizontal flips). The fast one reaches its accuracy in a tenth of the epochs, with
the lighter augmentation of the short-budget literature and Muon for the conv filters (docs/RESULTS.md,
section 0, gives what each setting changed). ``--lr`` is the learning rate at the batch you give: at another
batch than 128, scale it yourself (Goyal et al. 2017's linear rule: lr * B / 128).

The run folder (``--out``) receives:
    config.json      every setting of the run (the recipe resolved)
    metrics.jsonl    one JSON line per epoch (lr, train loss and accuracy, seconds; on evaluated epochs the
                     validation / test loss and accuracy, see ``finish_epoch`` for the keys)
    last.npz         the latest state (weights, optimiser, EMA, progress); written at every epoch and on Ctrl-C
    best.npz         the weights with the best validation accuracy (needs --val-split > 0)
    curves.png       loss and accuracy against epoch
With ``--ema`` the run's weights are the moving average: ``test_acc`` is the average's accuracy and
``python -m tinyse.evaluate`` evaluates it; the weights SGD trained are scored beside (``raw_test_acc``).
Everything random is a function of ``--seed`` (initial weights) and of (seed,
epoch, batch) for the data order and augmentation, so ``--resume`` continues
exactly where the run stopped, and on the CPU ends with the same weights as
a run that was never interrupted (with the same number of threads: the batch is
split across them, and float sums depend on the split).
"""
import argparse
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

import tinyse.functional as F
from tinyse import models
from tinyse.backend import module_for_device
from tinyse.checkpoint import atomic_write, load_checkpoint, load_ema, save_checkpoint
from tinyse.data import FILLS, FLIPS, BatchLoader, DataError, load_cifar, normalize, random_stream, split_validation
from tinyse.memory import keep_freed_memory
from tinyse.models import se_options
from tinyse.models.resnet import whiten_stem, zero_init_residuals
from tinyse.nn import manual_seed
from tinyse.nn.se import SQUEEZES, set_gate_bias
from tinyse.ops.se import GATES
from tinyse.optim import SCHEDULES, SGD, ModelEMA, Muon, MuonWithSGD, make_schedule, muon_split
from tinyse.parallel import workers
from tinyse.progress import Progress, RunTiming, format_duration
from tinyse.tensor import Tensor, no_grad

SE_OPTIONS = ("reduction", "squeeze", "excitation", "integration", "stages")

# The recipes: the defaults of the settings below, each overridden by its own flag (see the docstring's table).
RECIPES = {
    "he": {"epochs": 164, "batch_size": 128, "lr": 0.1, "schedule": "step", "momentum": 0.9, "nesterov": False,
           "weight_decay": 1e-4, "decay_norm_and_bias": True, "label_smoothing": 0.0, "ema": 0.0, "tta": "none",
           "val_split": 5000, "eval_every": 1, "crop_padding": 4, "flip": "random", "muon_lr": 0.0},
    "fast": {"epochs": 15, "batch_size": 128, "lr": 0.2, "schedule": "onecycle", "momentum": 0.9, "nesterov": True,
             "weight_decay": 5e-4, "decay_norm_and_bias": False, "label_smoothing": 0.1, "ema": 0.0, "tta": "flip",
             "val_split": 0, "eval_every": 5, "crop_padding": 2, "flip": "alternate", "muon_lr": 0.03},
}
ONECYCLE_WARMUP = 0.2  # --schedule onecycle rises over this fraction of the epochs unless --warmup-epochs says
# Settings a config saved before they existed did not have: their value then, so old runs resume unchanged.
BEFORE_RECIPES = {"recipe": "he", "library": "tinyse", "decay_norm_and_bias": True, "label_smoothing": 0.0,
                  "ema": 0.0, "tta": "none", "eval_every": 1, "div_factor": 25.0, "zero_init_residual": False,
                  "whiten_stem": False, "crop_padding": 4, "flip": "random", "se_gate_bias": None,
                  "crop_fill": "zeros", "muon_lr": 0.0}


def parse_args(argv=None, prog="python -m tinyse.train"):
    """The command line; settings a recipe decides are None until ``resolve_recipe`` fills them.
    (``tinyse.bench.train_torch`` takes the same flags, under its own ``prog``.)"""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--recipe", default="he", choices=tuple(RECIPES),
        help="the defaults: he (He et al., 164 epochs: the GPU recipe; the default) or fast (15 epochs: the CPU "
             "recipe); every flag below overrides its own setting")
    add("--model", default="se_resnet20", help="a name from `python -m tinyse.models` (default se_resnet20)")
    add("--dataset", default="cifar10", choices=("cifar10", "cifar100"))
    add("--epochs", type=int, help="he 164 (He et al.'s 64k iterations at batch 128), fast 15")
    add("--batch-size", type=int, help="128; at another batch scale --lr with it (lr * B / 128)")
    add("--lr", type=float, help="the learning rate (onecycle: its peak): he 0.1, fast 0.2")
    add("--schedule", choices=SCHEDULES, help="he step, fast onecycle")
    add("--milestones", type=int, nargs="*",
        help="epochs where the step schedule divides the lr by 10 (default 50%% and 75%%)")
    add("--warmup-epochs", type=float,
        help=f"onecycle: the rise from lr / --div-factor to lr (default {100 * ONECYCLE_WARMUP:.0f}%% of the epochs); "
             "other schedules: a linear warm-up from lr / 10 (default 0)")
    add("--div-factor", type=float, default=25.0, help="onecycle starts at lr / this (default 25)")
    add("--momentum", type=float, help="0.9")
    add("--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum (he: no, fast: yes)")
    add("--weight-decay", type=float, help="he 1e-4, fast 5e-4")
    add("--muon-lr", type=float, metavar="LR",
        help="train the conv filters with Muon (orthogonalised momentum; Jordan et al., 2024) at this peak lr, on "
             "the same schedule, and the rest with SGD (he 0: SGD for everything; fast 0.03)")
    add("--decay-norm-and-bias", action=argparse.BooleanOptionalAction,
        help="weight decay on batch norm's parameters and the biases too (he: yes; fast: no, only on the "
             "conv and linear weights)")
    add("--label-smoothing", type=float, metavar="EPS", help="he 0, fast 0.1")
    add("--zero-init-residual", action="store_true",
        help="start every residual branch's last batch norm at weight 0, so each unit starts as its shortcut "
             "(Goyal et al., 2017; off in both recipes)")
    add("--whiten-stem", action="store_true",
        help="start the stem conv's filters as + and - the leading principal directions of the training images' "
             "3x3 patches, scaled to unit variance (Jordan 2024's whitening; off in both recipes)")
    add("--se-gate-bias", type=float, metavar="B",
        help="start fc2's bias at B in every SE block, so the gates start near sigmoid(B) instead of about 0.5 "
             "(default: as initialised, in both recipes)")
    add("--ema", type=float, metavar="DECAY",
        help="evaluate and keep a moving average of the weights, this decay per step (0: none, both recipes' default)")
    add("--tta", choices=("none", "flip"),
        help="flip: also report the accuracy of the mean logits of each image and its mirror image, beside "
             "the single-crop accuracy (he none, fast flip)")
    add("--val-split", type=int, help="training images held out to choose best.npz (he 5000, fast 0)")
    add("--eval-every", type=int, metavar="N",
        help="evaluate every N epochs and after the last (he 1, fast 5: with --ema and --tta flip an evaluation "
             "is three passes over the test set)")
    add("--device", default="cpu", choices=("cpu", "gpu"))
    add("--data-dir", help="where CIFAR is, or will be downloaded (default: $TINYSE_DATA, else ~/.cache/tinyse/data)")
    add("--seed", type=int, default=0)
    add("--out", help="run folder (default runs/MODEL-DATASET-seedSEED)")
    add("--resume", metavar="DIR", help="continue the run in DIR from its last.npz (its settings are used)")
    add("--train-subset", type=int, help="train on this many images only (a quick run)")
    add("--test-subset", type=int, help="evaluate on the first N test images only")
    add("--no-augment", dest="augment", action="store_false", help="no random crops or flips")
    add("--crop-padding", type=int, metavar="P",
        help="random crops of the images padded by P pixels (he 4, He et al.'s; fast 2)")
    add("--crop-fill", choices=tuple(FILLS), default="zeros",
        help="what the crops' padding holds: zeros (both recipes) or the image reflected at its edges (Jordan, 2024)")
    add("--flip", choices=FLIPS,
        help="random: each image mirrored with probability 1/2 (he); alternate: mirrored in every other epoch, "
             "from a random start per image (fast; Jordan, 2024)")
    add("--prefetch", action="store_true", help="prepare the next batch in a background thread")
    add("--no-progress", dest="progress", action="store_false", help="no progress bar, only a line per epoch")
    add("--reduction", type=int, help="SE reduction ratio r (default 16)")
    add("--squeeze", choices=SQUEEZES)
    add("--excitation", choices=GATES)
    add("--integration", choices=se_options.INTEGRATIONS)
    add("--stages", type=int, nargs="+", choices=(1, 2, 3), help="the stages that get SE (default all: 1 2 3)")
    return parser.parse_args(argv)


def resolve_recipe(settings):
    """Fill every setting left None with its recipe's default (in place; returns ``settings``, a dict).

    The one-cycle warm-up defaults to ONECYCLE_WARMUP of the epochs (3 of 15), any other schedule's to 0.
    Raises ValueError for settings no run could use.
    """
    for key, value in RECIPES[settings["recipe"]].items():
        if settings.get(key) is None:
            settings[key] = value
    if settings.get("warmup_epochs") is None:
        settings["warmup_epochs"] = ONECYCLE_WARMUP * settings["epochs"] if settings["schedule"] == "onecycle" else 0.0
    if not 0 <= settings["ema"] < 1:
        raise ValueError(f"--ema must be in [0, 1) (0: no moving average), got {settings['ema']}")
    if not 0 <= settings["label_smoothing"] <= 1:
        raise ValueError(f"--label-smoothing must be in [0, 1], got {settings['label_smoothing']}")
    if settings["crop_padding"] < 0:
        raise ValueError(f"--crop-padding must be >= 0, got {settings['crop_padding']}")
    if settings["eval_every"] < 1:
        raise ValueError(f"--eval-every must be >= 1, got {settings['eval_every']}")
    return settings


def describe_recipe(config):
    """The resolved recipe as lines for the start of a run: ingredient, value."""
    schedule = config["schedule"]
    if schedule == "onecycle":
        schedule += f": {config['warmup_epochs']:g} epochs up from lr / {config['div_factor']:g}, then linear to 0"
    else:
        if schedule == "step":
            milestones = make_schedule("step", 1.0, config["epochs"], config["milestones"]).milestones
            schedule += f": /10 at epochs {', '.join(map(str, milestones))}"
        if config["warmup_epochs"]:
            schedule += f", {config['warmup_epochs']:g} warm-up epochs"
    momentum = f"{'Nesterov ' if config['nesterov'] else ''}momentum {config['momentum']:g}"
    decay = f"{config['weight_decay']:g}" + ("" if config["decay_norm_and_bias"] else ", not on batch norm and biases")
    images = f"{config['train_subset']:,} training images" if config["train_subset"] else "every training image"
    held_out = f" ({config['val_split']:,} held out for validation)" if config["val_split"] else ""
    rows = [
        ("model", f"{config['model']} on {config['dataset']}, seed {config['seed']}, {config['device']}"
                  + (", residual branches start at 0" if config.get("zero_init_residual") else "")
                  + (", stem whitened" if config.get("whiten_stem") else "")
                  + (f", SE gates' bias {config['se_gate_bias']:g}" if config.get("se_gate_bias") is not None else "")),
        ("training", f"{config['epochs']} epochs on {images}{held_out}, batch {config['batch_size']}"),
        ("learning rate", f"{config['lr']:g}, {schedule}"),
        ("optimiser", (f"Muon for the conv filters, peak lr {config['muon_lr']:g}, {momentum}; SGD for the rest, "
                       if config["muon_lr"] else "SGD, ") + f"{momentum}, weight decay {decay}"),
        ("augmentation", f"crop from {config['crop_padding']}-pixel padding"
                         + (f" ({config['crop_fill']})" if config["crop_fill"] != "zeros" else "") + ", "
                         + ("random flip" if config["flip"] == "random" else "flip in every other epoch")
                         if config["augment"] else "none"),
        ("label smoothing", f"{config['label_smoothing']:g}"),
        ("weight average", f"EMA, decay {config['ema']:g} per step" if config["ema"] else "none"),
        ("test-time aug.", "flip, reported beside the single crop" if config["tta"] == "flip" else "none"),
        ("evaluation", "every epoch" if config["eval_every"] == 1 else
         f"every {config['eval_every']} epochs and after the last"),
    ]
    return [f"recipe {config['recipe']!r} (each setting overridable by its flag):"] + [
        f"  {name:<16} {value}" for name, value in rows]


# --- building the pieces ---------------------------------------------------------------------
WHITENING_IMAGES = 5000  # --whiten-stem: the stem's filters come from the patches of this many training images


def build_model(config, num_classes, train_loader=None):
    """The model a config names, on its device (initial weights from ``config["seed"]``).

    With ``whiten_stem`` and a ``train_loader`` (a ``BatchLoader``) the stem starts from the first
    WHITENING_IMAGES images it serves; without one (the weights are loaded next: evaluating, resuming)
    the stem stays as initialised."""
    options = {k: config[k] for k in SE_OPTIONS if config.get(k) is not None}
    manual_seed(config["seed"])
    model = models.create(config["model"], num_classes=num_classes, **options)
    if config.get("zero_init_residual") and not zero_init_residuals(model):
        raise ValueError(f"--zero-init-residual: {config['model']} has no residual units")
    if config.get("se_gate_bias") is not None and not set_gate_bias(model, config["se_gate_bias"]):
        raise ValueError(f"--se-gate-bias: {config['model']} has no SE blocks")
    if config.get("whiten_stem") and train_loader is not None:
        images = train_loader.images[:WHITENING_IMAGES]
        whiten_stem(model, normalize(images, train_loader.mean, train_loader.std))
    return model.to(config["device"])


def build_data(config):
    """Training, validation and test loaders from the config's dataset, split and subsets."""
    data = load_cifar(config["dataset"], root=config["data_dir"])
    train_x, train_y, val_x, val_y = split_validation(
        data.train_images, data.train_labels, config["val_split"], config["seed"]
    )
    if config["train_subset"]:
        keep = random_stream(config["seed"], 2).permutation(len(train_x))[: config["train_subset"]]
        train_x, train_y = train_x[np.sort(keep)], train_y[np.sort(keep)]
    test_x, test_y = data.test_images, data.test_labels
    if config["test_subset"]:
        test_x, test_y = test_x[: config["test_subset"]], test_y[: config["test_subset"]]

    def loader(images, labels, train):
        return BatchLoader(
            images, labels, config["batch_size"], data.mean, data.std, shuffle=train,
            augment=train and config["augment"], seed=config["seed"], device=config["device"],
            prefetch=config["prefetch"], padding=config["crop_padding"], flip=config["flip"],
            fill=config["crop_fill"],
        )

    loaders = {"train": loader(train_x, train_y, True), "test": loader(test_x, test_y, False)}
    if len(val_x):
        loaders["val"] = loader(val_x, val_y, False)
    return data, loaders


def build_optimizer(config, model):
    """SGD with the config's momentum, Nesterov and weight decay (not on batch norm and biases unless
    ``decay_norm_and_bias``: ``tinyse.optim.param_groups``). With ``muon_lr`` the conv filters (the 4-axis
    parameters, each followed by a batch norm) go to ``Muon`` instead, the rest to SGD: ``MuonWithSGD``."""
    filters, groups = muon_split(model.named_parameters(), config["muon_lr"], config["weight_decay"],
                                 config["decay_norm_and_bias"])
    sgd = SGD(groups, config["lr"], config["momentum"], config["nesterov"], config["weight_decay"])
    if not filters:
        return sgd
    return MuonWithSGD(Muon(filters, config["muon_lr"], config["momentum"], config["nesterov"]), sgd)


def flip_images(images):
    """A batch mirrored left-right: Tensor (B, C, H, W) -> Tensor (B, C, H, W), a new contiguous array."""
    return Tensor(images.data[..., ::-1].copy())


def evaluate(model, loader, tta=False):
    """{"loss", "acc"} of ``model`` in eval mode over every batch of ``loader``; with ``tta`` also "acc_flip_tta".

    loss: the mean cross-entropy (no label smoothing, whatever the training used). acc_flip_tta: the
    accuracy of the mean of the logits of each image and of its mirror image (one more forward per batch);
    the single-crop numbers are never replaced by it. The model's train / eval mode is restored after.
    """
    was_training = model.training
    model.eval()
    totals, flipped = EpochTotals(), EpochTotals()  # sums kept on the device, read once at the end
    with no_grad():
        for images, labels in loader.batches(0):
            logits = model(images)
            totals.add(F.cross_entropy(logits, labels).data.astype(np.float64), logits.data, labels)
            if tta:
                mean_logits = (logits.data + model(flip_images(images)).data) / 2
                flipped.add(0.0, mean_logits, labels)
    model.train(was_training)
    totals.read()
    result = {"loss": totals.loss_sum / totals.seen, "acc": totals.correct / totals.seen}
    if tta:
        flipped.read()
        result["acc_flip_tta"] = flipped.correct / flipped.seen
    return result


# --- the loop --------------------------------------------------------------------------------
def train_epoch(model, optimizer, schedule, loader, state, stop, progress, label_smoothing=0.0, ema=None):
    """Train ``model`` on epoch ``state.epoch`` of ``loader``, from batch ``state.step``; True if the epoch finished.

    label_smoothing: of the training loss (``F.cross_entropy``); ema: a ``ModelEMA`` updated after each step, or None.
    state: the run's ``RunState``; its ``step`` and ``epoch_totals`` advance with every step, so
    a resumed epoch (``state.step`` > 0) goes on where it stopped.
    stop: a ``StopRequest``; after the step where it is requested (Ctrl-C) this returns False,
    with ``state`` ready to save and resume. progress: a ``Progress`` bar, closed on return.
    Raises ``FloatingPointError`` when the loss is not finite.
    """
    epoch, totals, steps_per_epoch = state.epoch, state.epoch_totals, len(loader)
    clock = time.perf_counter() - totals.seconds  # a resumed epoch counts the seconds it ran before
    model.train()  # batch norm on batch statistics (evaluate() switches to eval mode and back)
    for images, labels in loader.batches(epoch, start=state.step):
        optimizer.lr = schedule(epoch + state.step / steps_per_epoch)
        logits = model(images)                         # (B, classes)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)  # a scalar Tensor: the batch's mean
        optimizer.zero_grad()                          # gradients accumulate in .grad: clear the last step's
        loss.backward()                                # .grad of every parameter
        optimizer.step()                               # SGD with momentum and weight decay (or Muon: build_optimizer)
        if ema is not None:
            ema.update(model)                          # the moving average of the weights
        record_step(state, progress, loss.data.astype(np.float64), logits.data, labels, clock, steps_per_epoch)
        if stop.after_step():
            totals.read()
            progress.close()
            return False
    progress.close()
    totals.seconds = time.perf_counter() - clock
    return True


READ_EVERY = 50  # steps between host reads of the loss when no bar is drawn: a NaN stops the run this soon


def record_step(state, progress, loss, logits, labels, clock, steps_per_epoch):
    """After a training step: count its batch, advance ``state`` by a step, and move the progress bar.

    loss, logits, labels: the step's arrays (NumPy, CuPy or torch; the loss in float64). Their sums stay on the device
    (``EpochTotals.add``) and are read to the host, which on a GPU waits for the queue of kernels to
    drain, only when the bar is about to redraw, every ``READ_EVERY`` steps, and at the epoch's end.
    Raises FloatingPointError when a loss read is not finite.
    """
    totals = state.epoch_totals
    totals.add(loss, logits, labels)
    state.step += 1
    totals.seconds = time.perf_counter() - clock
    if progress.due() or state.step % READ_EVERY == 0 or state.step == steps_per_epoch:
        totals.read()
        if not math.isfinite(totals.loss_sum):
            progress.close()
            raise FloatingPointError(f"the loss became {totals.loss_sum} in epoch {state.epoch + 1}, by step "
                                     f"{state.step}")
    read = max(totals.read_seen, 1)  # the loss and accuracy shown are those of the steps read so far
    progress.update(loss=totals.loss_sum / read, acc=100 * totals.correct / read, img_s=totals.seen / totals.seconds)


@dataclass
class EpochTotals:
    """Sums over the steps of the current epoch so far: its training loss, accuracy and speed.

    ``add`` keeps a step's loss and correct answers on the arrays' device; ``read`` adds them into
    ``loss_sum`` and ``correct``, which count the first ``read_seen`` images (``seen`` counts them all).
    """

    loss_sum: float = 0.0  # sum over the images read of each image's loss
    correct: int = 0  # images read whose largest logit is their label
    seen: int = 0  # images trained on
    seconds: float = 0.0  # time the epoch has run (over a resume: before and after it)

    def __post_init__(self):
        self.read_seen = self.seen  # a saved state was read before it was saved
        self.pending_loss = self.pending_correct = None  # device arrays: sums over the steps not read yet

    def add(self, loss, logits, labels):
        """Count one step's batch: its mean ``loss`` (0-d, float64) and ``logits`` (B, classes) against ``labels`` (B,).

        float64, so that the sum is exact whichever steps each read groups: a float32 loss times the
        batch has at most 32 significant bits, and a float64 sum of such numbers from 1e-5 to 1e3 keeps
        every bit. A resumed run then reads the same ``train_loss`` as a run never interrupted.
        """
        batch = len(labels)
        step_loss, step_correct = loss * batch, (logits.argmax(axis=1) == labels).sum()
        if self.pending_loss is None:
            self.pending_loss, self.pending_correct = step_loss, step_correct
        else:
            self.pending_loss, self.pending_correct = self.pending_loss + step_loss, self.pending_correct + step_correct
        self.seen += batch

    def read(self):
        """Bring the sums of the steps added since the last read to the host (two reads, whatever their number)."""
        if self.pending_loss is not None:
            self.loss_sum += float(self.pending_loss)
            self.correct += int(self.pending_correct)
            self.pending_loss = self.pending_correct = None
        self.read_seen = self.seen


@dataclass
class RunState:
    """Where a run is; saved as ``meta["state"]`` in every checkpoint, so ``--resume`` continues exactly."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps finished in the current epoch
    best_val_acc: float | None = None  # the validation accuracy of best.npz
    epoch_totals: EpochTotals = field(default_factory=EpochTotals)

    def as_dict(self):
        """{"epoch", "step", "best_val_acc", "epoch_totals": {"loss_sum", "correct", "seen", "seconds"}}: JSON-able."""
        return asdict(self)

    @classmethod
    def from_dict(cls, saved, path="the checkpoint"):
        """The state that ``as_dict`` gave. Checkpoints of earlier tinyse versions hold the epoch's totals
        as a list, ``"partial": [loss_sum, correct, seen, seconds]``; they resume too."""
        values = dict(saved)
        if "partial" in values:
            values["epoch_totals"] = dict(zip(("loss_sum", "correct", "seen", "seconds"), values.pop("partial")))
        try:
            totals = EpochTotals(**values.pop("epoch_totals", {}))
            return cls(**values, epoch_totals=totals)
        except TypeError as error:  # a name that is not a field
            raise ValueError(f"cannot resume from {path}: its saved state {saved} is not a tinyse.train state "
                             f"({error})") from None


class StopRequest:
    """Ctrl-C asks the loop to stop after the current step (a second Ctrl-C stops at once).

    ``after_steps`` asks for the stop after that many steps, as Ctrl-C would (for tests).
    """

    def __init__(self, after_steps=None):
        self.requested = False
        self.steps_left = after_steps

    def after_step(self):
        """Count a step; True when the loop should stop now."""
        if self.steps_left is not None:
            self.steps_left -= 1
            self.requested = self.requested or self.steps_left == 0
        return self.requested

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self.previous)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


def train(config, stop_after_steps=None):
    """Run (or resume) the training a config describes.

    Returns {"stopped": whether it stopped early, "metrics": the last finished epoch's metrics or None}.

    ``stop_after_steps`` stops the run after that many steps as Ctrl-C would (for tests).
    """
    config = dict(BEFORE_RECIPES, **config)  # a config saved before a setting existed runs as it did then
    out = config["out"]
    last = os.path.join(out, "last.npz")
    os.makedirs(out, exist_ok=True)
    data, loaders = build_data(config)
    model = build_model(config, len(data.classes), None if config.get("resumed") else loaders["train"])
    optimizer = build_optimizer(config, model)
    schedule = make_schedule(config["schedule"], config["lr"], config["epochs"], config["milestones"],
                             warmup_epochs=config["warmup_epochs"], div_factor=config["div_factor"])
    ema = ModelEMA(model, config["ema"]) if config["ema"] else None
    state = RunState()
    if config.get("resumed"):
        weights, optimizer_state, meta = load_checkpoint(last)
        state = RunState.from_dict(meta["state"], last)
        model.load_state_dict(weights)
        optimizer.load_state_dict(optimizer_state)
        if ema is not None:
            saved = load_ema(last)
            if saved is None:
                raise ValueError(f"cannot resume from {last}: the run keeps a moving average (--ema), the file none")
            ema.load_state_dict(saved)
        print(f"resuming {out} at epoch {state.epoch + 1}, step {state.step}")
    else:
        print("\n".join(describe_recipe(config)), flush=True)
        atomic_write(os.path.join(out, "config.json"), lambda f: f.write(json.dumps(config, indent=2).encode()))
        open(os.path.join(out, "metrics.jsonl"), "w").close()

    def save(name):  # atomic: a crash while writing leaves the previous file whole (tinyse/checkpoint.py)
        save_checkpoint(os.path.join(out, name), model, optimizer, {"state": state.as_dict(), "config": config}, ema)

    metrics, steps_per_epoch = None, len(loaders["train"])
    with StopRequest(after_steps=stop_after_steps) as stop:
        while state.epoch < config["epochs"]:
            progress = Progress(steps_per_epoch, f"epoch {state.epoch + 1}/{config['epochs']}",
                                enabled=config["progress"], run=run_timing(config, read_metrics(out), state,
                                                                           steps_per_epoch))
            progress.skip_to(state.step)
            try:
                finished = train_epoch(model, optimizer, schedule, loaders["train"], state, stop, progress,
                                       config["label_smoothing"], ema)
            except FloatingPointError as error:
                raise FloatingPointError(f"{error}; {last} keeps the last good state (lower --lr?)") from None
            if not finished:
                save("last.npz")
                print(f"stopped at epoch {state.epoch + 1}, step {state.step}: saved {last}; "
                      f"continue with: python -m tinyse.train --resume {out}")
                return {"stopped": True, "metrics": metrics}
            metrics = finish_epoch(model, optimizer, loaders, state, out, save, config, ema)
    return {"stopped": False, "metrics": metrics}


def evaluation_due(config, epoch):
    """Whether epoch ``epoch`` (counted from 1) ends with an evaluation: every ``eval_every``-th, and the last."""
    return epoch % config["eval_every"] == 0 or epoch == config["epochs"]


def run_timing(config, rows, state, steps_per_epoch):
    """The ``RunTiming`` of the epoch about to run: the seconds the run took so far (``rows`` from metrics.jsonl and
    the epoch's own saved seconds), the steps after this epoch, and the seconds of the evaluations still to come."""
    elapsed, evaluation_seconds_left = time_taken_and_evaluations_left(config, rows, state.epoch)
    return RunTiming(elapsed + state.epoch_totals.seconds, (config["epochs"] - state.epoch - 1) * steps_per_epoch,
                     evaluation_seconds_left)


def time_taken_and_evaluations_left(config, rows, epochs_done):
    """(seconds the epochs in ``rows`` took, training and evaluation; seconds of the evaluations due after epoch
    ``epochs_done``, each at the mean of those done, 0 before the first)."""
    elapsed = sum(r["seconds"] + r.get("eval_seconds", 0.0) for r in rows)
    evaluations = [r["eval_seconds"] for r in rows if "eval_seconds" in r]
    mean_evaluation = sum(evaluations) / len(evaluations) if evaluations else 0.0
    evaluations_left = sum(evaluation_due(config, e) for e in range(epochs_done + 1, config["epochs"] + 1))
    return elapsed, evaluations_left * mean_evaluation


def evaluate_splits(config, model, loaders, ema):
    """The evaluation after an epoch, as metrics.jsonl keys, for the validation split (if any) and the test set:

        {split}_loss, {split}_acc        the run's weights: the moving average with --ema, else the model's
        {split}_acc_flip_tta             the same weights, the mean logits of each image and its mirror (--tta flip)
        raw_{split}_loss, raw_{split}_acc   with --ema: the weights SGD trained
    """
    metrics = {}
    for split in ("val", "test"):
        if split not in loaders:
            continue
        final = evaluate(ema.model if ema is not None else model, loaders[split], tta=config["tta"] == "flip")
        metrics[f"{split}_loss"], metrics[f"{split}_acc"] = final["loss"], final["acc"]
        if "acc_flip_tta" in final:
            metrics[f"{split}_acc_flip_tta"] = final["acc_flip_tta"]
        if ema is not None:
            raw = evaluate(model, loaders[split])
            metrics[f"raw_{split}_loss"], metrics[f"raw_{split}_acc"] = raw["loss"], raw["acc"]
    return metrics


def finish_epoch(model, optimizer, loaders, state, out, save, config, ema=None):
    """After an epoch's last step: evaluate (when due), append to metrics.jsonl, save last.npz (and best.npz), plot.

    Returns the epoch's metrics; ``state`` moves on to the next epoch. The keys: epoch, lr, train_loss
    (with the label smoothing the training used), train_acc, seconds (training steps only), images_per_s;
    on an evaluated epoch also eval_seconds and those of ``evaluate_splits``.
    """
    totals = state.epoch_totals
    metrics = {"epoch": state.epoch + 1, "lr": optimizer.lr, "train_loss": totals.loss_sum / totals.seen,
               "train_acc": totals.correct / totals.seen, "seconds": totals.seconds,
               "images_per_s": totals.seen / totals.seconds}
    if evaluation_due(config, state.epoch + 1):
        started = time.perf_counter()
        metrics.update(evaluate_splits(config, model, loaders, ema))
        metrics["eval_seconds"] = time.perf_counter() - started
    state.epoch, state.step, state.epoch_totals = state.epoch + 1, 0, EpochTotals()
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(metrics) + "\n")
    save("last.npz")
    if "val_acc" in metrics and (state.best_val_acc is None or metrics["val_acc"] > state.best_val_acc):
        state.best_val_acc = metrics["val_acc"]
        save("best.npz")
    rows = read_metrics(out)
    print(epoch_line(metrics, *run_clock(config, rows)), flush=True)
    plot_curves(out)
    return metrics


def run_clock(config, rows):
    """(seconds the run has taken, seconds it has left) after the epochs in ``rows``: each epoch left at the last
    epoch's training time, each evaluation left at the mean of those done."""
    elapsed, evaluation_seconds_left = time_taken_and_evaluations_left(config, rows, rows[-1]["epoch"])
    return elapsed, (config["epochs"] - rows[-1]["epoch"]) * rows[-1]["seconds"] + evaluation_seconds_left


def epoch_line(m, elapsed=None, left=None):
    """The line printed after each epoch: lr, train, validation and test loss / accuracy, time (and the run's)."""
    def scores(split):
        if f"{split}_acc" not in m:
            return ""
        text = f"  {split} {m[f'{split}_loss']:.3f} / {100 * m[f'{split}_acc']:.2f}%"
        if f"{split}_acc_flip_tta" in m:
            text += f" (flip {100 * m[f'{split}_acc_flip_tta']:.2f}%)"
        if f"raw_{split}_acc" in m:
            text += f" [raw {100 * m[f'raw_{split}_acc']:.2f}%]"
        return text

    run = f"  run {format_duration(elapsed)} eta {format_duration(left)}" if elapsed is not None else ""
    evaluation = f" + {m['eval_seconds']:.0f} s eval" if "eval_seconds" in m else ""
    return (
        f"epoch {m['epoch']:3d}  lr {m['lr']:.4g}  train {m['train_loss']:.3f} / {100 * m['train_acc']:.2f}%"
        f"{scores('val')}{scores('test')}  {m['seconds']:.0f} s ({m['images_per_s']:.0f} img/s){evaluation}{run}"
    )


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(out):
    """DIR/curves.png: loss and accuracy against epoch for train, validation and test."""
    from matplotlib.figure import Figure  # no pyplot: no backend switched under a notebook

    rows = read_metrics(out)
    figure = Figure(figsize=(10, 4))
    loss_axes, acc_axes = figure.subplots(1, 2)
    for split in ("train", "val", "test", "raw_val", "raw_test"):
        evaluated = [r for r in rows if f"{split}_loss" in r]  # epochs without an evaluation have no val / test
        if evaluated:
            epochs, style = [r["epoch"] for r in evaluated], {"linestyle": "--"} if split.startswith("raw") else {}
            label = split.replace("raw_", "") + " (raw weights)" if split.startswith("raw") else split
            loss_axes.plot(epochs, [r[f"{split}_loss"] for r in evaluated], marker=".", label=label, **style)
            acc_axes.plot(epochs, [100 * r[f"{split}_acc"] for r in evaluated], marker=".", label=label, **style)
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    acc_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for axes in (loss_axes, acc_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(os.path.basename(os.path.normpath(out)))
    figure.tight_layout()
    atomic_write(os.path.join(out, "curves.png"), lambda f: figure.savefig(f, format="png", dpi=100))


def config_from_args(args):
    """The run's config: the command line with its recipe resolved, or for --resume the saved config (with
    --device, --data-dir and --no-progress from the command line)."""
    if args.resume:
        path = os.path.join(args.resume, "config.json")
        if not os.path.exists(os.path.join(args.resume, "last.npz")):
            raise FileNotFoundError(f"nothing to resume in {args.resume}: no last.npz there")
        with open(path) as f:
            config = dict(BEFORE_RECIPES, **json.load(f))
        config.update(out=args.resume, resumed=True, device=args.device, progress=args.progress, threads=workers())
        if args.data_dir:
            config["data_dir"] = args.data_dir
        return config
    config = resolve_recipe({k: v for k, v in vars(args).items() if k != "resume"})
    config["library"], config["threads"] = "tinyse", workers()
    config["out"] = args.out or os.path.join("runs", f"{args.model}-{args.dataset}-seed{args.seed}")
    return config


def main(argv=None):
    keep_freed_memory()  # a process-wide malloc setting, so the tool asks for it (tinyse/memory.py)
    args = parse_args(argv)
    try:
        module_for_device(args.device)  # a clear error now if the GPU is missing
        result = train(config_from_args(args))
    except (DataError, FileNotFoundError, FloatingPointError, RuntimeError, ValueError) as error:
        sys.exit(f"error: {error}")
    if result["stopped"]:
        sys.exit(130)  # the shell's code for "interrupted by Ctrl-C"
    return result


if __name__ == "__main__":
    main()
