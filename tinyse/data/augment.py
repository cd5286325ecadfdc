"""Data augmentation for CIFAR, the recipe of He et al. that the SE paper follows: zero-pad
4 pixels, take a random 32x32 crop, flip horizontally with probability 1/2.
The border may also be the image mirrored at its edge (fill "reflect", as in Jordan's 2024
short CIFAR-10 recipes) instead of zeros (fill "zeros", He et al.'s).

Notation
    N        batch size
    C, H, W  channels, height, width of each image
    P        padding: the padded image is (H + 2P) x (W + 2P)
    fill     what the padding holds: "zeros", or "reflect" (row -k is row k, the edge not repeated)
    top, left  (N,) offsets of each crop in the padded image, each in 0 .. 2P

Every function takes a batch (N, C, H, W) of uint8 or float images and works on
the whole batch at once (no per-image Python loop does the arithmetic); the
random ones take a ``np.random.Generator`` and draw everything from it, so a
seeded generator gives the same batch every time.
Fast crop (``crop``): a sliding-window view of the padded batch, (N, C, 2P+1, 2P+1, H, W),
    indexed at each image's offset: one gather, no copy of the windows.
Obvious crop (``crop_naive``): a loop over the images, kept for the lessons and for
    a test that holds the two equal.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FILLS = {"zeros": "constant", "reflect": "reflect"}  # fill -> np.pad's mode


def _check_batch(name, images):
    if images.ndim != 4:
        raise ValueError(f"{name}: expected a batch of images (N, C, H, W), got shape {images.shape}")


def pad(images, padding, fill="zeros"):
    """images (N, C, H, W) -> (N, C, H + 2P, W + 2P): zeros around each image, or its mirror image at each edge."""
    _check_batch("pad", images)
    if padding < 0:
        raise ValueError(f"pad: padding must be >= 0, got {padding}")
    if fill not in FILLS:
        raise ValueError(f"pad: fill must be one of {', '.join(FILLS)}, got {fill!r}")
    if fill == "reflect" and padding >= min(images.shape[2:]):
        raise ValueError(f"pad: reflect padding must be smaller than the image, got {padding} for {images.shape[2:]}")
    return np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)), mode=FILLS[fill])


def crop(images, top, left, padding, fill="zeros"):
    """Cut each padded image at its own offset.

    images (N, C, H, W); top, left (N,) ints in 0 .. 2P -> (N, C, H, W), where
    out[i] = pad(images, P, fill)[i, :, top[i] : top[i] + H, left[i] : left[i] + W].
    """
    n, _, h, w = images.shape
    padded = pad(images, padding, fill)
    windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, 2P+1, 2P+1, H, W), a view
    # Advanced indices on axes 0, 2, 3 around the slice on axis 1: NumPy puts their
    # broadcast axis (N) first, then C, then the window's (H, W).
    return windows[np.arange(n), :, top, left]


def crop_naive(images, top, left, padding, fill="zeros"):
    """The obvious version of ``crop``: one slice per image."""
    n, _, h, w = images.shape
    padded = pad(images, padding, fill)
    out = np.empty_like(images)
    for i in range(n):
        out[i] = padded[i, :, top[i] : top[i] + h, left[i] : left[i] + w]
    return out


def random_crop(images, rng, padding=4, fill="zeros"):
    """Pad each image by ``padding`` (zeros, or its mirror image: ``fill``) and cut a random H x W crop from it.

    images (N, C, H, W) -> (N, C, H, W), same dtype. Draws
    ``top, left = rng.integers(0, 2 * padding + 1, size=(2, N))``.
    """
    _check_batch("random_crop", images)
    top, left = rng.integers(0, 2 * padding + 1, size=(2, len(images)))
    return crop(images, top, left, padding, fill)


def flip(images, which):
    """Mirror the images where ``which`` (N,) bool is True: (N, C, H, W) -> (N, C, H, W)."""
    _check_batch("flip", images)
    return np.where(which[:, None, None, None], images[..., ::-1], images)


def random_flip(images, rng):
    """Mirror each image left-right with probability 1/2; draws ``rng.random(N) < 0.5``."""
    _check_batch("random_flip", images)
    return flip(images, rng.random(len(images)) < 0.5)


def augment_batch(images, rng, padding=4, flips=None, fill="zeros"):
    """The paper's CIFAR augmentation: ``random_crop`` then ``random_flip``, both drawing from ``rng``.

    ``flips`` (N,) bool, if given, says which images to mirror instead (the alternating flip of
    ``BatchLoader``); the crops are the same either way, as they are drawn first.
    """
    cropped = random_crop(images, rng, padding, fill)
    return random_flip(cropped, rng) if flips is None else flip(cropped, flips)


def normalize(images, mean, std):
    """(images / 255 - mean) / std per channel, as float32.

    images (N, C, H, W) on the 0-255 scale (uint8); mean, std (C,) on the 0-1 scale.
    """
    _check_batch("normalize", images)
    mean = np.asarray(mean, dtype=np.float32)[:, None, None]  # (C, 1, 1) broadcasts over N, H, W
    std = np.asarray(std, dtype=np.float32)[:, None, None]
    x = images.astype(np.float32)
    x /= 255
    x -= mean
    x /= std
    return x
