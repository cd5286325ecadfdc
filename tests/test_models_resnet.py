"""CIFAR ResNets, the bottleneck ResNet-164, ResNeXt, and where the SE block sits (paper Fig. 5).

The reference for every number is independent of tinyse: the PyTorch twins of
tinyse.testing.twins, written from the papers (He et al. 2016 for the CIFAR
ResNets and their option-A shortcut, Xie et al. 2017 for ResNeXt, Hu et al. 2018
for SE and its integration strategies), with the same attribute names so that
state_dict keys match; arithmetic from the architecture for parameter counts;
and the Kaiming-normal formula for the initial weights.
"""
import re
import sys

import numpy as np
import pytest
import torch

import tinyse.functional as F
from tinyse import models
from tinyse.models import se_options
from tinyse.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResidualUnit,
    resnet_basic,
    resnet_bottleneck,
    whiten_stem,
    zero_init_residuals,
)
from tinyse.nn import BatchNorm2d, Conv2d, SEBlock, init, manual_seed
from tinyse.tensor import Tensor
from tinyse.testing.twins import (
    PAPER_SE,
    TorchBasicBlock,
    TorchBottleneck,
    TorchCifarResNet,
    load_into_twin,
    paper_se,
    twin_for_name,
)

from conftest import DEVICES, assert_model_matches_torch, assert_train_and_eval_match_torch, rel_error

MODEL_TOLERANCE = {np.float64: 1e-8, np.float32: 1e-3}  # whole models: relative error of each tensor
BLOCK_TOLERANCE = {np.float64: 1e-10, np.float32: 1e-4}
DTYPE_DEVICES = [(np.float64, "cpu")] + [
    pytest.param(np.float32, d.values[0] if hasattr(d, "values") else d, marks=getattr(d, "marks", ()))
    for d in DEVICES
]
INTEGRATIONS = ("standard", "pre", "post", "identity")


RESNET_NAMES = [f"{p}resnet{d}" for p in ("", "se_") for d in (20, 32, 44, 56, 110, 164)] + [
    "resnext29_4x8d", "se_resnext29_4x8d"]


def spread_se_weights(model, rng):
    """Give every SE block's layers weights of scale 1, so gates vary far from 1/2 across channels and samples
    (the default init would also do, but this makes the placement tests unmistakable)."""
    for module in model.modules():
        if isinstance(module, SEBlock):
            for p in module.parameters():
                p.data = rng.standard_normal(p.shape).astype(p.dtype)


def unit_channels(name, kind):
    """(in, out) channels of unit ``layer{s}.{i}`` from the architecture (not from the tinyse module)."""
    stage, index = int(name[5]), int(name.split(".")[1])
    first = 16 if kind == "basic" else 64
    out = first * 2 ** (stage - 1)
    if index > 0:
        return out, out
    return (16, out) if stage == 1 else (first * 2 ** (stage - 2), out)


def units(model):
    return [(n, m) for n, m in model.named_modules() if re.fullmatch(r"layer\d\.\d+", n)]


# --- whole-model parity with PyTorch -------------------------------------------------------------
PARITY_MODELS = {
    # name: (tinyse builder, torch builder, input shape)
    "se_resnet20": (lambda: models.create("se_resnet20"), lambda: twin_for_name("se_resnet20"), (4, 3, 32, 32)),
    "se_resnext29_4x8d": (
        lambda: models.create("se_resnext29_4x8d"), lambda: twin_for_name("se_resnext29_4x8d"), (4, 3, 16, 16)),
    "se_resnext11_4x4d": (
        lambda: resnet_bottleneck(depth=11, cardinality=4, group_width=4, se=True),
        lambda: TorchCifarResNet("bottleneck", 11, se=paper_se(), cardinality=4, group_width=4),
        (4, 3, 8, 8),
    ),
}


@pytest.mark.parametrize("dtype, device", DTYPE_DEVICES)
@pytest.mark.parametrize("name", PARITY_MODELS)
def test_whole_model_matches_torch_twin(name, dtype, device):
    """Holding the same weights (tinyse's, copied with a strict torch load_state_dict), tinyse and its torch twin
    agree in training mode (logits, the gradient of the input and of every parameter, the batch norm running
    statistics the step leaves), then in eval mode (the same, normalising with those statistics)."""
    rng = np.random.default_rng(20)
    make, make_twin, shape = PARITY_MODELS[name]
    manual_seed(20)
    model = make().to(device=device, dtype=dtype)
    twin = load_into_twin(model, make_twin(), dtype)
    x = rng.standard_normal(shape).astype(dtype)
    assert_train_and_eval_match_torch(model, twin, x, MODEL_TOLERANCE[dtype], device)
    counters = [int(v) for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")]
    assert len(counters) > 10 and set(counters) == {1}  # the training batch counted, the eval batch not


SMALL_VARIANTS = {
    # depth-8 basic ResNets (one unit per stage) with every SE option the paper ablates
    **{f"integration_{w}": {"se": paper_se(integration=w)} for w in INTEGRATIONS},
    "squeeze_max_tanh": {"se": paper_se(squeeze="max", excitation="tanh", reduction=4)},
    "relu_gate": {"se": paper_se(excitation="relu", reduction=8)},
    "stage_2_only": {"se": paper_se(stages=(2,))},
    "shortcut_B": {"se": paper_se(), "shortcut": "B"},
    "plain": {},
}


@pytest.mark.parametrize("variant", SMALL_VARIANTS)
def test_small_resnet_variants_match_torch_twin(variant):
    """A depth-8 ResNet (one unit per stage) with each SE option agrees with its torch twin in float64, forward
    and backward, in training mode and then in eval mode."""
    rng = np.random.default_rng(21)
    options = SMALL_VARIANTS[variant]
    manual_seed(21)
    model = resnet_basic(8, **options).to(dtype=np.float64)
    spread_se_weights(model, rng)
    twin = load_into_twin(model, TorchCifarResNet("basic", 8, **options), np.float64)
    assert_train_and_eval_match_torch(model, twin, rng.standard_normal((4, 3, 8, 8)), MODEL_TOLERANCE[np.float64])


def test_torch_weights_loaded_into_tinyse_give_torch_outputs():
    """The other direction: a torch SE-ResNet-20 (torch's own init, statistics moved by a step) exported as
    {k: v.numpy()} loads into tinyse's se_resnet20, which then computes torch's logits in both modes."""
    rng = np.random.default_rng(22)
    torch.manual_seed(22)
    twin = twin_for_name("se_resnet20").double()
    x = rng.standard_normal((2, 3, 32, 32))
    twin(torch.from_numpy(rng.standard_normal((4, 3, 32, 32))))
    model = models.create("se_resnet20").to(dtype=np.float64)
    model.load_state_dict({k: v.numpy() for k, v in twin.state_dict().items()})
    model.eval(), twin.eval()
    assert rel_error(model(Tensor(x)).data, twin(torch.from_numpy(x))) < 1e-8
    model.train(), twin.train()
    assert rel_error(model(Tensor(x)).data, twin(torch.from_numpy(x))) < 1e-8


def test_saved_model_reloads_into_a_differently_seeded_one(tmp_path):
    """se_resnext29_4x8d after a training step, saved to .npz and loaded into the same network built with
    another seed, gives bit-identical logits in eval and training mode (weights and running statistics moved)."""
    rng = np.random.default_rng(27)
    x = Tensor(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    model = models.create("se_resnext29_4x8d", seed=1)
    model(x)
    model.save(tmp_path / "m.npz")
    fresh = models.create("se_resnext29_4x8d", seed=2)
    model.eval(), fresh.eval()
    assert not np.array_equal(model(x).data, fresh(x).data)
    fresh.load_state_dict(tmp_path / "m.npz")
    np.testing.assert_array_equal(model(x).data, fresh(x).data)
    model.train(), fresh.train()
    np.testing.assert_array_equal(model(x).data, fresh(x).data)


# --- structure: state_dict keys and parameter counts ----------------------------------------------------
@pytest.mark.parametrize("name", RESNET_NAMES)
def test_state_dict_keys_and_parameter_count_match_torch_twin(name):
    """Every ResNet of the registry has exactly its torch twin's state_dict keys, in order (batch norm's
    num_batches_tracked included), with the same shapes, and as many parameters (sum of numel)."""
    model, twin = models.create(name), twin_for_name(name)
    state, torch_state = model.state_dict(), twin.state_dict()
    assert list(state) == list(torch_state)
    assert any(k.endswith("num_batches_tracked") for k in state)
    for key, value in state.items():
        assert value.shape == tuple(torch_state[key].shape), key
    assert model.num_parameters() == sum(p.numel() for p in twin.parameters())
    assert sum(p.size for p in model.parameters()) == model.num_parameters()


def test_resnet20_has_269722_parameters():
    """ResNet-20 (option A, 10 classes) has 269,722 parameters: the count from the architecture, term by term
    (3x3 convs without bias, batch norm weight + bias, the final linear layer)."""
    conv = lambda cin, cout: 9 * cin * cout  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    stem = conv(3, 16) + bn(16)
    stage1 = 3 * (2 * conv(16, 16) + 2 * bn(16))
    stage2 = conv(16, 32) + conv(32, 32) + 2 * bn(32) + 2 * (2 * conv(32, 32) + 2 * bn(32))
    stage3 = conv(32, 64) + conv(64, 64) + 2 * bn(64) + 2 * (2 * conv(64, 64) + 2 * bn(64))
    fc = 64 * 10 + 10
    assert stem + stage1 + stage2 + stage3 + fc == 269_722
    assert models.create("resnet20").num_parameters() == 269_722
    # SE adds, per unit, fc1 (C -> C/16) and fc2 (C/16 -> C) with biases
    se = sum(3 * (2 * c * max(1, c // 16) + max(1, c // 16) + c) for c in (16, 32, 64))
    assert models.create("se_resnet20").num_parameters() == 269_722 + se


@pytest.mark.parametrize("stages", [(1,), (2,), (3,), (1, 3)])
def test_se_stages_option_puts_se_only_in_those_stages(stages):
    """se={"stages": ...} (the paper's one-stage-at-a-time ablation) gives SE blocks to the units of those
    stages only; the parameter count matches the torch twin built with the same stages."""
    model = resnet_basic(20, se={"stages": stages})
    for name, unit in units(model):
        assert (unit.se is not None) == (int(name[5]) in stages), name
    assert model.num_parameters() == sum(p.numel() for p in TorchCifarResNet(
        "basic", 20, se=paper_se(stages=stages)).parameters())


# --- integration strategies (paper Fig. 5) -----------------------------------------------------------------
@pytest.mark.parametrize("where", INTEGRATIONS)
@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
def test_se_block_width_follows_the_integration(kind, where):
    """In every unit of a model the SE block recalibrates the tensor the paper says: the unit's input
    (in_channels, which differ in a downsampling unit) for "pre", its output (out_channels) otherwise;
    fc1 then has max(1, C // 16) units."""
    model = (resnet_basic(20, se={"integration": where}) if kind == "basic"
             else resnet_bottleneck(29, se={"integration": where}, cardinality=2, group_width=4))
    checked_downsampling = False
    for name, unit in units(model):
        cin, cout = unit_channels(name, kind)
        assert unit.integration == where
        expected = cin if where == "pre" else cout
        assert unit.se.channels == expected, name
        assert unit.se.fc1.weight.shape == (max(1, expected // 16), expected), name
        checked_downsampling |= cin != cout and name != "layer1.0"
    assert checked_downsampling


BLOCKS = {
    # name: (in, out, stride, tinyse block, torch block) — one plain and one downsampling unit of each kind
    "basic": (16, 16, 1, lambda se: BasicBlock(16, 16, 1, "A", se, stage=1),
              lambda se: TorchBasicBlock(16, 16, 1, "A", se, stage=1)),
    "basic_down_A": (16, 32, 2, lambda se: BasicBlock(16, 32, 2, "A", se, stage=2),
                     lambda se: TorchBasicBlock(16, 32, 2, "A", se, stage=2)),
    "basic_down_B": (16, 32, 2, lambda se: BasicBlock(16, 32, 2, "B", se, stage=2),
                     lambda se: TorchBasicBlock(16, 32, 2, "B", se, stage=2)),
    "resnext_down": (32, 64, 2, lambda se: Bottleneck(32, 64, 2, "B", se, stage=2, width=16, groups=4),
                     lambda se: TorchBottleneck(32, 64, 2, "B", se, stage=2, width=16, groups=4)),
}


@pytest.mark.parametrize("dtype, device", DTYPE_DEVICES)
@pytest.mark.parametrize("where", INTEGRATIONS)
@pytest.mark.parametrize("block", BLOCKS)
def test_block_with_se_at_each_position_matches_torch(block, where, dtype, device):
    """A residual unit with SE at each of the paper's positions computes what the torch unit with SE written
    at that position computes: output, input gradient, every parameter's gradient, the running statistics."""
    rng = np.random.default_rng(23)
    cin, cout, stride, make, make_twin = BLOCKS[block]
    se = paper_se(integration=where, reduction=4)
    manual_seed(23)
    unit = make(se_options.resolve({"integration": where, "reduction": 4}))
    spread_se_weights(unit, rng)
    unit.to(device=device, dtype=dtype)
    twin = load_into_twin(unit, make_twin(se), dtype)
    x = rng.standard_normal((2, cin, 6, 6)).astype(dtype)
    y = assert_model_matches_torch(unit, twin, x, BLOCK_TOLERANCE[dtype], device)
    assert y.shape == (2, cout, 6 // stride, 6 // stride)


@pytest.mark.parametrize("where", INTEGRATIONS)
@pytest.mark.parametrize("block", ["basic", "resnext"])
def test_se_is_at_its_position_and_no_other(block, where):
    """The tinyse unit with SE at ``where`` matches the torch computation with SE there and differs clearly
    from the computations with the same weights and SE at each of the other three positions, so moving the
    block (or dropping it) is caught. (A unit whose input and output widths agree, so one SE fits everywhere.)"""
    rng = np.random.default_rng(24)
    manual_seed(24)
    resolved = se_options.resolve({"integration": where, "reduction": 4})
    if block == "basic":
        unit = BasicBlock(16, 16, 1, "A", resolved, stage=1)
        make_twin = lambda se: TorchBasicBlock(16, 16, 1, "A", se, stage=1)  # noqa: E731
    else:
        unit = Bottleneck(64, 64, 1, "B", resolved, stage=1, width=16, groups=4)
        make_twin = lambda se: TorchBottleneck(64, 64, 1, "B", se, stage=1, width=16, groups=4)  # noqa: E731
    spread_se_weights(unit, rng)
    unit.to(dtype=np.float64)
    state = {k: torch.from_numpy(v) for k, v in unit.state_dict().items()}
    x = rng.standard_normal((2, unit.conv1.in_channels, 6, 6))
    out = unit(Tensor(x)).data
    errors = {}
    for other in INTEGRATIONS:
        twin = make_twin(paper_se(integration=other, reduction=4)).double()
        twin.load_state_dict(state)
        errors[other] = rel_error(out, twin(torch.from_numpy(x)))
    twin = make_twin(None).double()
    twin.load_state_dict({k: v for k, v in state.items() if not k.startswith("se.")})
    errors[None] = rel_error(out, twin(torch.from_numpy(x)))
    assert errors[where] < 1e-10
    for other, error in errors.items():
        if other != where:
            assert error > 1e-2, (other, errors)


# --- initialisation ---------------------------------------------------------------------------------
def conv_weights(model):
    return [(n, m.weight.data.astype(np.float64)) for n, m in model.named_modules() if isinstance(m, Conv2d)]


def kaiming_fan_out_std(shape):
    """He et al.'s std for ReLU nets with fan_out = out_channels * KH * KW: sqrt(2 / fan_out)."""
    return np.sqrt(2.0 / (shape[0] * shape[2] * shape[3]))


@pytest.mark.parametrize("name", ["se_resnet20", "resnet164", "se_resnext29_4x8d"])
def test_convs_start_kaiming_normal_fan_out(name):
    """Every conv weight is N(0, 2 / fan_out): the largest conv's empirical std is within 3% of
    sqrt(2 / fan_out) (and far from the fan_in rule where it differs); all convs, each divided by its own
    expected std, pool to mean 0, std 1 (within 2%) and the kurtosis 3 of a normal (a uniform gives 1.8)."""
    model = models.create(name, seed=0)
    convs = conv_weights(model)
    _, big = max(convs, key=lambda c: c[1].size)
    assert big.size >= 30_000
    assert abs(big.std() / kaiming_fan_out_std(big.shape) - 1) < 0.03
    z = np.concatenate([(w / kaiming_fan_out_std(w.shape)).ravel() for _, w in convs])
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert abs(((z - z.mean()) ** 4).mean() / z.var() ** 2 - 3) < 0.15
    # where fan_in and fan_out differ (a conv that changes the channel count), the fan_out rule is the one used
    for conv_name, w in convs:
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        fan_out = w.shape[0] * w.shape[2] * w.shape[3]
        if w.size >= 4000 and max(fan_in, fan_out) >= 2 * min(fan_in, fan_out):
            assert abs(w.std() / kaiming_fan_out_std(w.shape) - 1) < 0.1, conv_name


@pytest.mark.parametrize("name", ["se_resnet20", "se_resnext29_4x8d"])
def test_batchnorms_start_at_weight_1_bias_0(name):
    """Every batch norm starts as torch's: weight 1, bias 0, running mean 0, running var 1, counter 0."""
    bns = [m for m in models.create(name, seed=0).modules() if isinstance(m, BatchNorm2d)]
    assert len(bns) > 10
    for bn in bns:
        assert np.all(bn.weight.data == 1) and np.all(bn.bias.data == 0)
        assert np.all(bn.running_mean == 0) and np.all(bn.running_var == 1) and int(bn.num_batches_tracked) == 0


@pytest.mark.parametrize("model", [lambda: models.create("resnet20", seed=0),
                                   lambda: models.create("se_resnet20", seed=0),
                                   lambda: resnet_bottleneck(11, se=True)],
                         ids=["resnet20", "se_resnet20", "se_bottleneck"])
def test_zero_init_residuals_starts_every_unit_as_relu_of_its_shortcut(model):
    """With the last batch norm of each branch at weight 0, each unit's output is relu(shortcut(x)) exactly
    (the SE block scales a zero branch to zero), in training and in evaluation; nothing else is touched."""
    net = model()
    units = [m for m in net.modules() if isinstance(m, ResidualUnit)]
    before = {k: v.copy() for k, v in net.state_dict().items()}
    assert zero_init_residuals(net) == len(units) > 0
    last = {id(unit.last_norm().weight) for unit in units}
    for name, param in net.named_parameters():
        expected = 0 if id(param) in last else before[name]
        assert np.array_equal(param.data, np.broadcast_to(expected, param.data.shape)), name
    x = Tensor(np.random.default_rng(0).standard_normal((4, units[0].conv1.weight.shape[1], 8, 8)))
    for training in (True, False):
        net.train(training)
        out = units[0](x).data
        assert np.array_equal(out, np.maximum(units[0].shortcut(x).data, 0))


def correlated_images(n=64, size=12, seed=0):
    """Images whose neighbouring pixels and channels are correlated, as in photographs: noise smoothed over
    2x2 neighbourhoods and mixed across the 3 channels. (n, 3, size, size) float64."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, 3, size + 1, size + 1))
    smooth = noise[..., 1:, 1:] + noise[..., :-1, 1:] + noise[..., 1:, :-1] + noise[..., :-1, :-1]
    return np.einsum("dc,nchw->ndhw", np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 1.0]]), smooth)


def test_whiten_stem_gives_uncorrelated_unit_variance_outputs_along_the_leading_directions_of_the_patches():
    """Reference: the patches cut by torch's unfold and their principal directions from an SVD. The stem's 16
    filters are + and - 8 directions: the 8 leading ones of the patches (the same subspace), and their outputs on
    the same images (torch's conv, no padding) are uncorrelated with variance lam / (lam + eps), here >= 0.99."""
    images = correlated_images()
    net = models.create("se_resnet20", seed=0)
    whiten_stem(net, images)
    weight = net.conv1.weight.data
    assert weight.shape == (16, 3, 3, 3) and weight.dtype == np.float32
    np.testing.assert_array_equal(weight[8:], -weight[:8])
    patches = torch.nn.functional.unfold(torch.from_numpy(images), 3).transpose(1, 2).reshape(-1, 27).numpy()
    leading = np.linalg.svd(patches, full_matrices=False)[2][:8]  # (8, 27), orthonormal rows
    directions = weight[:8].reshape(8, 27).astype(np.float64)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    np.testing.assert_allclose(directions @ directions.T, np.eye(8), atol=1e-5)  # orthogonal
    np.testing.assert_allclose(leading.T @ leading @ directions.T, directions.T, atol=1e-4)  # in the leading span
    outputs = torch.nn.functional.conv2d(torch.from_numpy(images), torch.from_numpy(weight).double()).numpy()
    flat = outputs.transpose(1, 0, 2, 3).reshape(16, -1)
    np.testing.assert_allclose(flat[:8] @ flat[:8].T / flat.shape[1], np.eye(8), atol=0.01)


def test_whitening_refuses_what_it_cannot_build():
    images = correlated_images(n=4)
    with pytest.raises(ValueError, match="out_channels must be even and at most 2 \\* 27"):
        init.whitening_filters(images, 15, 3)
    with pytest.raises(ValueError, match="out_channels must be even and at most 2 \\* 27"):
        init.whitening_filters(images, 56, 3)
    assert init.whitening_filters(images, 54, 3).shape == (54, 3, 3, 3)  # every direction, both signs
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        init.whitening_filters(images[..., :2, :2], 16, 3)
    with pytest.raises(ValueError, match="whiten_stem: CifarInception is not a CIFAR ResNet"):
        whiten_stem(models.create("inception"), images)


@pytest.mark.parametrize("name", ["se_resnet20", "se_resnext29_4x8d"])
def test_seed_makes_creation_reproducible(name):
    """create(name, seed=s) twice gives identical weights (whatever was drawn in between); another seed gives
    different weights in every conv and linear layer."""
    a = models.create(name, seed=3).state_dict()
    models.create(name)  # draws from the generator in between
    b = models.create(name, seed=3).state_dict()
    c = models.create(name, seed=4).state_dict()
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for key in a:
        if key.endswith(".weight") and a[key].ndim >= 2:
            assert not np.array_equal(a[key], c[key]), key


# --- deep networks --------------------------------------------------------------------------------------
def stack_depth():
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


@pytest.mark.parametrize("name", ["resnet110", "se_resnet164"])
def test_deep_resnets_run_forward_and_backward(name):
    """ResNet-110 and SE-ResNet-164 (54 residual units: a graph hundreds of ops deep) run forward and backward
    on the CPU with only 150 Python frames to spare, so neither pass recurses along the graph; every parameter
    then holds a finite gradient of its own shape and dtype."""
    rng = np.random.default_rng(25)
    model = models.create(name, seed=25)
    assert len(units(model)) == 54
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(stack_depth() + 150)
    try:
        loss = F.cross_entropy(model(Tensor(x)), np.array([3, 7]))
        loss.backward()
    finally:
        sys.setrecursionlimit(limit)
    assert loss.dtype == np.float32 and np.isfinite(loss.item())
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert p.grad.shape == p.shape and p.grad.dtype == p.dtype == np.float32, pname
        assert np.all(np.isfinite(p.grad)), pname
    assert any(np.any(p.grad != 0) for p in model.layer1[0].parameters())  # the gradient reached the bottom


# --- the registry ------------------------------------------------------------------------------------------
def test_unknown_model_name_lists_the_known_names():
    """create() with an unknown name raises ValueError naming it and every registered model."""
    with pytest.raises(ValueError) as info:
        models.create("resnet21")
    message = str(info.value)
    assert "resnet21" in message
    for name in set(models.list()) | set(RESNET_NAMES):
        assert re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", message), name


def test_registry_lists_the_resnets():
    """list() is sorted and holds every CIFAR ResNet above (He et al.'s depths 20 to 164, the ResNeXt-29), plain
    and SE."""
    names = models.list()
    assert names == sorted(names) and set(RESNET_NAMES) <= set(names)


def test_se_keywords_on_a_plain_model_are_refused():
    """create("resnet20", reduction=8) is refused with a ValueError naming the option and pointing to se=."""
    with pytest.raises(ValueError, match=r"reduction.*se=") as info:
        models.create("resnet20", reduction=8)
    assert "se_" in str(info.value)


@pytest.mark.parametrize(
    "options, choices",
    [({"integration": "middle"}, INTEGRATIONS), ({"reduce": 4}, tuple(PAPER_SE)), ({"squeeze": "sum"}, ("avg", "max"))],
)
def test_bad_se_options_name_the_choices(options, choices):
    """An unknown SE option or value raises ValueError listing the valid ones."""
    with pytest.raises(ValueError) as info:
        models.create("resnet20", se=options)
    for choice in choices:
        assert choice in str(info.value), choice


@pytest.mark.parametrize("factory, depth", [(resnet_basic, 21), (resnet_bottleneck, 30)])
def test_bad_depth_is_refused(factory, depth):
    """A depth that is not 6n + 2 (basic) / 9n + 2 (bottleneck) raises ValueError naming it."""
    with pytest.raises(ValueError, match=str(depth)):
        factory(depth)


def test_se_name_with_keywords_equals_plain_name_with_se_dict():
    """create("se_resnet20", reduction=8) is create("resnet20", se={"reduction": 8}): the same structure (repr,
    state_dict keys and shapes), parameter count, hidden widths C // 8, and with one seed the same weights and
    logits."""
    a = models.create("se_resnet20", reduction=8, seed=1)
    b = models.create("resnet20", se={"reduction": 8}, seed=1)
    assert repr(a) == repr(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)
    assert a.num_parameters() == b.num_parameters() == sum(
        p.numel() for p in TorchCifarResNet("basic", 20, se=paper_se(reduction=8)).parameters())
    assert a.layer3[1].se.fc1.weight.shape == (64 // 8, 64)
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    x = Tensor(np.random.default_rng(26).standard_normal((2, 3, 8, 8)).astype(np.float32))
    np.testing.assert_array_equal(a(x).data, b(x).data)


def test_num_classes_sets_the_classifier():
    """num_classes sets the final layer's width (and nothing else), as in the torch twin."""
    model = models.create("se_resnet20", num_classes=100)
    assert model.fc.weight.shape == (100, 64)
    assert model.num_parameters() == sum(p.numel() for p in twin_for_name("se_resnet20", 100).parameters())


def test_print_shows_the_network():
    """print(model) shows the stages, the units' convs with their strides, the shortcut and the SE settings."""
    text = repr(models.create("se_resnet20", reduction=8))
    for fragment in ["(layer1): Sequential", "(layer3): Sequential", "(se): SEBlock(64, reduction=8",
                     "(shortcut): ShortcutA(16 -> 32, stride=2", "(fc): Linear(in_features=64, out_features=10"]:
        assert fragment in text, fragment
    assert re.search(r"\(conv1\): Conv2d\(16, 32, kernel_size=3x3, stride=2", text)
