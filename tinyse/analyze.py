"""The role of excitation (Hu et al., Sec. 7.2): ``python -m tinyse.analyze runs/se_resnet20-cifar10-seed0``.

    python -m tinyse.analyze runs/se_resnet20-cifar10-seed0/best.npz              # 50 test images per class
    python -m tinyse.analyze runs/se_resnet20-cifar10-seed0 --all-blocks --out docs/figures

For the first ``--per-class`` test images of every class, the model runs in
eval mode and every SE block's gates s (N, C) are kept. Per block it reports:
    the class-mean gate over channel index: one curve per class, and the mean over classes
    specificity   how much the gates depend on the class (formula in ``specificity``)
    mean gate and saturation: the fractions of gates above 0.99 and below 0.01
The paper finds gates shared across classes in early blocks, increasingly
class-specific in later ones, and near-saturated in the very last blocks.

Written to ``--out`` (default: the checkpoint's folder):
    excitations.png   one panel per block (the last SE block of each stage, or --all-blocks)
    specificity.png   specificity against block depth, every SE block
    excitations.npz   the numbers behind both (float32; see ``save_results``)
"""
import os
import time

import numpy as np

from tinyse.backend import device_of, to_device
from tinyse.checkpoint import atomic_write
from tinyse.data import DATASETS, load_cifar, normalize
from tinyse.evaluate import checkpoint_parser, load_trained_model, run_on_device
from tinyse.memory import keep_freed_memory
from tinyse.nn import SEBlock
from tinyse.progress import Progress
from tinyse.tensor import Tensor, no_grad

HIGH, LOW = 0.99, 0.01  # a gate above HIGH passes its channel whole, one below LOW shuts it
EPSILON = 1e-8  # added to the within-class variance: a channel that never varies counts 0, not 0 / 0


# --- the computation: a model and arrays in, arrays out ----------------------------------------------
def se_blocks(model):
    """[(dotted name, SEBlock)] of every SE block of ``model``, in ``named_modules`` order (input to output)."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, SEBlock)]


def last_of_each_stage(blocks):
    """The names of the last SE block of every stage, given [(name, SEBlock)] in network order.

    A stage is a run of consecutive blocks gating the same number of channels: in the
    CIFAR ResNets and the Inception net the width doubles exactly where the resolution
    halves, so these are layer1 / layer2 / layer3 (stages 1, 2, 3 of the Inception net).
    """
    names = []
    for i, (name, block) in enumerate(blocks):
        if i + 1 == len(blocks) or blocks[i + 1][1].channels != block.channels:
            names.append(name)
    return names


def first_per_class(labels, per_class, num_classes):
    """Indices of the first ``per_class`` images of every class (fewer where a class has fewer), sorted.

    labels (N,) ints -> (M,) int64; deterministic, so every run looks at the same images.
    """
    chosen = [np.flatnonzero(labels == k)[:per_class] for k in range(num_classes)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def run_model(model, images, batch_size=256, progress=False):
    """Logits and SE gates of ``images`` in eval mode, without building a graph.

    images (N, 3, H, W) float32, normalised, NumPy (moved to the model's device batch by batch).
    Returns (logits (N, K), {block name: gates (N, C)}), NumPy float arrays.
    """
    if len(images) == 0:
        raise ValueError("no images to run the model on")
    blocks = se_blocks(model)
    device = device_of(model.parameters()[0].data)
    model.eval()
    logits, gates = [], {name: [] for name, _ in blocks}
    starts = range(0, len(images), batch_size)
    bar = Progress(len(starts), "collecting SE gates", enabled=progress)
    with no_grad():
        for start in starts:
            x = Tensor(to_device(images[start : start + batch_size], device))
            logits.append(to_device(model(x).data, "cpu"))
            for name, block in blocks:
                gates[name].append(to_device(block.gates, "cpu"))  # (B, C), set by this forward pass
            bar.update(images=min(start + batch_size, len(images)))
    bar.close()
    return np.concatenate(logits), {name: np.concatenate(parts) for name, parts in gates.items()}


def collect_gates(model, images, batch_size=256, progress=False):
    """{SE block name: gates (N, C)} of ``images`` (N, 3, H, W), normalised; see ``run_model``."""
    return run_model(model, images, batch_size, progress)[1]


def per_class(gates, labels, num_classes, statistic):
    """``statistic(gates of class k, axis=0)`` for each class k: gates (N, C), labels (N,) -> (num_classes, C).

    float64; a class without images gets NaN.
    """
    gates = np.asarray(gates, dtype=np.float64)
    result = np.full((num_classes, gates.shape[1]), np.nan)
    for k in range(num_classes):
        if (labels == k).any():
            result[k] = statistic(gates[labels == k], axis=0)
    return result


def class_means(gates, labels, num_classes):
    """The average gate of each class: (num_classes, C)."""
    return per_class(gates, labels, num_classes, np.mean)


def class_variances(gates, labels, num_classes):
    """The variance of the gate within each class (ddof 0; 0 for a class of one image): (num_classes, C)."""
    return per_class(gates, labels, num_classes, np.var)


def specificity(gates, labels, num_classes):
    """How much a block's gates depend on the class: a between / within variance ratio, averaged over channels.

    With m_k[c] the mean gate of channel c over the images of class k, v_k[c] the
    variance of that gate within class k (ddof 0), and the K classes that have images:
        between[c] = (1 / K) sum_k (m_k[c] - mean_k m_k[c])^2     spread of the class means
        within[c]  = (1 / K) sum_k v_k[c]                          spread inside a class
        specificity = (1 / C) sum_c between[c] / (within[c] + EPSILON)
    0 when every class has the same mean gate (the gates ignore the class); large when
    the class decides the gate. With n images per class and no class dependence at all,
    sampling noise alone gives about (K - 1) / (K (n - 1)) (see ``chance_specificity``).
    EPSILON (1e-8) keeps a channel whose gate never varies (saturated at 1) at 0.

    gates (N, C), labels (N,) ints -> a float.
    """
    present = np.unique(labels)
    means = class_means(gates, labels, num_classes)[present]  # (K, C)
    within = class_variances(gates, labels, num_classes)[present].mean(axis=0)  # (C,)
    between = means.var(axis=0)  # (C,)
    return float(np.mean(between / (within + EPSILON)))


def chance_specificity(counts):
    """The specificity expected when gates do not depend on the class, for ``counts`` images per class.

    E[between] = (K - 1) / K * sigma^2 / n and E[within] = (n - 1) / n * sigma^2 for K classes
    of n images each; their ratio is (K - 1) / (K (n - 1)). Unequal classes use the mean n.
    """
    counts = np.asarray(counts)[np.asarray(counts) > 0]
    k, n = len(counts), counts.mean()
    return float((k - 1) / (k * (n - 1))) if k > 1 and n > 1 else float("nan")


def block_statistics(gates, labels, num_classes):
    """Everything reported for one block: gates (N, C), labels (N,) -> dict of arrays and numbers."""
    return {
        "class_means": class_means(gates, labels, num_classes),  # (classes, C)
        "class_variances": class_variances(gates, labels, num_classes),  # (classes, C)
        "specificity": specificity(gates, labels, num_classes),
        "mean_gate": float(np.mean(gates)),
        "saturated_high": float(np.mean(gates > HIGH)),
        "saturated_low": float(np.mean(gates < LOW)),
    }


def analyze(model, images, labels, num_classes, batch_size=256, progress=False):
    """Run the model on ``images`` and summarise every SE block.

    images (N, 3, H, W) float32 normalised, labels (N,) ints.
    Returns {"blocks": [name, ...] in network order, "stats": {name: ``block_statistics``},
    "channels": [C, ...], "stage_ends": names of the last block of each stage, "logits": (N, K)}.
    """
    blocks = se_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no SE blocks: analyze an se_ model (python -m tinyse.models)")
    logits, gates = run_model(model, images, batch_size, progress)
    return {
        "blocks": [name for name, _ in blocks],
        "channels": [block.channels for _, block in blocks],
        "stage_ends": last_of_each_stage(blocks),
        "stats": {name: block_statistics(gates[name], labels, num_classes) for name, _ in blocks},
        "logits": logits,
    }


# --- output ------------------------------------------------------------------------------------------
def format_table(result, plotted=()):
    """One row per SE block: depth, name, channels, mean gate, specificity, saturated fractions."""
    width = max(len("block"), *(len(name) for name in result["blocks"]))
    header = f"{'depth':>5}  {'block'.ljust(width)}  {'C':>4}  {'mean gate':>9}  {'specificity':>11}  " \
             f"{'> 0.99':>7}  {'< 0.01':>7}"
    lines = [header]
    for depth, (name, channels) in enumerate(zip(result["blocks"], result["channels"]), start=1):
        s = result["stats"][name]
        mark = "  *" if name in plotted else ""
        lines.append(
            f"{depth:>5}  {name.ljust(width)}  {channels:>4}  {s['mean_gate']:>9.3f}  {s['specificity']:>11.3f}  "
            f"{100 * s['saturated_high']:>6.1f}%  {100 * s['saturated_low']:>6.1f}%{mark}"
        )
    return "\n".join(lines)


def save_results(path, result, classes, counts):
    """``excitations.npz``: plain arrays (no pickle), float32.

        block_names (B,) str, depth (B,) int (1 = nearest the input), channels (B,) int,
        specificity, mean_gate, saturated_high, saturated_low (B,) float32,
        stage_ends (S,) str, class_names (classes,) str, counts (classes,) images per class,
        class_means/<block> (classes, C)      the average gate of each class
        within_variance/<block> (classes, C)  the variance of the gate within each class
        mean/<block> (C,)                     the average of the class means
    """
    names = result["blocks"]
    stats = [result["stats"][name] for name in names]
    arrays = {
        "block_names": np.array(names),
        "depth": np.arange(1, len(names) + 1),
        "channels": np.array(result["channels"]),
        "stage_ends": np.array(result["stage_ends"]),
        "class_names": np.array(classes),
        "counts": np.asarray(counts),
    }
    for key in ("specificity", "mean_gate", "saturated_high", "saturated_low"):
        arrays[key] = np.array([s[key] for s in stats], dtype=np.float32)
    for name, s in zip(names, stats):
        arrays[f"class_means/{name}"] = s["class_means"].astype(np.float32)
        arrays[f"within_variance/{name}"] = s["class_variances"].astype(np.float32)
        arrays[f"mean/{name}"] = np.nanmean(s["class_means"], axis=0).astype(np.float32)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _figure(**options):
    """A matplotlib Figure drawn straight to a file: no pyplot, so no backend is switched (a notebook's stay)."""
    from matplotlib.figure import Figure

    return Figure(**options)


def plot_excitations(path, result, names, classes, title=""):
    """One panel per block in ``names``: the class-mean gate against channel index, one curve per class,
    and the mean over classes in thick black. Up to 20 classes get colours and a legend."""
    import matplotlib

    columns = min(len(names), 3)
    rows = -(-len(names) // columns)
    figure = _figure()
    axes = figure.subplots(rows, columns, squeeze=False)
    few = len(classes) <= 20
    colours = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"].colors if few else None
    for ax, name in zip(axes.flat, names):
        s = result["stats"][name]
        means = s["class_means"]  # (classes, C)
        channels = np.arange(means.shape[1])
        for k, label in enumerate(classes):
            if few:
                ax.plot(channels, means[k], color=colours[k], lw=1.1, alpha=0.85, label=label)
            else:
                ax.plot(channels, means[k], color="tab:blue", lw=0.5, alpha=0.25)
        ax.plot(channels, np.nanmean(means, axis=0), color="black", lw=2.6, label="all classes")
        ax.set_title(f"{name}  ({means.shape[1]} channels, specificity {s['specificity']:.2f})", fontsize=10)
        ax.set(xlabel="channel index", ylabel="mean gate (excitation)", xlim=(-0.5, means.shape[1] - 0.5))
        if np.nanmin(means) >= 0 and np.nanmax(means) <= 1:  # sigmoid gates: one scale for every panel
            ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if not few:
        handles, labels = handles[-1:], [f"all classes (thin: each of {len(classes)} classes)"]
    ncol = min(len(labels), 4 * columns - 1)
    legend_height = 0.3 * -(-len(labels) // ncol) + 0.2  # inches: a line per row of the legend
    figure.set_size_inches(5 * columns, 3.6 * rows + legend_height + 0.4)
    figure.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    figure.suptitle(title)
    figure.tight_layout(rect=(0, legend_height / figure.get_figheight(), 1, 1))
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=110))


def plot_specificity(path, result, chance, title=""):
    """Specificity of every SE block against its depth (1 = nearest the input), stages divided by dotted lines."""
    names = result["blocks"]
    depth = np.arange(1, len(names) + 1)
    values = [result["stats"][name]["specificity"] for name in names]
    figure = _figure(figsize=(max(6.0, 0.45 * len(names) + 3), 4.2))
    ax = figure.subplots()
    ax.plot(depth, values, marker="o", color="tab:red", label="specificity (between / within class variance)")
    if np.isfinite(chance):
        ax.axhline(chance, color="gray", ls="--", lw=1, label=f"expected without class dependence ({chance:.3f})")
    for name in result["stage_ends"][:-1]:
        ax.axvline(names.index(name) + 1.5, color="gray", ls=":", lw=1)
    if min(values) > 0 and max(values) / min(values) > 30:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_xticks(depth, names, rotation=45 if len(names) <= 20 else 90, ha="right", fontsize=8)
    ax.set(xlabel="SE block (input -> output)", ylabel="class specificity of the gates", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=110))


# --- the command line --------------------------------------------------------------------------------
def find_checkpoint(path):
    """``path`` itself if it is a file; in a run folder its best.npz, else its last.npz."""
    if os.path.isdir(path):
        for name in ("best.npz", "last.npz"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise FileNotFoundError(f"no best.npz or last.npz in {path}: is it a run folder of python -m tinyse.train?")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def analyze_checkpoint(path, out=None, per_class=50, all_blocks=False, data_dir=None, device="cpu", batch_size=256):
    """Load a checkpoint, analyse its SE gates on test images, write the figures and numbers, print the table."""
    started = time.perf_counter()
    path = find_checkpoint(path)
    if per_class < 1:
        raise ValueError(f"--per-class must be at least 1, got {per_class}")
    model, config, meta = load_trained_model(path, device)
    num_classes = DATASETS[config["dataset"]]["num_classes"]
    if not se_blocks(model):
        raise ValueError(f"{path} holds a {config['model']}, which has no SE blocks: analyze an se_ model")
    data = load_cifar(config["dataset"], root=data_dir or config.get("data_dir"))
    chosen = first_per_class(data.test_labels, per_class, num_classes)
    images = normalize(data.test_images[chosen], data.mean, data.std)
    labels = data.test_labels[chosen]
    counts = np.bincount(labels, minlength=num_classes)
    result = analyze(model, images, labels, num_classes, batch_size, progress=True)
    plotted = result["blocks"] if all_blocks else result["stage_ends"]

    out = out or os.path.dirname(os.path.abspath(path))
    os.makedirs(out, exist_ok=True)
    run = f"{config['model']} on {config['dataset']}, epoch {meta['state']['epoch']}"
    chance = chance_specificity(counts)
    plot_excitations(os.path.join(out, "excitations.png"), result, plotted, data.classes,
                     f"SE gates averaged per class: {run}, {len(labels)} test images")
    plot_specificity(os.path.join(out, "specificity.png"), result, chance, f"class specificity of SE gates: {run}")
    save_results(os.path.join(out, "excitations.npz"), result, data.classes, counts)

    accuracy = float((result["logits"].argmax(axis=1) == labels).mean())
    print(f"{path}: {run}")
    print(f"{len(labels)} test images (the first {per_class} of each class), "
          f"top-1 accuracy on them {100 * accuracy:.1f}%")
    print(format_table(result, plotted))
    print(f"* plotted; specificity expected without class dependence: {chance:.3f}; "
          f"saturated: gates > {HIGH} and < {LOW}")
    print(f"wrote excitations.png, specificity.png, excitations.npz to {out} "
          f"({time.perf_counter() - started:.1f} s)")
    return result


def main(argv=None):
    keep_freed_memory()  # a process-wide malloc setting, so the tool asks for it (tinyse/memory.py)
    parser = checkpoint_parser("python -m tinyse.analyze", __doc__.split("\n\n")[0],
                               "a best.npz / last.npz of python -m tinyse.train, or its run folder")
    parser.add_argument("--per-class", type=int, default=50, help="test images per class (default 50, as the paper)")
    parser.add_argument("--all-blocks", action="store_true", help="a panel for every SE block, not one per stage")
    parser.add_argument("--out", help="folder for the figures and numbers (default: the checkpoint's folder)")
    args = parser.parse_args(argv)
    return run_on_device(args.device, lambda: analyze_checkpoint(
        args.checkpoint, args.out, args.per_class, args.all_blocks, args.data_dir, args.device, args.batch_size))


if __name__ == "__main__":
    main()
