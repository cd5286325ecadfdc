"""CIFAR loading (on small archives made here, and on the real CIFAR-10 when present), augmentation, batching.

The real CIFAR-10 is looked for in $TINYSE_DATA, else in shared/data beside the
repository's folder; its tests are skipped, with the reason, when it is not there.
"""
import collections
import hashlib
import os
import pickle
import tarfile
import threading
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from tinyse.backend import device_of, to_device
from tinyse.data import (
    DATASETS,
    BatchLoader,
    DataError,
    DataNotFoundError,
    augment_batch,
    channel_stats,
    crop,
    crop_naive,
    data_dir,
    download,
    flip,
    load_cifar,
    loader,
    normalize,
    random_crop,
    random_flip,
    random_stream,
    split_validation,
)
from tinyse.data.download import file_md5
from tinyse.tensor import Tensor

from conftest import DEVICES

REPO_ROOT = Path(__file__).resolve().parents[1]
CIFAR10, CIFAR100 = DATASETS["cifar10"], DATASETS["cifar100"]


# --- small fake datasets in the official layout ------------------------------------------------


def write_pickle(path, obj, protocol):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def make_cifar10_folder(root, per_batch=20, seed=0):
    """root/cifar-10-batches-py as in the official archive (5 training batches of ``per_batch``, a test batch);
    returns what a loader must read back: data (N, 3072) and labels of train and test, and the class names."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR10["folder"]
    folder.mkdir(parents=True)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    expected = {"train_data": [], "train_labels": [], "classes": classes}
    # Protocol 2, as the official files (written by Python 2) use.
    for file in CIFAR10["train_files"] + CIFAR10["test_files"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(k) for k in rng.integers(0, 10, size=per_batch)]
        batch = {"batch_label": file, "labels": labels, "data": data, "filenames": [f"{i}.png" for i in labels]}
        write_pickle(folder / file, batch, protocol=2)
        if file.startswith("data_batch"):
            expected["train_data"].append(data)
            expected["train_labels"] += labels
        else:
            expected["test_data"], expected["test_labels"] = data, labels
    meta = {"label_names": classes, "num_vis": 3072, "num_cases_per_batch": per_batch}
    write_pickle(folder / "batches.meta", meta, protocol=2)
    expected["train_data"] = np.concatenate(expected["train_data"])
    return folder, expected


def make_cifar100_folder(root, n_train=60, n_test=30, seed=1):
    """root/cifar-100-python as in the official archive: train, test (fine and coarse labels), meta."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR100["folder"]
    folder.mkdir(parents=True)
    classes = [f"fine_{k}" for k in range(100)]
    expected = {"classes": classes}
    for file, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(k) for k in rng.integers(0, 100, size=n)]
        split = {"data": data, "fine_labels": fine, "coarse_labels": [k // 5 for k in fine], "batch_label": file}
        write_pickle(folder / file, split, protocol=pickle.DEFAULT_PROTOCOL)  # NumPy's protocol-5 path
        expected[f"{file}_data"], expected[f"{file}_labels"] = data, fine
    meta = {"fine_label_names": classes, "coarse_label_names": [f"coarse_{k}" for k in range(20)]}
    write_pickle(folder / "meta", meta, pickle.DEFAULT_PROTOCOL)
    return folder, expected


def make_archive(folder, archive, extra_members=()):
    """Tar and gzip ``folder`` as the official archives are (folder/file members, plus a readme)."""
    readme = folder.parent / "readme.html"
    readme.write_text("<html>not needed</html>")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
        tar.add(readme, arcname=f"{folder.name}/readme.html")
        for name in extra_members:
            tar.add(readme, arcname=name)
    return archive


@pytest.fixture
def cifar10_archive(tmp_path):
    """(archive path, expected contents): a fake cifar-10-python.tar.gz outside the roots the tests use."""
    source = tmp_path / "source"
    folder, expected = make_cifar10_folder(source)
    return make_archive(folder, source / CIFAR10["archive"]), expected


def trust(monkeypatch, dataset, archive):
    """Make ``archive`` the one whose MD5 ``load_cifar`` expects (a fake never matches the official MD5)."""
    monkeypatch.setitem(dataset, "md5", file_md5(archive))


def fresh_root(tmp_path, name="root"):
    root = tmp_path / name
    root.mkdir()
    return root


def assert_no_temporaries(root):
    hidden = [p.name for p in Path(root).iterdir() if p.name.startswith(".")]
    assert hidden == [], f"temporary files left behind: {hidden}"


def assert_matches(data, expected, name="cifar10", test_key="test"):
    images = data.train_images
    assert images.dtype == np.uint8 and images.shape == (len(expected["train_data"]), 3, 32, 32)
    # Row i of a file is the R plane (1024 bytes), then G, then B, each 32 rows of 32 pixels.
    for channel in range(3):
        planes = expected["train_data"][:, channel * 1024 : (channel + 1) * 1024].reshape(-1, 32, 32)
        np.testing.assert_array_equal(images[:, channel], planes)
    np.testing.assert_array_equal(data.test_images.reshape(-1, 3072), expected[f"{test_key}_data"])
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64
    np.testing.assert_array_equal(data.train_labels, expected["train_labels"])
    np.testing.assert_array_equal(data.test_labels, expected[f"{test_key}_labels"])
    assert data.classes == expected["classes"] and data.name == name
    pixels = images.astype(np.float64) / 255
    assert data.mean.dtype == np.float32 and data.std.dtype == np.float32
    np.testing.assert_allclose(data.mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(data.std, pixels.std(axis=(0, 2, 3)), rtol=1e-6)


# --- loading -------------------------------------------------------------------------------------


def test_extracted_folder_parses_to_images_labels_classes_and_statistics(tmp_path):
    _, expected = make_cifar10_folder(tmp_path)
    data = load_cifar("cifar10", root=tmp_path, download=False, progress=False)
    assert_matches(data, expected)
    assert data.train_images.flags.writeable and data.train_images.flags.c_contiguous


def test_root_may_be_the_extracted_folder_itself(tmp_path):
    folder, expected = make_cifar10_folder(tmp_path)
    assert_matches(load_cifar("cifar10", root=folder, download=False, progress=False), expected)


def test_archive_is_checked_unpacked_into_place_and_parsed(tmp_path, monkeypatch, cifar10_archive):
    archive, expected = cifar10_archive
    root = fresh_root(tmp_path)
    (root / CIFAR10["archive"]).write_bytes(archive.read_bytes())
    trust(monkeypatch, CIFAR10, archive)
    assert_matches(load_cifar("cifar10", root=root, download=False, progress=False), expected)
    folder = root / CIFAR10["folder"]
    needed = CIFAR10["train_files"] + CIFAR10["test_files"] + (CIFAR10["meta_file"],)
    assert sorted(p.name for p in folder.iterdir()) == sorted(needed)  # the readme is not unpacked
    assert (root / CIFAR10["archive"]).is_file()
    assert_no_temporaries(root)


def test_cifar100_archive_gives_fine_labels_and_fine_class_names(tmp_path, monkeypatch):
    folder, expected = make_cifar100_folder(tmp_path / "source")
    archive = make_archive(folder, tmp_path / "source" / CIFAR100["archive"])
    root = fresh_root(tmp_path)
    (root / CIFAR100["archive"]).write_bytes(archive.read_bytes())
    trust(monkeypatch, CIFAR100, archive)
    data = load_cifar("cifar100", root=root, download=False, progress=False)
    assert_matches(data, expected, name="cifar100")
    assert len(data.classes) == 100 and data.classes[7] == "fine_7"
    assert_no_temporaries(root)


def test_archive_with_wrong_md5_is_reported_corrupt_kept_and_not_unpacked(tmp_path, cifar10_archive):
    archive, _ = cifar10_archive  # the real MD5 stays expected: the fake cannot match it
    root = fresh_root(tmp_path)
    (root / CIFAR10["archive"]).write_bytes(archive.read_bytes())
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz is corrupt.*MD5"):
        load_cifar("cifar10", root=root, download=False, progress=False)
    assert sorted(p.name for p in root.iterdir()) == [CIFAR10["archive"]]


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.02])
def test_truncated_archive_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch, cifar10_archive, keep):
    archive, _ = cifar10_archive
    root = fresh_root(tmp_path)
    whole = archive.read_bytes()
    truncated = root / CIFAR10["archive"]
    truncated.write_bytes(whole[: int(len(whole) * keep)])
    trust(monkeypatch, CIFAR10, truncated)  # get past the MD5 check, to the unpacking
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz (is truncated or corrupt|lacks)"):
        load_cifar("cifar10", root=root, download=False, progress=False)
    assert sorted(p.name for p in root.iterdir()) == [CIFAR10["archive"]]


def test_archive_member_with_dotdot_path_is_refused(tmp_path, monkeypatch):
    folder, _ = make_cifar10_folder(tmp_path / "source")
    archive = make_archive(folder, tmp_path / "source" / CIFAR10["archive"], extra_members=["../escaped.html"])
    root = fresh_root(tmp_path)
    trust(monkeypatch, CIFAR10, archive)
    (root / CIFAR10["archive"]).write_bytes(archive.read_bytes())
    with pytest.raises(DataError, match=r"unsafe member path '\.\./escaped\.html'"):
        load_cifar("cifar10", root=root, download=False, progress=False)
    assert not (tmp_path / "escaped.html").exists()
    assert sorted(p.name for p in root.iterdir()) == [CIFAR10["archive"]]


def test_missing_file_in_the_folder_is_named(tmp_path):
    folder, _ = make_cifar10_folder(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match=r"data_batch_3 is missing") as error:
        load_cifar("cifar10", root=tmp_path, download=False, progress=False)
    assert isinstance(error.value, FileNotFoundError)


def test_sha256sums_beside_the_folder_are_checked_and_a_mismatch_named(tmp_path):
    folder, expected = make_cifar10_folder(tmp_path)
    files = sorted(folder.iterdir())
    lines = [f"{hashlib.sha256(file.read_bytes()).hexdigest()}  {folder.name}/{file.name}" for file in files]
    lines.append(f"{'0' * 64}  some-other-dataset/file")  # entries of other folders are not ours to check
    (tmp_path / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    assert_matches(load_cifar("cifar10", root=tmp_path, download=False, progress=False), expected)

    damaged = bytearray((folder / "data_batch_2").read_bytes())
    damaged[-100] ^= 1
    (folder / "data_batch_2").write_bytes(bytes(damaged))
    for root in (tmp_path, folder):
        damaged_message = r"data_batch_2 is damaged: its SHA-256 is [0-9a-f]{64}, but .*SHA256SUMS lists"
        with pytest.raises(DataError, match=damaged_message):
            load_cifar("cifar10", root=root, download=False, progress=False)


def test_pickle_with_wrong_shapes_is_named(tmp_path):
    folder, _ = make_cifar10_folder(tmp_path)
    bad = {"data": np.zeros((20, 3071), dtype=np.uint8), "labels": [0] * 20}
    write_pickle(folder / "data_batch_4", bad, 2)
    with pytest.raises(DataError, match=r"data_batch_4: 'data' should be uint8 of shape \(N, 3072\), found .*3071"):
        load_cifar("cifar10", root=tmp_path, download=False, progress=False)
    write_pickle(folder / "data_batch_4", {"data": np.zeros((20, 3072), np.uint8), "labels": [0] * 19}, 2)
    with pytest.raises(DataError, match=r"data_batch_4: 'labels' should be 20 integers"):
        load_cifar("cifar10", root=tmp_path, download=False, progress=False)


def test_pickle_that_names_other_globals_is_refused(tmp_path):
    folder, _ = make_cifar10_folder(tmp_path)
    write_pickle(folder / "test_batch", {"data": collections.OrderedDict, "labels": []}, 2)
    with pytest.raises(DataError, match=r"test_batch is not a readable CIFAR pickle: refusing to load collections"):
        load_cifar("cifar10", root=tmp_path, download=False, progress=False)


def test_offline_without_data_says_where_to_put_which_file(tmp_path, monkeypatch):
    def offline(url, destination, progress=True):
        Path(destination).write_bytes(b"partial")  # a failed download may have written something
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(download, "download_url", offline)
    root = fresh_root(tmp_path)
    with pytest.raises(DataNotFoundError) as error:
        load_cifar("cifar10", root=root, progress=False)
    message = str(error.value)
    for needed in (str(root), "cifar-10-python.tar.gz", "cifar-10-batches-py", "TINYSE_DATA", "--data-dir",
                   CIFAR10["url"], "Temporary failure in name resolution"):
        assert needed in message
    assert list(root.iterdir()) == []


def test_no_data_and_no_download_raises_without_fetching(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "download_url", lambda *args, **kwargs: pytest.fail("must not download"))
    message = r"CIFAR-100 was not found in .*absent \(and download=False\).*cifar-100-python\.tar\.gz"
    with pytest.raises(DataNotFoundError, match=message):
        load_cifar("cifar100", root=tmp_path / "absent", download=False)
    assert not (tmp_path / "absent").exists()


def test_download_is_verified_renamed_and_unpacked(tmp_path, monkeypatch, capsys, cifar10_archive):
    archive, expected = cifar10_archive
    monkeypatch.setitem(CIFAR10, "url", archive.as_uri())  # file:// goes through the same urlopen code
    trust(monkeypatch, CIFAR10, archive)
    root = tmp_path / "new" / "root"  # created on demand
    assert_matches(load_cifar("cifar10", root=root, progress=True), expected)
    assert (root / CIFAR10["archive"]).read_bytes() == archive.read_bytes()
    assert (root / CIFAR10["folder"]).is_dir()
    assert_no_temporaries(root)
    assert "100%" in capsys.readouterr().err


def test_download_with_wrong_md5_leaves_no_archive(tmp_path, monkeypatch, cifar10_archive):
    archive, _ = cifar10_archive
    monkeypatch.setitem(CIFAR10, "url", archive.as_uri())  # the official MD5 stays expected
    root = fresh_root(tmp_path)
    with pytest.raises(DataError, match=r"has MD5 [0-9a-f]{32}, expected c58f3010.*deleted"):
        load_cifar("cifar10", root=root, progress=False)
    assert list(root.iterdir()) == []


def test_data_dir_is_the_argument_else_the_environment_else_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYSE_DATA", str(tmp_path / "from-env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir(tmp_path / "given") == tmp_path / "given"
    assert data_dir() == tmp_path / "from-env"
    monkeypatch.delenv("TINYSE_DATA")
    assert data_dir() == tmp_path / "home" / ".cache" / "tinyse" / "data"


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*'cifar10', 'cifar100'"):
        load_cifar("mnist")


def test_channel_stats_match_a_direct_computation():
    images = np.random.default_rng(0).integers(0, 256, size=(37, 3, 5, 6), dtype=np.uint8)
    mean, std = channel_stats(images, chunk=8)  # chunks that do not divide N
    pixels = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 2, 3)), rtol=1e-6)


# --- the real CIFAR-10 -----------------------------------------------------------------------------


def real_data_root():
    """$TINYSE_DATA, else shared/data beside the repository's folder."""
    if os.environ.get("TINYSE_DATA"):
        return Path(os.environ["TINYSE_DATA"])
    return REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def real_cifar10():
    root = real_data_root()
    found = [root / CIFAR10["folder"], root / CIFAR10["archive"], root if root.name == CIFAR10["folder"] else None]
    if not any(path is not None and path.exists() for path in found):
        pytest.skip(f"real CIFAR-10 not found in {root}: set TINYSE_DATA to the folder that holds cifar-10-batches-py")
    return load_cifar("cifar10", root=root, download=False, progress=False)


def test_real_cifar10_sizes_classes_and_published_statistics(real_cifar10):
    data = real_cifar10
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    np.testing.assert_array_equal(np.bincount(data.train_labels, minlength=10), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(data.test_labels, minlength=10), [1000] * 10)
    assert data.classes[0] == "airplane" and len(data.classes) == 10
    np.testing.assert_allclose(data.mean * 255, [125.31, 122.95, 113.87], atol=0.01)
    np.testing.assert_allclose(data.std * 255, [62.99, 62.09, 66.70], atol=0.01)


# --- augmentation ----------------------------------------------------------------------------------


def some_images(n=16, h=32, w=32, dtype=np.uint8, seed=0):
    """Pixels in 1..255 (never 0), so any 0 in a crop must come from the padding."""
    return np.random.default_rng(seed).integers(1, 256, size=(n, 3, h, w)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_random_crop_cuts_the_padded_image_at_the_drawn_offset(dtype):
    images, padding = some_images(n=40, h=8, w=6, dtype=dtype), 3
    out = random_crop(images, np.random.default_rng(7), padding=padding)
    assert out.shape == images.shape and out.dtype == dtype
    top, left = np.random.default_rng(7).integers(0, 2 * padding + 1, size=(2, len(images)))
    padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    for i in range(len(images)):
        np.testing.assert_array_equal(out[i], padded[i, :, top[i] : top[i] + 8, left[i] : left[i] + 6])
    np.testing.assert_array_equal(crop(images, top, left, padding), crop_naive(images, top, left, padding))
    # Zeros exactly where the crop window lies outside the original image.
    rows = np.arange(8)[None, :] + top[:, None] - padding  # (N, H) row of the original image
    cols = np.arange(6)[None, :] + left[:, None] - padding
    outside = (rows < 0) | (rows >= 8)
    outside = outside[:, :, None] | ((cols < 0) | (cols >= 6))[:, None, :]  # (N, H, W)
    np.testing.assert_array_equal(out == 0, np.broadcast_to(outside[:, None], out.shape))
    assert outside.any() and not outside.all()


def test_a_reflected_border_mirrors_the_image_at_its_edges():
    images, padding = some_images(n=30, h=8, w=6), 2
    out = random_crop(images, np.random.default_rng(5), padding=padding, fill="reflect")
    top, left = np.random.default_rng(5).integers(0, 2 * padding + 1, size=(2, len(images)))
    np.testing.assert_array_equal(out, crop_naive(images, top, left, padding, fill="reflect"))
    for i in range(len(images)):
        # Row (or column) -k of the image is row k, and row H - 1 + k is row H - 1 - k: the edge is not repeated.
        rows = np.abs(np.arange(8) + top[i] - padding)
        rows = np.where(rows > 7, 14 - rows, rows)
        cols = np.abs(np.arange(6) + left[i] - padding)
        cols = np.where(cols > 5, 10 - cols, cols)
        np.testing.assert_array_equal(out[i], images[i][:, rows][:, :, cols])
    assert not (out == 0).any()  # the pixels are 1..255: no zero comes in with the border
    assert (top != padding).any() and (left != padding).any()  # some crops do reach into the border
    with pytest.raises(ValueError, match="reflect padding must be smaller than the image, got 8"):
        random_crop(images, np.random.default_rng(0), padding=8, fill="reflect")
    with pytest.raises(ValueError, match="fill must be one of zeros, reflect, got 'edge'"):
        random_crop(images, np.random.default_rng(0), padding=2, fill="edge")


def test_crop_without_padding_is_the_identity():
    images = some_images(n=4)
    np.testing.assert_array_equal(random_crop(images, np.random.default_rng(0), padding=0), images)


def test_random_flip_mirrors_exactly_the_drawn_images():
    images = some_images(n=32)
    out = random_flip(images, np.random.default_rng(3))
    which = np.random.default_rng(3).random(32) < 0.5
    assert which.any() and not which.all()
    for i in range(32):
        np.testing.assert_array_equal(out[i], images[i, :, :, ::-1] if which[i] else images[i])
    np.testing.assert_array_equal(flip(images, which), out)


def test_augmentation_is_determined_by_the_generator_seed():
    images = some_images()
    first = augment_batch(images, np.random.default_rng(11))
    np.testing.assert_array_equal(first, augment_batch(images, np.random.default_rng(11)))
    assert not np.array_equal(first, augment_batch(images, np.random.default_rng(12)))
    rng = np.random.default_rng(11)
    np.testing.assert_array_equal(first, random_flip(random_crop(images, rng), rng))  # crop, then flip


def test_normalize_is_the_formula_per_channel_in_float32():
    images = some_images(n=5)
    mean, std = np.array([0.49, 0.48, 0.45]), np.array([0.25, 0.24, 0.26])
    x = normalize(images, mean, std)
    expected = (images / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]
    assert x.dtype == np.float32 and x.shape == images.shape
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-6)


def test_augment_functions_reject_a_single_image():
    with pytest.raises(ValueError, match=r"random_crop: expected a batch of images \(N, C, H, W\), got shape \(3, 32"):
        random_crop(some_images(n=1)[0], np.random.default_rng(0))


# --- batching --------------------------------------------------------------------------------------

N_IMAGES, MEAN, STD = 50, np.array([0.5, 0.4, 0.3], np.float32), np.array([0.2, 0.25, 0.3], np.float32)


def make_loader(**options):
    """A loader over 50 images whose label is their index, so batches show which images they hold."""
    settings = {"batch_size": 8, "shuffle": True, "augment": True, "seed": 5} | options
    images = some_images(n=N_IMAGES)
    return BatchLoader(images, np.arange(N_IMAGES), mean=MEAN, std=STD, **settings)


def epoch_of(loader, epoch, start=0):
    return [(x.data.copy(), labels.copy()) for x, labels in loader.batches(epoch, start=start)]


def test_batches_are_normalised_float32_tensors_with_int64_labels():
    plain = make_loader(shuffle=False, augment=False)
    assert len(plain) == 7  # 6 batches of 8 and one of 2
    batches = epoch_of(plain, 0)
    x, labels = batches[0]
    assert isinstance(next(iter(plain))[0], Tensor)
    assert x.dtype == np.float32 and x.shape == (8, 3, 32, 32)
    assert labels.dtype == np.int64 and batches[-1][0].shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(x, normalize(plain.images[:8], MEAN, STD))
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in batches]), np.arange(N_IMAGES))


def test_a_shuffled_epoch_serves_every_image_once_and_epochs_differ():
    loader = make_loader()
    orders = [np.concatenate([labels for _, labels in epoch_of(loader, epoch)]) for epoch in (0, 1)]
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(N_IMAGES))
    assert not np.array_equal(orders[0], orders[1])


def test_drop_last_skips_the_short_batch():
    loader = make_loader(drop_last=True)
    assert len(loader) == 6
    assert [len(labels) for _, labels in loader.batches(0)] == [8] * 6


def test_same_seed_and_epoch_give_the_same_batches_another_seed_others():
    first, again, other = epoch_of(make_loader(), 3), epoch_of(make_loader(), 3), epoch_of(make_loader(seed=6), 3)
    for (x, labels), (x2, labels2) in zip(first, again):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(labels, labels2)
    assert not np.array_equal(first[0][1], other[0][1])


@pytest.mark.parametrize("prefetch", [False, True])
def test_starting_at_batch_k_gives_the_tail_of_the_epoch(prefetch):
    loader = make_loader(prefetch=prefetch)
    whole = epoch_of(loader, 2)
    for start in (0, 3, 6, 7):
        tail = epoch_of(loader, 2, start=start)
        assert len(tail) == len(whole) - start
        for (x, labels), (x2, labels2) in zip(tail, whole[start:]):
            np.testing.assert_array_equal(x, x2)
            np.testing.assert_array_equal(labels, labels2)
    with pytest.raises(ValueError, match=r"start must be in 0\.\.7, got 8"):
        loader.batches(2, start=8)


def mirrored_images(loader, epoch):
    """With no crop (padding 0), which images epoch ``epoch`` serves mirrored: (N,) bool by image index."""
    mirrored = np.zeros(N_IMAGES, bool)
    for x, labels in loader.batches(epoch):
        for image, label in zip(x.data, labels):
            plain, mirror = (normalize(loader.images[label][None, ..., ::step], MEAN, STD)[0] for step in (1, -1))
            assert np.array_equal(image, plain) or np.array_equal(image, mirror)
            mirrored[label] = not np.array_equal(image, plain)
    return mirrored


def test_the_alternating_flip_mirrors_each_image_in_every_other_epoch():
    loader = make_loader(padding=0, flip="alternate")
    first, second, third = (mirrored_images(loader, epoch) for epoch in (0, 1, 2))
    np.testing.assert_array_equal(second, ~first)  # two epochs in a row show both sides of every image
    np.testing.assert_array_equal(third, first)
    assert 0 < first.sum() < N_IMAGES  # the first epoch's flips are random, not all one way
    np.testing.assert_array_equal(loader.flips(1), ~loader.flips(0))
    assert make_loader(flip="random").flips(0) is None
    random_first, random_second = (mirrored_images(make_loader(padding=0), epoch) for epoch in (0, 1))
    assert np.any(random_first == random_second)  # the default, drawn afresh, mirrors some images twice in a row


def test_the_alternating_flip_keeps_the_random_flips_crops():
    # Both draw the crop first from the batch's stream, so each image is the other's, mirrored or not.
    alternate, random = epoch_of(make_loader(flip="alternate"), 1), epoch_of(make_loader(flip="random"), 1)
    mirrored = []
    for (x, labels), (x2, labels2) in zip(alternate, random):
        np.testing.assert_array_equal(labels, labels2)
        for image, image2 in zip(x, x2):
            assert np.array_equal(image, image2) or np.array_equal(image, image2[..., ::-1])
            mirrored.append(not np.array_equal(image, image2))
    assert 0 < sum(mirrored) < N_IMAGES  # the two flips differ on some images, agree on others


def test_the_crop_padding_sets_how_far_crops_move():
    images = some_images(n=N_IMAGES)
    unpadded = make_loader(padding=0, flip="alternate")
    x, labels = epoch_of(unpadded, 0)[0]
    flips = unpadded.flips(0)[labels]
    np.testing.assert_array_equal(x, normalize(flip(images[labels], flips), MEAN, STD))
    with pytest.raises(ValueError, match="padding must be >= 0, got -1"):
        make_loader(padding=-1)
    with pytest.raises(ValueError, match="flip must be one of random, alternate, got 'sometimes'"):
        make_loader(flip="sometimes")


def test_the_crop_fill_changes_only_the_border():
    # The same crops and flips from the same streams: the images agree wherever the crop lies inside the image.
    (x, labels), (x2, labels2) = epoch_of(make_loader(), 1)[0], epoch_of(make_loader(fill="reflect"), 1)[0]
    np.testing.assert_array_equal(labels, labels2)
    black = normalize(np.zeros((1, 3, 1, 1), np.uint8), MEAN, STD)  # a zero pixel, normalised
    border = (x == black).all(axis=1)  # (B, H, W): where the zero-filled crop shows its padding
    assert border.any() and not border.all()
    np.testing.assert_array_equal(x.transpose(0, 2, 3, 1)[~border], x2.transpose(0, 2, 3, 1)[~border])
    assert not (x2 == black).all(axis=1).any()
    with pytest.raises(ValueError, match="fill must be one of zeros, reflect, got 'wrap'"):
        make_loader(fill="wrap")
    with pytest.raises(ValueError, match=r"reflect padding must be smaller than the images \(32, 32\), got 32"):
        make_loader(fill="reflect", padding=32)  # refused when the loader is made, not at its first batch


def test_prefetching_gives_the_same_batches():
    plain, prefetched = epoch_of(make_loader(), 1), epoch_of(make_loader(prefetch=True), 1)
    assert len(plain) == len(prefetched) == 7
    for (x, labels), (x2, labels2) in zip(plain, prefetched):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(labels, labels2)


def test_leaving_a_prefetched_epoch_early_stops_its_thread():
    baseline = threading.active_count()
    loader = make_loader(prefetch=True, batch_size=2)  # 25 batches: the thread is still busy when we leave
    batches = loader.batches(0)
    next(batches)
    assert threading.active_count() == baseline + 1
    batches.close()
    assert threading.active_count() == baseline
    for _ in loader.batches(1):
        break  # the abandoned generator is collected at once, which stops its thread
    assert threading.active_count() == baseline


def test_an_error_in_the_prefetch_thread_is_raised_in_the_consumer(monkeypatch):
    calls = []

    def failing_normalize(images, mean, std):
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            raise RuntimeError("normalize failed on the third batch")
        return normalize(images, mean, std)

    monkeypatch.setattr(loader, "normalize", failing_normalize)
    baseline = threading.active_count()
    served = []
    with pytest.raises(RuntimeError, match="normalize failed on the third batch"):
        for x, _ in make_loader(prefetch=True).batches(0):
            served.append(x)
    assert len(served) == 2 and calls[-1] == "tinyse-prefetch"
    assert threading.active_count() == baseline


@pytest.mark.parametrize("device", DEVICES)
def test_batches_land_on_the_device(device):
    x, labels = next(iter(make_loader(device=device)))
    cpu_x, cpu_labels = next(iter(make_loader()))
    assert x.device == device and x.dtype == np.float32
    np.testing.assert_array_equal(to_device(x.data, "cpu"), cpu_x.data)
    assert labels.dtype == np.int64 and device_of(labels) == device
    np.testing.assert_array_equal(to_device(labels, "cpu"), cpu_labels)


def test_random_streams_are_distinct_where_plain_seed_lists_collide():
    def draw(rng):
        return rng.integers(0, 2**32, size=4)

    np.testing.assert_array_equal(draw(np.random.default_rng([5, 2])), draw(np.random.default_rng([5, 2, 0])))
    streams = [random_stream(5, 1, 2), random_stream(5, 1, 2, 0), random_stream(5, 0), np.random.default_rng(5)]
    values = [tuple(draw(rng)) for rng in streams]
    assert len(set(values)) == len(values)
    np.testing.assert_array_equal(draw(random_stream(5, 1, 2)), draw(random_stream(5, 1, 2)))


def test_split_validation_holds_out_a_disjoint_random_subset():
    images, labels = some_images(n=N_IMAGES), np.arange(N_IMAGES)
    train_x, train_y, val_x, val_y = split_validation(images, labels, 12, seed=3)
    assert (len(train_x), len(train_y), len(val_x), len(val_y)) == (38, 38, 12, 12)
    assert set(train_y).isdisjoint(val_y) and sorted([*train_y, *val_y]) == list(range(N_IMAGES))
    np.testing.assert_array_equal(train_x, images[train_y])
    np.testing.assert_array_equal(val_x, images[val_y])
    assert not np.array_equal(val_y, np.arange(12))  # random, not the first 12
    np.testing.assert_array_equal(split_validation(images, labels, 12, seed=3)[3], val_y)
    train_x, train_y, val_x, val_y = split_validation(images, labels, 0, seed=3)
    assert len(train_x) == N_IMAGES and val_x.shape == (0, 3, 32, 32) and val_y.shape == (0,)
    with pytest.raises(ValueError, match=r"size must be in 0\.\.50, got 51"):
        split_validation(images, labels, 51, seed=3)
