"""tinyse.train's recipe, trained by PyTorch: ``python -m tinyse.bench.train_torch``.

    python -m tinyse.bench.train_torch --recipe fast --seed 0    # the twin of `tinyse.train --recipe fast`
    python -m tinyse.bench.train_torch --recipe fast --epochs 1 --out runs/torch-check

It takes ``tinyse.train``'s flags and resolves them with the same recipes, so a run here and
``python -m tinyse.train`` with the same flags differ in the library only:

    model           the PyTorch twin (``tinyse.testing.twins.twin_for_name``) holding the initial weights of
                    tinyse's ``build_model`` for the seed, copied in (``load_into_twin``)
    data            tinyse's ``BatchLoader``: the same images, order, crops and flips, batch by batch
                    (``torch.from_numpy``)
    schedule        the same function (``tinyse.optim.make_schedule``), set on every step
    optimiser       ``torch.optim.SGD`` with the groups of ``tinyse.optim.param_groups`` and Nesterov as set;
                    with ``--muon-lr`` the conv filters by ``TorchMuon`` (``tinyse.optim.Muon``'s update)
    loss            ``torch.nn.functional.cross_entropy`` with the same ``label_smoothing``
    moving average  ``TorchEMA``: the update of ``tinyse.optim.ModelEMA`` (same ``ema_decay``), on torch tensors
    evaluation      single crop and flip TTA, the model's weights and the average's, every ``--eval-every`` epochs

The run folder gets config.json (``"library": "torch"``), metrics.jsonl with tinyse.train's keys
(so ``tinyse.experiments`` reads both), curves.png, and at the end last.npz in tinyse's checkpoint
format (the twin's state_dict has tinyse's keys): ``python -m tinyse.evaluate`` scores it with
tinyse. A stopped run is not resumed: it starts again (it is a measurement, a few minutes long).

The threads: $TINYSE_NUM_THREADS, else every core, as tinyse (``torch.set_num_threads``). torch is
imported here only, when a run starts.
"""
import copy
import json
import os
import sys
import time

import numpy as np

from tinyse import train as train_module
from tinyse.backend import module_for_device
from tinyse.bench.machine import torch_device
from tinyse.checkpoint import atomic_write, save_checkpoint
from tinyse.data import DATASETS, DataError
from tinyse.memory import keep_freed_memory
from tinyse.optim import NEWTON_SCHULZ_COEFFICIENTS, NEWTON_SCHULZ_STEPS, ema_decay, make_schedule, muon_split
from tinyse.progress import Progress


class TorchMuon:
    """``tinyse.optim.Muon`` for torch tensors: the same update (momentum, Nesterov, each weight's scale held at
    sqrt(C_out), the Newton-Schulz orthogonalisation with the same coefficients), written with torch's ops."""

    def __init__(self, params, lr, momentum, nesterov):
        self.params, self.lr, self.momentum, self.nesterov = list(params), float(lr), float(momentum), nesterov
        self.buffers = [None] * len(self.params)

    def step(self):
        import torch

        a, b, c = NEWTON_SCHULZ_COEFFICIENTS
        with torch.no_grad():
            for index, p in enumerate(self.params):
                if p.grad is None:
                    continue
                g = p.grad
                if self.momentum:
                    if self.buffers[index] is None:
                        self.buffers[index] = g.clone()
                    else:
                        self.buffers[index].mul_(self.momentum).add_(g)
                    g = g + self.momentum * self.buffers[index] if self.nesterov else self.buffers[index]
                rows = p.shape[0]
                p.mul_(rows**0.5 / p.norm())
                x = g.reshape(rows, -1)
                tall = x.shape[0] > x.shape[1]
                x = x.T if tall else x
                x = x / (x.norm() + 1e-7)
                for _ in range(NEWTON_SCHULZ_STEPS):
                    gram = x @ x.T
                    x = a * x + (b * gram + c * (gram @ gram)) @ x
                p.sub_(self.lr * (x.T if tall else x).reshape(p.shape))


class TorchEMA:
    """``tinyse.optim.ModelEMA`` for a torch model: the same update (parameters and floating buffers averaged with
    ``ema_decay``'s bias-corrected weight, integer buffers copied), the same state_dict layout (NumPy arrays)."""

    def __init__(self, model, decay):
        self.decay, self.steps = float(decay), 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def update(self, model):
        import torch

        self.steps += 1
        beta = ema_decay(self.decay, self.steps)
        with torch.no_grad():
            current = model.state_dict()
            for key, average in self.model.state_dict().items():
                if average.dtype.is_floating_point:
                    average.mul_(beta).add_(current[key], alpha=1.0 - beta)
                else:
                    average.copy_(current[key])

    def state_dict(self):
        state = {"decay": self.decay, "steps": self.steps}
        state.update({f"model/{k}": v.detach().cpu().numpy() for k, v in self.model.state_dict().items()})
        return state


def build_twin(config, num_classes, target):
    """The PyTorch twin of the config's model, holding tinyse's initial weights for the config's seed (float32)."""
    from tinyse.testing.twins import load_into_twin, twin_for_name

    if config.get("whiten_stem"):
        raise ValueError("--whiten-stem: the PyTorch twin starts from tinyse's Kaiming-normal stem only")
    options = [k for k in train_module.SE_OPTIONS if config.get(k) is not None]
    if options:
        raise ValueError(f"the PyTorch twins have the paper's SE options only; this run sets {', '.join(options)}")
    try:
        twin = twin_for_name(config["model"], num_classes)
    except KeyError:
        raise ValueError(f"no PyTorch twin for {config['model']!r}: only the CIFAR ResNets (resnet20/32/44/56/110, "
                         "resnet164, resnext29_4x8d, each also with se_)") from None
    model = train_module.build_model(dict(config, device="cpu"), num_classes)
    return load_into_twin(model, twin, np.float32).to(target)


def evaluate(model, loader, target, tta=False):
    """tinyse.train's ``evaluate`` for a torch model: {"loss", "acc"} and, with ``tta``, "acc_flip_tta"."""
    import torch
    import torch.nn.functional as TF

    was_training = model.training
    model.eval()
    loss_sum, correct, correct_tta, seen = 0.0, 0, 0, 0
    with torch.no_grad():
        for images, labels in loader.batches(0):
            x, y = torch.from_numpy(images.data).to(target), torch.from_numpy(labels).to(target)
            logits = model(x)
            loss_sum += TF.cross_entropy(logits, y).item() * len(labels)
            correct += int((logits.argmax(dim=1) == y).sum())
            if tta:
                mean_logits = (logits + model(x.flip(3))) / 2
                correct_tta += int((mean_logits.argmax(dim=1) == y).sum())
            seen += len(labels)
    model.train(was_training)
    result = {"loss": loss_sum / seen, "acc": correct / seen}
    if tta:
        result["acc_flip_tta"] = correct_tta / seen
    return result


def evaluate_splits(config, model, loaders, ema, target):
    """The keys of tinyse.train's ``evaluate_splits``, from the torch model and its average."""
    metrics = {}
    for split in ("val", "test"):
        if split not in loaders:
            continue
        final = evaluate(ema.model if ema is not None else model, loaders[split], target, config["tta"] == "flip")
        metrics[f"{split}_loss"], metrics[f"{split}_acc"] = final["loss"], final["acc"]
        if "acc_flip_tta" in final:
            metrics[f"{split}_acc_flip_tta"] = final["acc_flip_tta"]
        if ema is not None:
            raw = evaluate(model, loaders[split], target)
            metrics[f"raw_{split}_loss"], metrics[f"raw_{split}_acc"] = raw["loss"], raw["acc"]
    return metrics


def train_torch(config, stop_after_steps=None):
    """Train the config's recipe with PyTorch; returns {"stopped", "metrics"} as ``tinyse.train.train`` does.

    torch runs ``config["threads"]`` threads meanwhile (its setting is restored after: this may run inside
    another program, the tests)."""
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.get("threads") or previous_threads)
    try:
        return _train_torch(config, stop_after_steps)
    finally:
        torch.set_num_threads(previous_threads)


def _train_torch(config, stop_after_steps):
    import torch
    import torch.nn.functional as TF

    config = {**train_module.BEFORE_RECIPES, **config, "library": "torch"}
    if config.get("resumed"):
        raise ValueError("a PyTorch run does not resume: run it again without --resume (it starts over)")
    torch.manual_seed(config["seed"])  # nothing here draws from torch; set for anything that would
    target = torch_device(config["device"])
    out = config["out"]
    os.makedirs(out, exist_ok=True)
    model = build_twin(config, DATASETS[config["dataset"]]["num_classes"], target)  # before the data: fails sooner
    _, loaders = train_module.build_data(dict(config, device="cpu"))  # batches move to ``target`` below
    filters, groups = muon_split(model.named_parameters(), config["muon_lr"], config["weight_decay"],
                                 config["decay_norm_and_bias"])  # as tinyse.train.build_optimizer
    optimizer = torch.optim.SGD(groups, lr=config["lr"], momentum=config["momentum"], nesterov=config["nesterov"])
    muon = TorchMuon(filters, config["muon_lr"], config["momentum"], config["nesterov"]) if filters else None
    schedule = make_schedule(config["schedule"], config["lr"], config["epochs"], config["milestones"],
                             warmup_epochs=config["warmup_epochs"], div_factor=config["div_factor"])
    ema = TorchEMA(model, config["ema"]) if config["ema"] else None
    print(f"PyTorch {torch.__version__}, {config['threads']} threads, {target}")
    print("\n".join(train_module.describe_recipe(config)), flush=True)
    atomic_write(os.path.join(out, "config.json"), lambda f: f.write(json.dumps(config, indent=2).encode()))
    open(os.path.join(out, "metrics.jsonl"), "w").close()

    state, metrics = train_module.RunState(), None
    train_loader, steps_per_epoch = loaders["train"], len(loaders["train"])
    with train_module.StopRequest(after_steps=stop_after_steps) as stop:
        while state.epoch < config["epochs"]:
            epoch, totals = state.epoch, state.epoch_totals
            progress = Progress(steps_per_epoch, f"torch epoch {epoch + 1}/{config['epochs']}",
                                enabled=config["progress"], run=train_module.run_timing(
                                    config, train_module.read_metrics(out), state, steps_per_epoch))
            model.train()
            clock = time.perf_counter()
            for images, labels in train_loader.batches(epoch):
                lr = schedule(epoch + state.step / steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if muon is not None:
                    muon.lr = lr * config["muon_lr"] / config["lr"]  # tinyse.optim.MuonWithSGD's one schedule
                x, y = torch.from_numpy(images.data).to(target), torch.from_numpy(labels).to(target)
                logits = model(x)
                loss = TF.cross_entropy(logits, y, label_smoothing=config["label_smoothing"])
                model.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if muon is not None:
                    muon.step()
                if ema is not None:
                    ema.update(model)
                train_module.record_step(state, progress, loss.detach().double(), logits.detach(), y, clock,
                                         steps_per_epoch)
                if stop.after_step():
                    progress.close()
                    print(f"stopped at epoch {epoch + 1}, step {state.step}: a PyTorch run starts over when run again")
                    return {"stopped": True, "metrics": metrics}
            progress.close()
            if config["device"] == "gpu":
                torch.cuda.synchronize()
            totals.seconds = time.perf_counter() - clock
            metrics = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                       "train_loss": totals.loss_sum / totals.seen, "train_acc": totals.correct / totals.seen,
                       "seconds": totals.seconds, "images_per_s": totals.seen / totals.seconds}
            if train_module.evaluation_due(config, epoch + 1):
                started = time.perf_counter()
                metrics.update(evaluate_splits(config, model, loaders, ema, target))
                metrics["eval_seconds"] = time.perf_counter() - started
            state.epoch, state.step, state.epoch_totals = epoch + 1, 0, train_module.EpochTotals()
            with open(os.path.join(out, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(metrics) + "\n")
            print(train_module.epoch_line(metrics, *train_module.run_clock(config, train_module.read_metrics(out))),
                  flush=True)
            train_module.plot_curves(out)
    weights = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    save_checkpoint(os.path.join(out, "last.npz"), weights, None, {"state": state.as_dict(), "config": config}, ema)
    return {"stopped": False, "metrics": metrics}


def config_from_args(args):
    """tinyse.train's config for the same flags, marked ``"library": "torch"`` (default folder runs/torch-...)."""
    if args.resume:
        raise ValueError("a PyTorch run does not resume: run it again without --resume (it starts over)")
    config = train_module.config_from_args(args)
    config["library"] = "torch"
    if not args.out:
        config["out"] = os.path.join("runs", f"torch-{args.model}-{args.dataset}-seed{args.seed}")
    return config


def main(argv=None):
    keep_freed_memory()  # as tinyse.train: the data loader's arrays are NumPy's (tinyse/memory.py)
    args = train_module.parse_args(argv, prog="python -m tinyse.bench.train_torch")
    try:
        module_for_device("cpu")
        torch_device(args.device)  # a clear error now if torch sees no GPU
        result = train_torch(config_from_args(args))
    except (DataError, FileNotFoundError, FloatingPointError, RuntimeError, ValueError) as error:
        sys.exit(f"error: {error}")
    if result["stopped"]:
        sys.exit(130)
    return result


if __name__ == "__main__":
    main()
