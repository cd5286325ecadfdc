"""tinyse.summary: parameter totals, multiply-adds, side effects (tracer, modes, BN state), and the CLI.

References are computed here from the architectures and layer shapes (the formulas
in tinyse/summary.py's docstring), or come from PyTorch (conv output shapes) and
the module tree (num_parameters) -- never from numbers printed by a summary run.
"""
import math

import numpy as np
import pytest
import torch

import tinyse
import tinyse.nn.module as module_lib
from tinyse import models
from tinyse.models.__main__ import main
from tinyse.nn import Conv2d, Flatten, Linear, Module, Parameter, SEBlock, Sequential
from tinyse.summary import summary

from conftest import DEVICES

CIFAR = (1, 3, 32, 32)


# --- independent references ------------------------------------------------------------------------
def conv_macs(n, c, o, k, size, groups=1):
    """N * OH * OW * O * (C / groups) * K * K for a square output of side ``size``."""
    return n * size * size * o * (c // groups) * k * k


def resnet20_layers():
    """(in, out, stride, output size) of every 3x3 conv of ResNet-20: stem, then 3 stages x 3 blocks x 2 convs."""
    convs, channels, size = [(3, 16, 1, 32)], 16, 32
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        for block in range(3):
            s = stride if block == 0 else 1
            size //= s
            convs += [(channels, width, s, size), (width, width, 1, size)]
            channels = width
    return convs


def resnet20_macs(n=1):
    """ResNet-20's multiply-adds from its architecture: 19 3x3 convs plus fc 64 -> 10 (about 40.55 M)."""
    return sum(conv_macs(n, c, o, 3, size) for c, o, _, size in resnet20_layers()) + n * 64 * 10


def resnet20_params():
    """Conv weights (no bias) + 2 per BN channel + fc 64 * 10 + 10."""
    return sum(c * o * 9 + 2 * o for c, o, _, _ in resnet20_layers()) + 64 * 10 + 10


def se_cost(c, size, r, n=1):
    """(params, multiply-adds) of one SE block on C channels at size x size: 2 C h + C + h; N (2 C h + C H W)."""
    hidden = max(1, c // r)
    return 2 * c * hidden + c + hidden, n * (2 * c * hidden + c * size * size)


def rows_of(result, type_name):
    return [row for row in result["rows"] if row["type"] == type_name]


# --- totals ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet20", "se_resnet20", "resnet164", "se_resnext29_4x8d", "se_inception"])
def test_total_parameters_equal_num_parameters(name):
    """Every parameter is counted exactly once: the rows add up to model.num_parameters(), nothing left over."""
    model = models.create(name)
    result = summary(model, CIFAR, show=False)
    assert result["total_params"] == model.num_parameters()
    assert sum(row["params"] for row in result["rows"]) == model.num_parameters()
    assert result["other_params"] == 0


def test_parameters_of_non_leaf_modules_and_unused_modules_count_in_the_total():
    """A parameter owned directly by a non-leaf module, and a submodule never called, land in other_params."""

    class Scaled(Module):
        def __init__(self):
            super().__init__()
            self.fc = Linear(6, 4)
            self.unused = Linear(4, 3)
            self.scale = Parameter(np.ones(4, np.float32))

        def forward(self, x):
            return self.fc(x) * self.scale

    model = Scaled()
    result = summary(model, (2, 6), show=False)
    assert [row["name"] for row in result["rows"]] == ["fc"]
    assert result["rows"][0]["params"] == 6 * 4 + 4
    assert result["other_params"] == 4 + (4 * 3 + 3)
    assert result["total_params"] == model.num_parameters() == 6 * 4 + 4 + 4 + 4 * 3 + 3


def test_resnet20_matches_its_architecture():
    """ResNet-20: 40,551,040 multiply-adds (about 40.55 M) and 269,722 parameters, both computed from the
    architecture; every conv row has the stage's width and resolution; MACs scale with the batch."""
    model = models.create("resnet20")
    result = summary(model, CIFAR, show=False)
    assert result["total_macs"] == resnet20_macs() and round(resnet20_macs() / 1e6, 2) == 40.55
    assert result["total_params"] == resnet20_params()
    convs = rows_of(result, "Conv2d")
    assert [row["output_shape"] for row in convs] == [(1, o, size, size) for _, o, _, size in resnet20_layers()]
    assert [row["macs"] for row in convs] == [conv_macs(1, c, o, 3, size) for c, o, _, size in resnet20_layers()]
    assert rows_of(result, "Linear")[0]["macs"] == 64 * 10
    assert summary(model, (3, 3, 32, 32), show=False)["total_macs"] == resnet20_macs(n=3)


@pytest.mark.parametrize("name", ["resnet164", "se_resnext29_4x8d", "se_inception"])
def test_conv_and_linear_macs_from_their_shapes(name):
    """Each Conv2d row: N * OH * OW * weight.size (weight is O x C/groups x KH x KW); each Linear: N * weight.size;
    layers without multiplies (BN, pooling, shortcuts) are 0; the total is the sum of the rows."""
    model = models.create(name)
    modules = dict(model.named_modules())
    result = summary(model, (2, 3, 32, 32), show=False)
    for row in result["rows"]:
        module = modules[row["name"]]
        if isinstance(module, Conv2d):
            n, o, oh, ow = row["output_shape"]
            assert o == module.weight.shape[0] and n == 2
            assert row["macs"] == n * oh * ow * module.weight.size
        elif isinstance(module, Linear):
            assert row["macs"] == 2 * module.weight.size
        elif not isinstance(module, SEBlock):
            assert row["macs"] == 0, row
    assert result["total_macs"] == sum(row["macs"] for row in result["rows"])


@pytest.mark.parametrize("stride, padding, groups", [(1, 1, 1), (2, 1, 2), (2, 0, 6), (3, 2, 3)])
def test_single_conv_macs_and_shape_against_torch(stride, padding, groups):
    """A lone Conv2d: the output shape equals PyTorch's, the MACs equal N * OH * OW * O * (C/groups) * K * K."""
    conv = Conv2d(6, 12, 3, stride=stride, padding=padding, groups=groups)
    result = summary(conv, (2, 6, 11, 9), show=False)
    (row,) = result["rows"]
    expected_shape = torch.nn.functional.conv2d(
        torch.zeros(2, 6, 11, 9), torch.zeros(12, 6 // groups, 3, 3), stride=stride, padding=padding, groups=groups
    ).shape
    assert row["output_shape"] == tuple(expected_shape)
    n, o, oh, ow = expected_shape
    assert row["macs"] == n * oh * ow * o * (6 // groups) * 9
    assert row["name"] == "" and row["params"] == 12 * (6 // groups) * 9 + 12


# --- SE ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("integration", ["standard", "post", "identity", "pre"])
@pytest.mark.parametrize("r", [4, 16])
def test_se_resnet20_adds_exactly_the_se_blocks(r, integration):
    """SE-ResNet-20 minus ResNet-20: per block 2 C h + C + h parameters and N (2 C h + C H W) multiply-adds,
    with C, H the block's output channels and size ("pre": its input channels and size)."""
    plain = summary(models.create("resnet20"), CIFAR, show=False)
    se = summary(models.create("se_resnet20", reduction=r, integration=integration), CIFAR, show=False)
    blocks = []  # (channels, size) each SE block sees
    channels, size = 16, 32
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        for block in range(3):
            s = stride if block == 0 else 1
            blocks.append((channels, size) if integration == "pre" else (width, size // s))
            channels, size = width, size // s
    costs = [se_cost(c, size, r) for c, size in blocks]
    assert se["total_params"] - plain["total_params"] == sum(p for p, _ in costs)
    assert se["total_macs"] - plain["total_macs"] == sum(m for _, m in costs)
    assert [(row["params"], row["macs"]) for row in rows_of(se, "SEBlock")] == costs
    assert [row["output_shape"] for row in rows_of(se, "SEBlock")] == [(1, c, s, s) for c, s in blocks]


def test_se_inception_adds_one_se_block_per_module():
    """SE-Inception minus Inception: one block on each module's joined output (80 @ 32, 128 @ 16 twice, 256 @ 8),
    for a batch of 2."""
    plain = summary(models.create("inception"), (2, 3, 32, 32), show=False)
    se = summary(models.create("se_inception", reduction=8), (2, 3, 32, 32), show=False)
    joined = [(16 + 24 + 24 + 16, 32), (32 + 48 + 24 + 24, 16), (32 + 48 + 24 + 24, 16), (64 + 96 + 48 + 48, 8)]
    costs = [se_cost(c, size, 8, n=2) for c, size in joined]
    assert se["total_params"] - plain["total_params"] == sum(p for p, _ in costs)
    assert se["total_macs"] - plain["total_macs"] == sum(m for _, m in costs)
    names = [row["name"] for row in rows_of(se, "SEBlock")]
    assert names == ["features.0.se", "features.2.se", "features.3.se", "features.5.se"]


# --- side effects ----------------------------------------------------------------------------------------
def test_tracer_is_reset_and_modes_restored_when_forward_raises():
    """An exception inside the traced forward propagates, and leaves no tracer, grad mode on, and modes as they were."""

    class Broken(Module):
        def __init__(self):
            super().__init__()
            self.fc = Linear(3, 3)

        def forward(self, x):
            self.fc(x)
            raise RuntimeError("boom")

    model = Broken()
    model.fc.eval()  # a mixed state: root training, child eval
    with pytest.raises(RuntimeError, match="boom"):
        summary(model, (1, 3), show=False)
    assert module_lib._tracer is None
    assert tinyse.is_grad_enabled()
    assert model.training is True and model.fc.training is False


class Spy(Module):
    """Wraps a network and records, at each call, its own training flag and the input's dtype."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x):
        self.seen.append((self.training, x.dtype))
        return self.net(x)


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_forward_runs_in_eval_mode_and_modes_are_restored(mode):
    """During the pass every module is in eval mode (BN running stats and counters stay untouched); afterwards
    each module's flag is what it was; no tracer is left behind."""
    spy = Spy(models.create("resnet20"))
    if mode == "eval":
        spy.eval()
    elif mode == "mixed":
        spy.net.layer2.eval()
    before = {m: m.training for m in spy.modules()}
    state = spy.state_dict()
    summary(spy, CIFAR, show=False)
    assert spy.seen == [(False, np.float32)]
    assert {m: m.training for m in spy.modules()} == before
    after = spy.state_dict()
    assert all(np.array_equal(state[k], after[k]) for k in state)
    assert module_lib._tracer is None


def test_summary_of_a_float64_model_and_the_printed_table(capsys):
    """A float64 model gets float64 input; the printed table has a row per leaf call, the totals, and says which
    layers count as 0 multiply-adds."""
    spy = Spy(Sequential(Conv2d(3, 4, 3), Flatten(), Linear(16, 5))).to(dtype=np.float64)
    result = summary(spy, (1, 3, 4, 4))
    out = capsys.readouterr().out
    assert spy.seen == [(False, np.float64)]
    assert [row["output_shape"] for row in result["rows"]] == [(1, 4, 2, 2), (1, 16), (1, 5)]
    assert [row["macs"] for row in result["rows"]] == [1 * 2 * 2 * 4 * 3 * 9, 0, 16 * 5]
    lines = out.splitlines()
    assert lines[0].split() == ["Layer", "Type", "Output", "shape", "Params", "Mult-adds"]
    assert [line.split()[:2] for line in lines[2:5]] == [["net.0", "Conv2d"], ["net.1", "Flatten"], ["net.2", "Linear"]]
    assert any(line.startswith("Total") and f"{spy.num_parameters():,}" in line for line in lines)
    assert "batch norm, ReLU, pooling, padding and concat count as 0" in out


@pytest.mark.parametrize("device", DEVICES)
def test_summary_on_each_device(device):
    """On either device the numbers are the architecture's (the input is made on the model's device)."""
    model = models.create("resnet20").to(device)
    result = summary(model, CIFAR, device=device, show=False)
    assert (result["total_params"], result["total_macs"]) == (resnet20_params(), resnet20_macs())


def test_summary_is_exported_at_the_top_level():
    """tinyse.summary is the function (the README's `tinyse.summary(model, (1, 3, 32, 32))`)."""
    assert tinyse.summary is summary


# --- the command line ---------------------------------------------------------------------------------------
def test_cli_prints_one_model(capsys):
    """`python -m tinyse.models resnet20` prints the table with ResNet-20's total multiply-adds."""
    result = main(["resnet20"])
    out = capsys.readouterr().out
    assert f"{resnet20_macs():,}" in out and f"{resnet20_params():,}" in out
    assert result["total_macs"] == resnet20_macs()


def test_cli_passes_se_options(capsys):
    """--reduction and --integration reach the model: SE blocks with C // r hidden units, in the post position."""
    result = main(["se_resnet20", "--reduction", "8", "--integration", "post"])
    assert "SEBlock" in capsys.readouterr().out
    assert result["total_params"] == resnet20_params() + sum(
        se_cost(c, 0, 8)[0] for c in [16] * 3 + [32] * 3 + [64] * 3
    )


def test_cli_without_a_model_lists_the_models(capsys):
    """`python -m tinyse.models` alone prints every registered name."""
    main([])
    out = capsys.readouterr().out
    assert all(name in out for name in tinyse.models.list())


@pytest.mark.parametrize(
    "argv, message", [(["resnet20", "--reduction", "8"], "without SE"), (["resnet7"], "unknown model")]
)
def test_cli_errors(argv, message, capsys):
    """SE options on a plain model, or an unknown name: a usage error (exit 2) that says why."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_table(capsys):
    """--table prints two Markdown tables (parameters, multiply-adds) of 7 models, plain and SE r = 4, 8, 16, 32;
    ResNet-20's row agrees with its architecture, and each SE cell with the SE blocks' cost."""
    main(["--table"])
    out = capsys.readouterr().out
    tables = [[line for line in block.splitlines() if line.startswith("|")] for block in out.split("\n\n")]
    tables = [t for t in tables if t]
    assert len(tables) == 2
    for table, plain, per_block in ((tables[0], resnet20_params(), 0), (tables[1], resnet20_macs(), 1)):
        assert table[0] == "| model | plain | SE r=4 | SE r=8 | SE r=16 | SE r=32 |"
        assert [row.split("|")[1].strip() for row in table[2:]] == [
            "resnet20", "resnet32", "resnet56", "resnet110", "resnet164", "resnext29_4x8d", "inception"]
        cells = [cell.strip() for cell in table[2].split("|")[2:-1]]
        assert cells[0] == f"{plain / 1e6:.3f}"
        for cell, r in zip(cells[1:], (4, 8, 16, 32)):
            extra = sum(se_cost(c, s, r)[per_block] for c, s in [(16, 32)] * 3 + [(32, 16)] * 3 + [(64, 8)] * 3)
            assert cell == f"{(plain + extra) / 1e6:.3f} (+{100 * extra / plain:.2f}%)"
    assert math.isclose(resnet20_macs() / 1e6, 40.55, abs_tol=0.005)
