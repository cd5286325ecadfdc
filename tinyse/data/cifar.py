"""CIFAR-10 and CIFAR-100 from the official python archives: the file format, and where to find it.

File format (both datasets): each file is a pickle of a dict; ``data`` is a uint8
array (N, 3072) whose row holds one image as its R, G and B planes of 32x32 pixels,
row by row, so ``data.reshape(N, 3, 32, 32)`` is already NCHW. The labels are a list
of N integers under ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100), and a meta
file names the classes. The files are:

    CIFAR-10    cifar-10-batches-py/data_batch_1 ... data_batch_5 (10,000 images each), test_batch (10,000),
                batches.meta (label_names)
    CIFAR-100   cifar-100-python/train (50,000), test (10,000), meta (fine_label_names)

``load_cifar(name, root)`` looks in ``root`` (``data_dir``: the argument, else
$TINYSE_DATA, else ~/.cache/tinyse/data) and takes the first that applies:

    1. the extracted folder, root/cifar-10-batches-py   -> parse it (checked against a
       SHA256SUMS file beside it, when there is one); ``root`` may also be that folder itself
    2. the archive, root/cifar-10-python.tar.gz         -> check its MD5, unpack, then 1
    3. the official URL (``download=True``)             -> fetch, check its MD5, keep it as the archive, then 2
    4. otherwise a ``DataNotFoundError`` that says which file to put where

Fetching, checking and unpacking live in ``tinyse/data/download.py``: nothing
half-written ever sits under a final name.
"""
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyse.data.download import (
    DataError,
    DataNotFoundError,
    DownloadFailed,
    check_md5,
    check_sha256,
    extract_members,
    fetch_archive,
    read_sha256sums,
)

ENV_VAR = "TINYSE_DATA"
IMAGE_SHAPE = (3, 32, 32)

DATASETS = {
    "cifar10": {
        "title": "CIFAR-10",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "archive": "cifar-10-python.tar.gz",
        "folder": "cifar-10-batches-py",
        "train_files": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
        "test_files": ("test_batch",),
        "label_key": "labels",
        "meta_file": "batches.meta",
        "class_key": "label_names",
        "num_classes": 10,
    },
    "cifar100": {
        "title": "CIFAR-100",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "archive": "cifar-100-python.tar.gz",
        "folder": "cifar-100-python",
        "train_files": ("train",),
        "test_files": ("test",),
        "label_key": "fine_labels",
        "meta_file": "meta",
        "class_key": "fine_label_names",
        "num_classes": 100,
    },
}


@dataclass(repr=False)
class Cifar:
    """One dataset in memory.

    train_images (N, 3, 32, 32) uint8, train_labels (N,) int64 (50000 images in both datasets),
    test_images (M, 3, 32, 32) uint8, test_labels (M,) int64 (10000),
    classes: the class names, label k is ``classes[k]``,
    mean, std (3,) float32: per-channel statistics of the training images on the 0-1 scale.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list
    name: str
    mean: np.ndarray
    std: np.ndarray

    def __repr__(self):
        return (
            f"Cifar({self.name!r}: {len(self.train_images)} training and {len(self.test_images)} test images, "
            f"{len(self.classes)} classes)"
        )


def data_dir(explicit=None):
    """The folder that holds (or will hold) the datasets: ``explicit``, else $TINYSE_DATA, else ~/.cache/tinyse/data."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return Path.home() / ".cache" / "tinyse" / "data"


def load_cifar(name="cifar10", root=None, download=True, progress=True):
    """Load CIFAR-10 (``"cifar10"``) or CIFAR-100 (``"cifar100"``, its 100 fine labels) as a ``Cifar``.

    root: where to look (see ``data_dir``); download: fetch the official archive when
    neither the folder nor the archive is there; progress: report download and unpacking on stderr.
    Raises ``DataNotFoundError`` (a ``FileNotFoundError``) when the data is missing and
    ``DataError`` when it is damaged; both messages name the file.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(map(repr, DATASETS))}")
    spec = DATASETS[name]
    folder = _find_or_fetch_folder(spec, data_dir(root), download, progress)
    return _parse_folder(name, spec, folder)


# --- reading the files ---------------------------------------------------------------------------


def _parse_folder(name, spec, folder):
    """Read every file of the extracted folder into a ``Cifar`` (checked against SHA256SUMS if present)."""
    expected = read_sha256sums(folder)
    train_images, train_labels = _read_split(spec, folder, spec["train_files"], expected)
    test_images, test_labels = _read_split(spec, folder, spec["test_files"], expected)
    classes = _read_classes(spec, folder, expected)
    mean, std = channel_stats(train_images)
    return Cifar(train_images, train_labels, test_images, test_labels, classes, name, mean, std)


def _read_split(spec, folder, files, expected):
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of ``files``, concatenated in order."""
    batches = [_read_batch(spec, folder / file, expected) for file in files]
    data = np.concatenate([data for data, _ in batches])  # a copy we own (the unpickled arrays borrow bytes)
    labels = np.concatenate([labels for _, labels in batches])
    # Each row is the R plane, then G, then B, each 32 rows of 32 pixels: exactly NCHW.
    return data.reshape(-1, *IMAGE_SHAPE), labels


def _read_batch(spec, path, expected):
    """(data (N, 3072) uint8, labels (N,) int64) of one pickled batch, with its shapes checked."""
    batch = _read_pickle(path, expected)
    label_key = spec["label_key"]
    if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path}: expected a dict with 'data' and {label_key!r}, found {keys}")
    data, labels = batch["data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' should be uint8 of shape (N, 3072), found {found}")
    if labels.shape != (len(data),) or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"{path}: {label_key!r} should be {len(data)} integers, found {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= spec["num_classes"]):
        raise DataError(
            f"{path}: labels run from {labels.min()} to {labels.max()}, outside 0..{spec['num_classes'] - 1}"
        )
    return data, labels.astype(np.int64)


def _read_classes(spec, folder, expected):
    path = folder / spec["meta_file"]
    meta = _read_pickle(path, expected)
    names = meta.get(spec["class_key"]) if isinstance(meta, dict) else None
    if names is None or len(names) != spec["num_classes"]:
        raise DataError(f"{path}: expected {spec['num_classes']} class names under {spec['class_key']!r}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _read_pickle(path, expected):
    """The object pickled in ``path``, its bytes checked against the SHA256SUMS entry when listed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataNotFoundError(
            f"{path} is missing: the folder {path.parent} is incomplete; put the file back, or delete the folder "
            f"and put the archive beside it to unpack it again"
        ) from None
    check_sha256(path, raw, expected)
    try:
        # latin1 reads the Python 2 strings of the official files byte for byte (numpy's array bytes included).
        return _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as error:
        raise DataError(f"{path} is not a readable CIFAR pickle: {error}") from error


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only what CIFAR files hold: dicts, lists, strings, numbers, NumPy arrays.

    A pickle may name any function to call while loading, so a planted file could
    run code; this one refuses every global except NumPy's array rebuilders.
    """

    ALLOWED = frozenset({
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),  # arrays pickled by NumPy 1.x (the official files)
        ("numpy._core.multiarray", "_reconstruct"),  # ... and by NumPy 2.x
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2
    })

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR files hold only arrays and lists")
        # NumPy 2 renamed numpy.core to numpy._core (the old name still loads, with a warning).
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        elif module.startswith("numpy._core.") and not hasattr(np, "_core"):
            module = "numpy.core." + module.removeprefix("numpy._core.")
        return super().find_class(module, name)


def channel_stats(images, chunk=1000):
    """Per-channel mean and std of uint8 ``images`` (N, C, H, W) on the 0-1 scale, as float32 (C,) arrays.

    The sums run over chunks of images in float64: the pixel values and their squares are
    integers, so every partial sum is exact (far below 2**53) and no (N, C, H, W) float copy is made.
    """
    n, c = images.shape[:2]
    pixels = images.reshape(n, c, -1)  # (N, C, H*W)
    total, total_sq = np.zeros(c), np.zeros(c)
    for begin in range(0, n, chunk):
        block = pixels[begin : begin + chunk].astype(np.float32)  # squares up to 255**2 are exact in float32
        total += block.sum(axis=(0, 2), dtype=np.float64)
        block *= block
        total_sq += block.sum(axis=(0, 2), dtype=np.float64)
    count = n * pixels.shape[2]
    if count == 0:
        raise ValueError(f"channel_stats: no pixels in images of shape {images.shape}")
    mean = total / count
    variance = np.maximum(total_sq / count - mean**2, 0.0)
    return (mean / 255).astype(np.float32), (np.sqrt(variance) / 255).astype(np.float32)


# --- where the data is ---------------------------------------------------------------------------


def _find_or_fetch_folder(spec, root, download, progress):
    """The extracted folder, after unpacking or downloading the archive where needed (steps 1-4)."""
    if root.name == spec["folder"] and root.is_dir():  # root is the extracted folder itself
        return root
    folder, archive = root / spec["folder"], root / spec["archive"]
    if folder.is_dir():
        return folder
    provided = archive.is_file()
    if provided:
        check_md5(archive, spec["md5"], spec["title"], spec["url"])
    elif not download:
        raise DataNotFoundError(_not_found_message(spec, root, "and download=False"))
    try:
        if not provided:
            root.mkdir(parents=True, exist_ok=True)
            try:
                fetch_archive(spec["url"], spec["md5"], archive, progress)
            except DownloadFailed as error:
                raise DataNotFoundError(_not_found_message(spec, root, f"and {error}")) from error
        members = _member_files(spec)
        return extract_members(archive, members, folder, title=spec["title"], url=spec["url"], progress=progress)
    except PermissionError as error:
        raise DataError(f"cannot write the data into {root}: {error}") from error


def _not_found_message(spec, root, reason):
    return (
        f"{spec['title']} was not found in {root} ({reason}). Put either the archive "
        f"{spec['archive']} (from {spec['url']}) or the folder {spec['folder']}/ it unpacks to in {root}, "
        f"or point tinyse at the folder that holds one of them with the {ENV_VAR} environment variable "
        f"or the --data-dir option (load_cifar(root=...) in Python)."
    )


def _member_files(spec):
    """The archive members ``load_cifar`` needs: {folder/name: name} for every data and meta file."""
    names = spec["train_files"] + spec["test_files"] + (spec["meta_file"],)
    return {f"{spec['folder']}/{name}": name for name in names}
