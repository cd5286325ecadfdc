"""Test accuracy of a checkpoint: ``python -m tinyse.evaluate runs/se_resnet20-cifar10-seed0/best.npz``.

    python -m tinyse.evaluate runs/fast/last.npz --tta flip    # also the flip test-time augmentation
    python -m tinyse.evaluate runs/fast/last.npz --raw         # the weights SGD trained, not their average

Prints top-1 accuracy (and top-5 for CIFAR-100) on the whole test set, and a
table of accuracy per class. A run trained with ``--ema`` is evaluated with its
moving average of the weights, the run's weights (its ``test_acc``), unless ``--raw``.
"""
import argparse
import sys

import numpy as np

from tinyse.backend import module_for_device, to_device
from tinyse.checkpoint import load_checkpoint, load_ema
from tinyse.data import DATASETS, BatchLoader, DataError, load_cifar
from tinyse.memory import keep_freed_memory
from tinyse.tensor import no_grad
from tinyse.train import build_model, flip_images


def predict(model, loader, tta=False):
    """Logits of every test image as one NumPy array (N, classes), in loader order; with ``tta`` the mean of the
    logits of each image and its mirror image (the flip test-time augmentation of ``tinyse.train``)."""
    model.eval()
    outputs = []
    with no_grad():
        for images, _ in loader.batches(0):
            logits = model(images).data
            if tta:
                logits = (logits + model(flip_images(images)).data) / 2
            outputs.append(to_device(logits, "cpu"))
    return np.concatenate(outputs)


def accuracy_report(logits, labels, classes):
    """top-1, top-5 and per-class top-1 accuracy from logits (N, K) and labels (N,)."""
    ranked = np.argsort(-logits, axis=1)
    top1 = ranked[:, 0] == labels
    top5 = (ranked[:, :5] == labels[:, None]).any(axis=1)
    per_class = {name: float(top1[labels == k].mean()) for k, name in enumerate(classes) if (labels == k).any()}
    return {"top1": float(top1.mean()), "top5": float(top5.mean()), "per_class": per_class, "images": len(labels)}


def format_report(report, dataset):
    lines = [f"test images: {report['images']}", f"top-1 accuracy: {100 * report['top1']:.2f}%"]
    if "top1_flip_tta" in report:
        lines.append(f"top-1 accuracy, flip TTA: {100 * report['top1_flip_tta']:.2f}% (mean logits of the image "
                     "and its mirror image)")
    if dataset == "cifar100":
        lines.append(f"top-5 accuracy: {100 * report['top5']:.2f}%")
    width = max(len(name) for name in report["per_class"])
    lines += ["", f"{'class'.ljust(width)}  accuracy"]
    lines += [f"{name.ljust(width)}  {100 * acc:6.2f}%" for name, acc in report["per_class"].items()]
    return "\n".join(lines)


def load_trained_model(path, device="cpu", raw=False):
    """(model with the checkpoint's weights on ``device``, the run's config, the checkpoint's meta).

    The weights are the run's: its moving average when it kept one (``--ema``), unless ``raw``, which
    takes the weights SGD trained. ``meta["weights"]`` says which: "ema" or "raw" (a weights-only file
    exported by the experiments holds the run's weights as its model and says which in its meta).
    """
    weights, _, meta = load_checkpoint(path)
    ema = None if raw else load_ema(path)
    if ema is not None:
        weights = {k[len("model/"):]: v for k, v in ema.items() if k.startswith("model/")}
    meta = dict(meta, weights="ema" if ema is not None else meta.get("weights", "raw"))
    config = dict(meta["config"], device=device)
    model = build_model(config, DATASETS[config["dataset"]]["num_classes"])
    model.load_state_dict(weights)
    return model, config, meta


def evaluate_checkpoint(path, data_dir=None, device="cpu", batch_size=256, raw=False, tta="none"):
    """Print and return the test accuracy report of a checkpoint (with "top1_flip_tta" for ``tta`` "flip")."""
    model, config, meta = load_trained_model(path, device, raw)
    data = load_cifar(config["dataset"], root=data_dir or config.get("data_dir"))
    loader = BatchLoader(data.test_images, data.test_labels, batch_size, data.mean, data.std, device=device)
    report = accuracy_report(predict(model, loader), data.test_labels, data.classes)
    if tta == "flip":
        flipped = accuracy_report(predict(model, loader, tta=True), data.test_labels, data.classes)
        report["top1_flip_tta"] = flipped["top1"]
    which = {"ema": "the moving average of the weights (EMA)", "raw": "the weights SGD trained"}[meta["weights"]]
    print(f"{path}: {config['model']} on {config['dataset']}, after epoch {meta['state']['epoch']}; {which}")
    print(format_report(report, config["dataset"]))
    return report


def checkpoint_parser(prog, description, checkpoint_help):
    """The options every tool that reads a trained checkpoint shares: the checkpoint, --data-dir, --device,
    --batch-size (evaluate, analyze)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("checkpoint", help=checkpoint_help)
    parser.add_argument("--data-dir", help="where CIFAR is (default: the run's setting, $TINYSE_DATA, or the cache)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--batch-size", type=int, default=256)
    return parser


def run_on_device(device, work):
    """``work()`` once ``device`` is known to be usable; a missing file, dataset or GPU exits with its message."""
    try:
        module_for_device(device)
        return work()
    except (DataError, FileNotFoundError, RuntimeError, ValueError) as error:
        sys.exit(f"error: {error}")


def main(argv=None):
    keep_freed_memory()  # a process-wide malloc setting, so the tool asks for it (tinyse/memory.py)
    parser = checkpoint_parser("python -m tinyse.evaluate", __doc__.split("\n\n")[0],
                               "a last.npz, best.npz or weights.npz written by python -m tinyse.train or the "
                               "experiments")
    parser.add_argument("--raw", action="store_true",
                        help="evaluate the weights SGD trained, not their moving average (runs with --ema)")
    parser.add_argument("--tta", choices=("none", "flip"), default="none",
                        help="flip: also the accuracy of the mean logits of each image and its mirror image")
    args = parser.parse_args(argv)
    return run_on_device(args.device, lambda: evaluate_checkpoint(args.checkpoint, args.data_dir, args.device,
                                                                  args.batch_size, args.raw, args.tta))


if __name__ == "__main__":
    main()
