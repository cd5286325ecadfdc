"""python -m tinyse.analyze: SE gates per block, class means, specificity, the figures and numbers it writes.

The computations are checked against direct versions (one image at a time, loops over
classes and channels); the command runs end to end on a run trained for two steps on
a small CIFAR-10 made in the official format (tests/test_data.py's helpers).
"""
from pathlib import Path

import numpy as np
import pytest
from test_data import make_cifar10_folder
from test_train import quick_config

from tinyse import models
from tinyse.analyze import (
    chance_specificity,
    class_means,
    class_variances,
    collect_gates,
    find_checkpoint,
    first_per_class,
    last_of_each_stage,
    se_blocks,
    specificity,
)
from tinyse.analyze import main as analyze_main
from tinyse.checkpoint import load_checkpoint, save_checkpoint
from tinyse.data import load_cifar, normalize
from tinyse.optim import SGD
from tinyse.tensor import Tensor, no_grad
from tinyse.train import build_model, train

SE_RESNET20_BLOCKS = [f"layer{stage}.{unit}.se" for stage in (1, 2, 3) for unit in range(3)]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_model():
    return models.create("se_resnet20", num_classes=4, seed=0)


def small_images(n, seed=0, size=8):
    """n normalised-looking images (n, 3, size, size), float32; the nets pool globally, so 8x8 is enough."""
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


# --- collecting gates ----------------------------------------------------------------------------------
def test_collect_gates_gives_every_se_block_one_row_per_image(tiny_model):
    gates = collect_gates(tiny_model, small_images(7), batch_size=3)  # batches of 3, 3, 1
    assert list(gates) == SE_RESNET20_BLOCKS
    for name, block in se_blocks(tiny_model):
        assert gates[name].shape == (7, block.channels)
        assert isinstance(gates[name], np.ndarray)
        assert np.all((gates[name] > 0) & (gates[name] < 1)), "sigmoid gates lie in (0, 1)"
    assert [block.channels for _, block in se_blocks(tiny_model)] == [16] * 3 + [32] * 3 + [64] * 3
    assert not tiny_model.training, "the gates are read in eval mode"


def test_class_means_of_collected_gates_equal_running_each_image_alone(tiny_model):
    images, labels = small_images(10, seed=1), np.array([0, 2, 1, 0, 2, 2, 1, 0, 0, 2])
    means = {name: class_means(g, labels, 4) for name, g in collect_gates(tiny_model, images, batch_size=4).items()}
    tiny_model.eval()
    for k in range(3):
        per_image = {name: [] for name in SE_RESNET20_BLOCKS}
        for i in np.flatnonzero(labels == k):
            with no_grad():
                tiny_model(Tensor(images[i : i + 1]))
            for name, block in se_blocks(tiny_model):
                per_image[name].append(block.gates[0])
        for name in SE_RESNET20_BLOCKS:
            np.testing.assert_allclose(means[name][k], np.mean(per_image[name], axis=0), rtol=1e-5, atol=1e-6)
    assert all(np.isnan(means[name][3]).all() for name in means), "class 3 has no images: NaN"


def test_first_per_class_takes_the_first_k_of_each_class_in_test_set_order():
    labels = np.array([2, 0, 2, 1, 0, 2, 2, 0])
    np.testing.assert_array_equal(first_per_class(labels, 2, 3), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(first_per_class(labels, 1, 4), [0, 1, 3])  # class 3 has none
    np.testing.assert_array_equal(first_per_class(labels, 10, 3), np.arange(8))


def test_the_last_block_of_each_stage_is_where_the_width_changes():
    assert last_of_each_stage(se_blocks(models.create("se_resnet20"))) == ["layer1.2.se", "layer2.2.se", "layer3.2.se"]
    inception = se_blocks(models.create("se_inception"))
    assert last_of_each_stage(inception) == ["features.0.se", "features.3.se", "features.5.se"]


# --- specificity ---------------------------------------------------------------------------------------
def specificity_by_loops(gates, labels):
    """The docstring's formula written out channel by channel, class by class."""
    ratios = []
    for c in range(gates.shape[1]):
        means = [gates[labels == k, c].mean() for k in np.unique(labels)]
        within = [gates[labels == k, c].var() for k in np.unique(labels)]
        ratios.append(np.var(means) / (np.mean(within) + 1e-8))
    return np.mean(ratios)


def test_specificity_equals_the_formula_computed_directly():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=60)
    gates = rng.uniform(size=(60, 12)) + 0.3 * labels[:, None] * rng.uniform(size=12)  # partly class-dependent
    assert specificity(gates, labels, 5) == pytest.approx(specificity_by_loops(gates, labels), rel=1e-10)
    means, variances = class_means(gates, labels, 5), class_variances(gates, labels, 5)
    assert means.shape == variances.shape == (5, 12)
    np.testing.assert_allclose(variances[2], gates[labels == 2].var(axis=0))
    # a class absent from the labels (6 of 7 here) leaves the number unchanged
    assert specificity(gates, labels, 7) == pytest.approx(specificity(gates, labels, 5), rel=1e-12)


def test_specificity_is_zero_for_class_blind_gates_and_large_for_class_driven_ones():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 8)
    same_rows = np.tile(rng.uniform(size=(8, 32)), (10, 1))  # every class sees the same 8 gate vectors
    assert specificity(same_rows, labels, 10) < 1e-12
    by_class = rng.uniform(size=(10, 32))[labels] + 0.01 * rng.standard_normal((80, 32))
    assert specificity(by_class, labels, 10) > 100
    saturated = np.ones((80, 32))
    assert specificity(saturated, labels, 10) == 0.0, "a gate stuck at 1 is not class-specific"


def test_gates_independent_of_the_class_score_near_the_chance_level():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(10), 50)
    gates = rng.uniform(size=(500, 256))
    chance = chance_specificity(np.bincount(labels))
    assert chance == pytest.approx(9 / (10 * 49))
    assert specificity(gates, labels, 10) == pytest.approx(chance, rel=0.15)


# --- the command line ----------------------------------------------------------------------------------
@pytest.fixture
def se_run(tmp_path):
    """A run folder of SE-ResNet-20 after two training steps on fabricated CIFAR-10 (20 test images)."""
    make_cifar10_folder(tmp_path / "data", per_batch=20)
    config = quick_config(tmp_path, "--model", "se_resnet20")
    assert train(config, stop_after_steps=2)["stopped"]
    return Path(config["out"])


def test_the_command_writes_figures_and_numbers_of_the_chosen_images(se_run, capsys):
    analyze_main([str(se_run / "last.npz"), "--per-class", "1", "--batch-size", "4"])
    printed = capsys.readouterr().out
    for name in ("excitations.png", "specificity.png"):
        assert (se_run / name).read_bytes()[:8] == PNG, name
    saved = np.load(se_run / "excitations.npz", allow_pickle=False)
    assert list(saved["block_names"]) == SE_RESNET20_BLOCKS
    assert list(saved["stage_ends"]) == ["layer1.2.se", "layer2.2.se", "layer3.2.se"]
    np.testing.assert_array_equal(saved["depth"], np.arange(1, 10))
    assert saved["class_names"][0] == "airplane" and len(saved["class_names"]) == 10
    for key in ("specificity", "mean_gate", "saturated_high", "saturated_low"):
        assert saved[key].shape == (9,) and saved[key].dtype == np.float32, key
    assert saved["class_means/layer3.2.se"].shape == saved["within_variance/layer3.2.se"].shape == (10, 64)
    assert saved["class_means/layer1.0.se"].dtype == np.float32 and saved["mean/layer2.1.se"].shape == (32,)
    for name in SE_RESNET20_BLOCKS:
        assert name in printed

    # the numbers belong to the first test image of each class: recompute them from the checkpoint
    weights, _, meta = load_checkpoint(se_run / "last.npz")
    data = load_cifar("cifar10", root=meta["config"]["data_dir"], download=False, progress=False)
    np.testing.assert_array_equal(saved["counts"], np.minimum(np.bincount(data.test_labels, minlength=10), 1))
    model = build_model(meta["config"], 10)
    model.load_state_dict(weights)
    chosen = first_per_class(data.test_labels, 1, 10)
    gates = collect_gates(model, normalize(data.test_images[chosen], data.mean, data.std))
    for name in SE_RESNET20_BLOCKS:
        expected = class_means(gates[name], data.test_labels[chosen], 10)
        np.testing.assert_allclose(saved[f"class_means/{name}"], expected, rtol=1e-5, equal_nan=True)


def test_a_run_folder_means_its_best_checkpoint_else_its_last(tmp_path):
    (tmp_path / "last.npz").touch()
    assert find_checkpoint(str(tmp_path)) == str(tmp_path / "last.npz")
    (tmp_path / "best.npz").touch()
    assert find_checkpoint(str(tmp_path)) == str(tmp_path / "best.npz")


def test_missing_checkpoints_and_models_without_se_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at"):
        analyze_main([str(tmp_path / "missing.npz")])
    with pytest.raises(SystemExit, match=r"no best\.npz or last\.npz"):
        analyze_main([str(tmp_path)])
    config = quick_config(tmp_path)  # ResNet-20: no SE blocks (found before any data is read)
    model = build_model(config, 10)
    meta = {"state": {"epoch": 0}, "config": config}
    save_checkpoint(tmp_path / "plain.npz", model, SGD(model.parameters(), 0.1), meta)
    with pytest.raises(SystemExit, match="resnet20, which has no SE blocks"):
        analyze_main([str(tmp_path / "plain.npz")])
