"""CIFAR-10 / CIFAR-100 data: the format and loading (``cifar``), fetching and checking archives (``download``),
augmentation (``augment``), batching (``loader``).

    data = load_cifar("cifar10")                   # finds, or downloads and verifies, the official archive
    train = BatchLoader(data.train_images, data.train_labels, 128, data.mean, data.std,
                        shuffle=True, augment=True, seed=0)
    for epoch in range(epochs):
        for x, labels in train.batches(epoch):     # x: float32 Tensor (128, 3, 32, 32), labels: int64 (128,)
            ...
"""
from tinyse.data.augment import FILLS, augment_batch, crop, crop_naive, flip, normalize, pad, random_crop, random_flip
from tinyse.data.cifar import (
    DATASETS,
    ENV_VAR,
    Cifar,
    DataError,
    DataNotFoundError,
    channel_stats,
    data_dir,
    load_cifar,
)
from tinyse.data.download import download_url
from tinyse.data.loader import FLIPS, BatchLoader, random_stream, split_validation

__all__ = [
    "DATASETS", "ENV_VAR", "FILLS", "FLIPS", "BatchLoader", "Cifar", "DataError", "DataNotFoundError", "augment_batch",
    "channel_stats", "crop", "crop_naive", "data_dir", "download_url", "flip", "load_cifar", "normalize", "pad",
    "random_crop", "random_flip", "random_stream", "split_validation",
]
