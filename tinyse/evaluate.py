"""Test accuracy of a checkpoint: ``python -m tinyse.evaluate runs/se_resnet20-cifar10-seed0/best.npz``.

Prints top-1 accuracy (and top-5 for CIFAR-100) on the whole test set, and a
table of accuracy per class.
"""
import argparse
import sys

import numpy as np

from tinyse.backend import module_for_device, to_device
from tinyse.checkpoint import load_checkpoint
from tinyse.data import DATASETS, BatchLoader, DataError, load_cifar
from tinyse.memory import keep_freed_memory
from tinyse.tensor import no_grad
from tinyse.train import build_model


def predict(model, loader):
    """Logits of every test image as one NumPy array (N, classes), in loader order."""
    model.eval()
    outputs = []
    with no_grad():
        for images, _ in loader.batches(0):
            outputs.append(to_device(model(images).data, "cpu"))
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
    if dataset == "cifar100":
        lines.append(f"top-5 accuracy: {100 * report['top5']:.2f}%")
    width = max(len(name) for name in report["per_class"])
    lines += ["", f"{'class'.ljust(width)}  accuracy"]
    lines += [f"{name.ljust(width)}  {100 * acc:6.2f}%" for name, acc in report["per_class"].items()]
    return "\n".join(lines)


def load_trained_model(path, device="cpu"):
    """(model with the checkpoint's weights on ``device``, the run's config, the checkpoint's meta)."""
    weights, _, meta = load_checkpoint(path)
    config = dict(meta["config"], device=device)
    model = build_model(config, DATASETS[config["dataset"]]["num_classes"])
    model.load_state_dict(weights)
    return model, config, meta


def evaluate_checkpoint(path, data_dir=None, device="cpu", batch_size=256):
    model, config, meta = load_trained_model(path, device)
    data = load_cifar(config["dataset"], root=data_dir or config.get("data_dir"))
    loader = BatchLoader(data.test_images, data.test_labels, batch_size, data.mean, data.std, device=device)
    report = accuracy_report(predict(model, loader), data.test_labels, data.classes)
    print(f"{path}: {config['model']} on {config['dataset']}, after epoch {meta['state']['epoch']}")
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
                               "a last.npz or best.npz written by python -m tinyse.train")
    args = parser.parse_args(argv)
    return run_on_device(args.device,
                         lambda: evaluate_checkpoint(args.checkpoint, args.data_dir, args.device, args.batch_size))


if __name__ == "__main__":
    main()
