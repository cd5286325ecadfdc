"""Train a model on CIFAR-10 or CIFAR-100: ``python -m tinyse.train``.

    python -m tinyse.train                                   # SE-ResNet-20 on CIFAR-10, He et al.'s recipe
    python -m tinyse.train --model resnet20 --epochs 30 --schedule cosine --device gpu
    python -m tinyse.train --train-subset 5000 --epochs 3    # a quick run
    python -m tinyse.train --resume runs/se_resnet20         # continue an interrupted run exactly

The recipe by default is He et al.'s for CIFAR (the SE paper's CIFAR baseline):
batch 128, SGD with momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at
50% and 75% of training, random crops (4-pixel padding) and horizontal flips.

The run folder (``--out``) receives:
    config.json      every setting of the run
    metrics.jsonl    one JSON line per epoch (lr, train / validation / test loss and accuracy, seconds)
    last.npz         the latest state (weights, optimiser, progress); written at every epoch and on Ctrl-C
    best.npz         the weights with the best validation accuracy (needs --val-split > 0)
    curves.png       loss and accuracy against epoch
Everything random is a function of ``--seed`` (initial weights) and of (seed,
epoch, batch) for the data order and augmentation, so ``--resume`` continues
exactly where the run stopped, and on the CPU ends with the same weights as
a run that was never interrupted.
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
from tinyse.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from tinyse.data import BatchLoader, DataError, load_cifar, random_stream, split_validation
from tinyse.memory import keep_freed_memory
from tinyse.models import se_options
from tinyse.nn import manual_seed
from tinyse.nn.se import SQUEEZES
from tinyse.ops.se import GATES
from tinyse.optim import SGD, make_schedule
from tinyse.progress import Progress
from tinyse.tensor import no_grad

SE_OPTIONS = ("reduction", "squeeze", "excitation", "integration", "stages")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tinyse.train", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", default="se_resnet20", help="a name from `python -m tinyse.models` (default se_resnet20)")
    add("--dataset", default="cifar10", choices=("cifar10", "cifar100"))
    add("--epochs", type=int, default=164, help="default 164: He et al.'s 64k iterations at batch 128")
    add("--batch-size", type=int, default=128)
    add("--lr", type=float, default=0.1)
    add("--momentum", type=float, default=0.9)
    add("--nesterov", action="store_true")
    add("--weight-decay", type=float, default=1e-4)
    add("--schedule", default="step", choices=("step", "cosine", "constant"))
    add("--milestones", type=int, nargs="*",
        help="epochs where the step schedule divides the lr by 10 (default 50%% and 75%%)")
    add("--warmup-epochs", type=float, default=0.0)
    add("--device", default="cpu", choices=("cpu", "gpu"))
    add("--data-dir", help="where CIFAR is, or will be downloaded (default: $TINYSE_DATA, else ~/.cache/tinyse/data)")
    add("--seed", type=int, default=0)
    add("--out", help="run folder (default runs/MODEL-DATASET-seedSEED)")
    add("--resume", metavar="DIR", help="continue the run in DIR from its last.npz (its settings are used)")
    add("--val-split", type=int, default=5000, help="training images held out to choose best.npz (default 5000)")
    add("--train-subset", type=int, help="train on this many images only (a quick run)")
    add("--test-subset", type=int, help="evaluate on the first N test images only")
    add("--no-augment", dest="augment", action="store_false", help="no random crops or flips")
    add("--prefetch", action="store_true", help="prepare the next batch in a background thread")
    add("--no-progress", dest="progress", action="store_false", help="no progress bar, only a line per epoch")
    add("--reduction", type=int, help="SE reduction ratio r (default 16)")
    add("--squeeze", choices=SQUEEZES)
    add("--excitation", choices=GATES)
    add("--integration", choices=se_options.INTEGRATIONS)
    add("--stages", type=int, nargs="+", choices=(1, 2, 3), help="the stages that get SE (default all: 1 2 3)")
    return parser.parse_args(argv)


# --- building the pieces ---------------------------------------------------------------------
def build_model(config, num_classes):
    """The model a config names, on its device (initial weights from ``config["seed"]``)."""
    options = {k: config[k] for k in SE_OPTIONS if config.get(k) is not None}
    manual_seed(config["seed"])
    return models.create(config["model"], num_classes=num_classes, **options).to(config["device"])


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
            prefetch=config["prefetch"],
        )

    loaders = {"train": loader(train_x, train_y, True), "test": loader(test_x, test_y, False)}
    if len(val_x):
        loaders["val"] = loader(val_x, val_y, False)
    return data, loaders


def evaluate(model, loader):
    """(mean loss, accuracy) of ``model`` in eval mode over every batch of ``loader``."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with no_grad():
        for images, labels in loader.batches(0):
            logits = model(images)
            loss_sum += F.cross_entropy(logits, labels).item() * len(labels)
            correct += int((logits.data.argmax(axis=1) == labels).sum())
            seen += len(labels)
    model.train()
    return loss_sum / seen, correct / seen


# --- the loop --------------------------------------------------------------------------------
def train_epoch(model, optimizer, schedule, loader, state, stop, progress):
    """Train ``model`` on epoch ``state.epoch`` of ``loader``, from batch ``state.step``; True if the epoch finished.

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
        loss = F.cross_entropy(logits, labels)         # a scalar Tensor: the batch's mean loss
        optimizer.zero_grad()                          # gradients accumulate in .grad: clear the last step's
        loss.backward()                                # .grad of every parameter
        optimizer.step()                               # SGD with momentum and weight decay
        loss_value = totals.add(loss, logits, labels)  # loss sum, correct answers, images seen

        state.step += 1
        totals.seconds = time.perf_counter() - clock
        if not math.isfinite(loss_value):
            progress.close()
            raise FloatingPointError(f"the loss became {loss_value} at epoch {epoch + 1}, step {state.step}")
        progress.update(loss=totals.loss_sum / totals.seen, acc=100 * totals.correct / totals.seen,
                        img_s=totals.seen / totals.seconds)
        if stop.after_step():
            progress.close()
            return False
    progress.close()
    totals.seconds = time.perf_counter() - clock
    return True


@dataclass
class EpochTotals:
    """Sums over the steps of the current epoch so far: its training loss, accuracy and speed."""

    loss_sum: float = 0.0  # sum over the images seen of each image's loss
    correct: int = 0  # images whose largest logit is their label
    seen: int = 0  # images trained on
    seconds: float = 0.0  # time the epoch has run (over a resume: before and after it)

    def add(self, loss, logits, labels):
        """Count one step's batch; return its mean loss as a Python float."""
        loss_value, batch = loss.item(), len(labels)
        self.loss_sum += loss_value * batch
        self.correct += int((logits.data.argmax(axis=1) == labels).sum())
        self.seen += batch
        return loss_value


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
    out = config["out"]
    last = os.path.join(out, "last.npz")
    os.makedirs(out, exist_ok=True)
    data, loaders = build_data(config)
    model = build_model(config, len(data.classes))
    optimizer = SGD(model.parameters(), config["lr"], config["momentum"], config["nesterov"], config["weight_decay"])
    schedule = make_schedule(
        config["schedule"], config["lr"], config["epochs"], config["milestones"], warmup_epochs=config["warmup_epochs"]
    )
    state = RunState()
    if config.get("resumed"):
        weights, optimizer_state, meta = load_checkpoint(last)
        state = RunState.from_dict(meta["state"], last)
        model.load_state_dict(weights)
        optimizer.load_state_dict(optimizer_state)
        print(f"resuming {out} at epoch {state.epoch + 1}, step {state.step}")
    else:
        atomic_write(os.path.join(out, "config.json"), lambda f: f.write(json.dumps(config, indent=2).encode()))
        open(os.path.join(out, "metrics.jsonl"), "w").close()

    def save(name):  # atomic: a crash while writing leaves the previous file whole (tinyse/checkpoint.py)
        save_checkpoint(os.path.join(out, name), model, optimizer, {"state": state.as_dict(), "config": config})

    metrics = None
    with StopRequest(after_steps=stop_after_steps) as stop:
        while state.epoch < config["epochs"]:
            progress = Progress(len(loaders["train"]), f"epoch {state.epoch + 1}/{config['epochs']}",
                                enabled=config["progress"])
            progress.skip_to(state.step)
            try:
                finished = train_epoch(model, optimizer, schedule, loaders["train"], state, stop, progress)
            except FloatingPointError as error:
                raise FloatingPointError(f"{error}; {last} keeps the last good state (lower --lr?)") from None
            if not finished:
                save("last.npz")
                print(f"stopped at epoch {state.epoch + 1}, step {state.step}: saved {last}; "
                      f"continue with: python -m tinyse.train --resume {out}")
                return {"stopped": True, "metrics": metrics}
            metrics = finish_epoch(model, optimizer, loaders, state, out, save)
    return {"stopped": False, "metrics": metrics}


def finish_epoch(model, optimizer, loaders, state, out, save):
    """After an epoch's last step: evaluate, append to metrics.jsonl, save last.npz (and best.npz), plot.

    Returns the epoch's metrics; ``state`` moves on to the next epoch.
    """
    totals = state.epoch_totals
    metrics = {"epoch": state.epoch + 1, "lr": optimizer.lr, "train_loss": totals.loss_sum / totals.seen,
               "train_acc": totals.correct / totals.seen, "seconds": totals.seconds,
               "images_per_s": totals.seen / totals.seconds}
    if "val" in loaders:
        metrics["val_loss"], metrics["val_acc"] = evaluate(model, loaders["val"])
    metrics["test_loss"], metrics["test_acc"] = evaluate(model, loaders["test"])
    state.epoch, state.step, state.epoch_totals = state.epoch + 1, 0, EpochTotals()
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(metrics) + "\n")
    save("last.npz")
    if "val_acc" in metrics and (state.best_val_acc is None or metrics["val_acc"] > state.best_val_acc):
        state.best_val_acc = metrics["val_acc"]
        save("best.npz")
    print(epoch_line(metrics))
    plot_curves(out)
    return metrics


def epoch_line(m):
    val = f"  val {m['val_loss']:.3f} / {100 * m['val_acc']:.2f}%" if "val_acc" in m else ""
    return (
        f"epoch {m['epoch']:3d}  lr {m['lr']:.4g}  train {m['train_loss']:.3f} / {100 * m['train_acc']:.2f}%"
        f"{val}  test {m['test_loss']:.3f} / {100 * m['test_acc']:.2f}%  "
        f"{m['seconds']:.0f} s ({m['images_per_s']:.0f} img/s)"
    )


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(out):
    """DIR/curves.png: loss and accuracy against epoch for train, validation and test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(out)
    epochs = [r["epoch"] for r in rows]
    figure, (loss_axes, acc_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val", "test"):
        if f"{split}_loss" in rows[-1]:
            loss_axes.plot(epochs, [r[f"{split}_loss"] for r in rows], marker=".", label=split)
            acc_axes.plot(epochs, [100 * r[f"{split}_acc"] for r in rows], marker=".", label=split)
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    acc_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for axes in (loss_axes, acc_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(os.path.basename(os.path.normpath(out)))
    figure.tight_layout()
    atomic_write(os.path.join(out, "curves.png"), lambda f: figure.savefig(f, format="png", dpi=100))
    plt.close(figure)


def config_from_args(args):
    """The run's config: the command line, or for --resume the saved config (with --device from the command line)."""
    if args.resume:
        path = os.path.join(args.resume, "config.json")
        if not os.path.exists(os.path.join(args.resume, "last.npz")):
            raise FileNotFoundError(f"nothing to resume in {args.resume}: no last.npz there")
        with open(path) as f:
            config = json.load(f)
        config.update(out=args.resume, resumed=True, device=args.device, progress=args.progress)
        if args.data_dir:
            config["data_dir"] = args.data_dir
        return config
    config = {k: v for k, v in vars(args).items() if k != "resume"}
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
