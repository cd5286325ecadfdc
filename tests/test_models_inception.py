"""The CIFAR Inception and SE-Inception against their PyTorch twin (tinyse.testing.twins.TorchInception).

The twin is built only from the description of the network (tinyse/models/inception.py's
docstring): every conv is conv -> batch norm -> ReLU; a module runs 1x1 | 1x1 -> 3x3 |
1x1 -> 3x3 -> 3x3 | 3x3 max pool -> 1x1 side by side and concatenates them; in
SE-Inception an SE block (avg squeeze, C -> max(1, C // r) -> C, ReLU, sigmoid) rescales
the concatenated output. Its attribute names are tinyse's, so the two state dicts have
the same keys and ``load_state_dict(strict=True)`` moves every weight across.
"""
import numpy as np
import pytest

from tinyse import models
from tinyse.nn import Sequential
from tinyse.testing.twins import INCEPTION_ARCHITECTURE, TorchInception, load_into_twin

from conftest import DEVICES, assert_train_and_eval_match_torch

TOLERANCE = {np.float64: 1e-8, np.float32: 1e-3}  # relative error per tensor


# --- helpers -------------------------------------------------------------------------------------
def make_pair(reduction, dtype, device="cpu", seed=0):
    """tinyse (se_)inception in ``dtype`` on ``device`` and its float64 twin (CPU) holding the same weights.

    Batch norms get random weights, biases and running statistics first (through tinyse's
    load_state_dict), so the comparison does not rest on their 1 / 0 initial values.
    The twin is float64 even for a float32 tinyse model: PyTorch's own float32 result
    differs from its float64 one by up to ~2e-3 on some gradients of this network, so
    the exact (float64) result is the reference, and float32 tinyse must be near it.
    """
    name = "se_inception" if reduction else "inception"
    model = models.create(name, seed=seed, **({"reduction": reduction} if reduction else {}))
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith(("bn.weight", "running_var")):
            state[key] = rng.uniform(0.5, 1.5, value.shape).astype(value.dtype)
        elif key.endswith(("bn.bias", "running_mean")):
            state[key] = (0.1 * rng.standard_normal(value.shape)).astype(value.dtype)
    model.load_state_dict(state)
    twin = load_into_twin(model, TorchInception(reduction), np.float64)
    model.to(device, dtype)
    return model, twin


def check_training_and_eval(reduction, dtype, device, size):
    """Forward and backward in training mode, then in eval mode, on a batch of 4 random ``size`` x ``size``
    images (16 also runs every layer: stages at 16, 8, 4): outputs, every gradient and the batch norm state agree."""
    model, twin = make_pair(reduction, dtype, device)
    x = np.random.default_rng(1).standard_normal((4, 3, size, size)).astype(dtype)
    assert_train_and_eval_match_torch(model, twin, x, TOLERANCE[dtype], device)


# --- the tests -----------------------------------------------------------------------------------
def test_se_inception_matches_torch_twin_float64():
    """SE-Inception (r = 16) equals its twin in float64 on 32x32 images, forward and backward, in training mode
    (and the BN running statistics it leaves) and then in eval mode: each tensor within 1e-8."""
    check_training_and_eval(16, np.float64, "cpu", size=32)


def test_plain_inception_matches_torch_twin_float64():
    """Plain Inception (se=None) equals its twin without SE blocks, in training and in eval mode."""
    check_training_and_eval(None, np.float64, "cpu", size=16)


@pytest.mark.parametrize("device", DEVICES)
def test_se_inception_matches_torch_twin_float32(device):
    """The same for float32 SE-Inception (r = 4) on each device (tinyse there, PyTorch on the CPU), within 1e-3."""
    check_training_and_eval(4, np.float32, device, size=16)


@pytest.mark.parametrize("reduction", [None, 16, 4])
def test_parameter_counts_and_keys_match_the_twin(reduction):
    """Same parameter count and exactly the same state-dict keys and shapes as the twin (plain and SE)."""
    name = "se_inception" if reduction else "inception"
    model = models.create(name, **({"reduction": reduction} if reduction else {}))
    twin = TorchInception(reduction)
    assert model.num_parameters() == sum(p.numel() for p in twin.parameters())
    ours = {k: v.shape for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in twin.state_dict().items()}


def test_se_rescales_the_joined_module_output():
    """Each module's SE block has as many channels as the four branches together (c1 + c3 + c5 + pool_proj)."""
    model = models.create("se_inception")
    modules = [m for m in model.features if type(m).__name__ == "InceptionModule"]
    assert len(modules) == len(INCEPTION_ARCHITECTURE)
    for module, (_, (c1, _, c3, _, c5, pool_proj)) in zip(modules, INCEPTION_ARCHITECTURE):
        joined = c1 + c3 + c5 + pool_proj
        branches = (module.branch1x1, module.branch3x3, module.branch5x5, module.branch_pool)
        branch_outputs = sum((b[-1] if isinstance(b, Sequential) else b).conv.out_channels for b in branches)
        assert module.se.channels == module.se.fc1.in_features == branch_outputs == joined


@pytest.mark.parametrize("stages", [(1,), (2,), (3,), (1, 3)])
def test_se_stages_option_follows_the_stage_of_each_module(stages):
    """se stages=(...) puts SE exactly in the modules of those stages (stage 1 at 32x32, 2 at 16x16, 3 at 8x8)."""
    model = models.create("se_inception", stages=stages)
    modules = [m for m in model.features if type(m).__name__ == "InceptionModule"]
    assert [m.se is not None for m in modules] == [stage in stages for stage, _ in INCEPTION_ARCHITECTURE]


@pytest.mark.parametrize("integration", ["pre", "post", "identity"])
def test_inception_rejects_residual_integrations(integration):
    """An Inception module has no residual branch: integration other than 'standard' is a ValueError."""
    with pytest.raises(ValueError, match="standard"):
        models.create("se_inception", integration=integration)
    models.create("se_inception", integration="standard")  # the one that is accepted
