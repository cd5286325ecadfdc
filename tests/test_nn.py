"""tinyse.nn: the Module machinery, every layer, and the SE block.

References are independent of the code under test: PyTorch twins of the same
structure (names, state_dict keys, forward, gradients, running statistics), the
plain maths of a layer (sigmoid(0) = 1/2, max(1, C // r)), and PyTorch's
documented initialisation rules.
"""
import pathlib
import re
import zlib

import numpy as np
import pytest
import torch
import torch.nn as tnn

import tinyse.functional as F
from tinyse import nn
from tinyse.backend import device_of, to_device
from tinyse.tensor import Tensor
from tinyse.testing import emulated_cupy
from tinyse.testing.twins import TorchGlobalAvgPool, TorchSE, load_into_twin

from conftest import (
    DEVICES,
    TORCH_TOLERANCE,
    assert_model_matches_torch,
    assert_train_and_eval_match_torch,
    distinct_values,
    rel_error,
    requires_gpu,
)

# (dtype, device) pairs: float64 on the CPU, float32 on every device (tinyse there, torch on the CPU)
DTYPE_DEVICES = [(np.float64, "cpu")] + [
    pytest.param(np.float32, d.values[0] if hasattr(d, "values") else d, marks=getattr(d, "marks", ()))
    for d in DEVICES
]


# --- PyTorch twins and helpers ----------------------------------------------------------------
class TinyNet(nn.Module):
    """conv -> bn -> relu (in a Sequential) -> SE -> global pool -> linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.se = nn.SEBlock(8, reduction=4)
        self.pool = nn.GlobalAvgPool2d()
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.pool(self.se(self.features(x))))


class TorchTinyNet(tnn.Module):
    def __init__(self):
        super().__init__()
        self.features = tnn.Sequential(tnn.Conv2d(3, 8, 3, padding=1, bias=False), tnn.BatchNorm2d(8), tnn.ReLU())
        self.se = TorchSE(8, reduction=4)
        self.pool = TorchGlobalAvgPool()
        self.fc = tnn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.pool(self.se(self.features(x))))


class TorchBatchNormReLU(tnn.BatchNorm2d):
    """relu(batch norm), with BatchNorm2d's state and names: BatchNormReLU2d's twin."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def tiny_net(seed):
    nn.manual_seed(seed)
    return TinyNet()


def torch_state_as_numpy(twin):
    """A torch state_dict as the plain dict of NumPy arrays that load_state_dict takes."""
    return {k: v.numpy() for k, v in twin.state_dict().items()}


def assert_states_equal(a, b):
    """Two state dicts hold the same keys (in order), shapes, dtypes and values, exactly."""
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# --- Module: registration and walking the tree --------------------------------------------------
class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(np.zeros(3))
        self.register_buffer("count", np.zeros((2,)))
        self.child = nn.Linear(2, 3)
        self.note = "a plain attribute"
        self.table = np.ones(4)  # an array that is not a registered buffer


class TorchHolder(tnn.Module):
    def __init__(self):
        super().__init__()
        self.w = tnn.Parameter(torch.zeros(3))
        self.register_buffer("count", torch.zeros(2))
        self.child = tnn.Linear(2, 3)
        self.note = "a plain attribute"
        self.table = np.ones(4)


def test_attributes_register_parameters_buffers_and_children_like_torch():
    """Assigning a Parameter / Module registers it, register_buffer keeps state, other attributes stay plain;
    names and state_dict keys are those of the same structure in PyTorch."""
    model, twin = Holder(), TorchHolder()
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in twin.named_parameters()] == [
        "w", "child.weight", "child.bias"]
    assert [n for n, _ in model.named_buffers()] == [n for n, _ in twin.named_buffers()] == ["count"]
    assert list(model.state_dict()) == list(twin.state_dict())
    assert list(model.children()) == [model.child]
    assert [n for n, _ in model.named_modules()] == [n for n, _ in twin.named_modules()] == ["", "child"]
    assert model.note == "a plain attribute" and isinstance(model.table, np.ndarray)
    assert model.w is model._parameters["w"] and model.count is model._buffers["count"]


def test_reassigning_attributes_moves_them_between_registries():
    """A name set to None stops being a parameter; set to a Parameter again it is one (and is what the
    attribute returns); a buffer reassigned stays a buffer with the new value; a Module replaces a Parameter."""
    model = Holder()
    model.w = None
    assert "w" not in dict(model.named_parameters()) and model.w is None
    fresh = nn.Parameter(np.ones(3))
    model.w = fresh
    assert model.w is fresh and dict(model.named_parameters())["w"] is fresh
    model.count = np.full(2, 7.0)
    np.testing.assert_array_equal(model.state_dict()["count"], [7.0, 7.0])
    model.w = nn.Identity()
    assert "w" not in dict(model.named_parameters()) and dict(model.named_modules())["w"] is model.w


def test_bias_added_after_construction_without_one_is_used():
    """Conv2d(bias=False) keeps ``bias = None``; assigning a Parameter later registers it AND the forward uses
    it (a stale plain attribute must not shadow it): compare with a torch conv that has that bias."""
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False).to(dtype=np.float64)
    conv.bias = nn.Parameter(rng.standard_normal(3))
    assert conv.bias is conv._parameters["bias"]
    twin = load_into_twin(conv, tnn.Conv2d(2, 3, 3, padding=1, bias=True))
    x = rng.standard_normal((2, 2, 5, 5))
    assert rel_error(conv(Tensor(x)).data, twin(torch.from_numpy(x))) < TORCH_TOLERANCE[np.float64]


def test_assigning_before_super_init_is_a_clear_error():
    """A subclass that forgets super().__init__() gets an error that says so."""
    class Broken(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(RuntimeError, match=r"super\(\).__init__"):
        Broken()


def test_parameters_and_named_parameters_follow_torch_names():
    """named_parameters() gives the dotted names of the torch twin, in its order; parameters() gives the same
    objects in the same order, each a Parameter with the torch shape."""
    model, twin = tiny_net(0), TorchTinyNet()
    names = [n for n, _ in model.named_parameters()]
    torch_params = dict(twin.named_parameters())
    assert names == list(torch_params)
    assert "features.0.weight" in names and "se.fc1.weight" in names
    assert [id(p) for p in model.parameters()] == [id(p) for _, p in model.named_parameters()]
    for name, p in model.named_parameters():
        assert isinstance(p, nn.Parameter) and p.requires_grad
        assert p.shape == tuple(torch_params[name].shape), name
    assert model.num_parameters() == sum(p.numel() for p in twin.parameters())


def test_gradients_accumulate_until_zero_grad_clears_them():
    """Gradients add up across backward() calls (as in torch, which does the same) and zero_grad() clears
    them: after it, one backward gives the gradient of one step again."""
    rng = np.random.default_rng(1)
    model = tiny_net(1).to(dtype=np.float64)
    twin = load_into_twin(model, TorchTinyNet())
    x = rng.standard_normal((4, 3, 6, 6))
    labels = np.array([0, 1, 2, 3])

    def step():
        F.cross_entropy(model(Tensor(x)), labels).backward()
        tnn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(labels)).backward()

    step()
    single = {n: p.grad.copy() for n, p in model.named_parameters()}
    step()
    torch_params = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        assert rel_error(p.grad, torch_params[name].grad) < 1e-10, name
        # the batch norm statistics moved between the two steps, but in training mode they do not enter the
        # output, so the two steps' gradients are equal and the sum is twice one of them
        assert rel_error(p.grad, 2 * single[name]) < 1e-10, name
    model.zero_grad()
    twin.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    step()
    for name, p in model.named_parameters():
        assert rel_error(p.grad, torch_params[name].grad) < 1e-10, name
        assert rel_error(p.grad, single[name]) < 1e-10, name


def test_train_and_eval_reach_every_submodule():
    """eval() / train() set ``training`` on every module of the tree (as torch does on its twin) and return the
    model; in eval mode batch norm then uses its running statistics, matching the torch twin in eval mode."""
    rng = np.random.default_rng(2)
    model = tiny_net(2).to(dtype=np.float64)
    twin = load_into_twin(model, TorchTinyNet())
    x = rng.standard_normal((3, 3, 5, 5))
    model(Tensor(x)), twin(torch.from_numpy(x))  # move the running statistics away from 0 and 1
    assert model.eval() is model
    twin.eval()
    modes = [m.training for m in model.modules()]
    assert len(modes) == len(list(twin.modules())) and not any(modes) and not any(m.training for m in twin.modules())
    before = model.state_dict()
    assert rel_error(model(Tensor(x)).data, twin(torch.from_numpy(x))) < 1e-10
    assert_states_equal(model.state_dict(), before)  # eval mode touches no statistics
    assert model.train() is model
    assert all(m.training for m in model.modules())
    model.train(False)
    assert not any(m.training for m in model.modules())


def test_to_float64_casts_parameters_and_float_buffers():
    """to(dtype=np.float64) casts every parameter and floating buffer (values kept), leaves the integer
    num_batches_tracked alone, and the model then computes in float64, matching torch's .double() twin."""
    rng = np.random.default_rng(3)
    model = tiny_net(3)
    before = model.state_dict()
    assert model.to(dtype=np.float64) is model
    for name, p in model.named_parameters():
        assert p.dtype == np.float64 and isinstance(p, nn.Parameter), name
    for name, b in model.named_buffers():
        assert b.dtype == (np.int64 if name.endswith("num_batches_tracked") else np.float64), name
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key].astype(value.dtype), err_msg=key)
    twin = load_into_twin(model, TorchTinyNet(), np.float64)
    x = rng.standard_normal((2, 3, 4, 4))
    y = model(Tensor(x))
    assert y.dtype == np.float64
    assert rel_error(y.data, twin(torch.from_numpy(x))) < 1e-10


def test_to_float32_after_backward_clears_stale_gradients():
    """A cast drops gradients of the old dtype, so the next step accumulates into fresh, correctly typed ones."""
    model = tiny_net(4).to(dtype=np.float64)
    F.cross_entropy(model(Tensor(np.ones((2, 3, 4, 4)))), np.array([0, 1])).backward()
    model.to(dtype=np.float32)
    assert all(p.grad is None and p.dtype == np.float32 for p in model.parameters())


@requires_gpu
@pytest.mark.gpu
def test_to_gpu_moves_every_array_and_back():
    """to("gpu") puts every parameter and buffer on the GPU (same values), except batch norm's batch counter,
    which stays on the host (a host-only buffer); the model runs there and agrees with the CPU model;
    to("cpu") brings back the same state."""
    rng = np.random.default_rng(5)
    model = tiny_net(5)
    cpu_model = tiny_net(5)
    state = model.state_dict()
    model.to("gpu")
    assert all(device_of(p.data) == "gpu" for p in model.parameters())
    for name, b in model.named_buffers():
        assert device_of(b) == ("cpu" if name.endswith("num_batches_tracked") else "gpu"), name
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    y = model(Tensor(to_device(x, "gpu")))
    assert device_of(y.data) == "gpu"
    assert rel_error(y.data, cpu_model(Tensor(x)).data) < TORCH_TOLERANCE[np.float32]
    model.to("cpu")
    assert all(device_of(p.data) == "cpu" for p in model.parameters())
    for key, value in model.state_dict().items():
        if "running" not in key and "num_batches" not in key:
            np.testing.assert_array_equal(value, state[key], err_msg=key)


def test_to_unknown_device_names_the_choices():
    """A device other than "cpu" / "gpu" is refused with a ValueError that lists both."""
    with pytest.raises(ValueError, match=r"cpu.*gpu"):
        tiny_net(0).to("tpu")


def test_calling_a_module_runs_its_forward():
    """model(x) is model.forward(x): the same result, and forward is what gets called, with the arguments."""
    class Recorder(nn.Module):
        def forward(self, a, b):
            self.seen = (a, b)
            return a * 2 + b

    m = Recorder()
    assert m(3, 4) == 10 and m.seen == (3, 4)
    model = tiny_net(6)
    x = Tensor(np.random.default_rng(6).standard_normal((2, 3, 4, 4)).astype(np.float32))
    model.eval()
    np.testing.assert_array_equal(model(x).data, model.forward(x).data)


def test_print_shows_the_structure(capsys):
    """print(model) names every child with its settings, nested children indented deeper than their parent."""
    print(tiny_net(0))
    text = capsys.readouterr().out
    assert text.startswith("TinyNet(")
    lines = text.splitlines()

    def line_of(fragment):
        matches = [line for line in lines if fragment in line]
        assert matches, f"{fragment!r} not in:\n{text}"
        return matches[0]

    conv = line_of("(0): Conv2d(")
    assert "3, 8" in conv and "padding=1" in conv and "bias=False" in conv and "3x3" in conv
    assert "8" in line_of("(1): BatchNorm2d(") and "eps=1e-05" in line_of("(1): BatchNorm2d(")
    assert "(2): ReLU()" in text
    se = line_of("(se): SEBlock(")
    assert "8" in se and "reduction=4" in se and "hidden 2" in se and "avg" in se and "sigmoid" in se
    assert "in_features=8" in line_of("(fc): Linear(") and "out_features=5" in line_of("(fc): Linear(")
    indent = lambda line: len(line) - len(line.lstrip())  # noqa: E731
    assert indent(conv) > indent(line_of("(features): Sequential("))


# --- state_dict, save, load ---------------------------------------------------------------------
LAYER_TWINS = {
    "conv": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), lambda: tnn.Conv2d(4, 6, 3, stride=2, padding=1)),
    "conv_grouped_no_bias": (
        lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False),
        lambda: tnn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False),
    ),
    "linear": (lambda: nn.Linear(7, 5), lambda: tnn.Linear(7, 5)),
    "linear_no_bias": (lambda: nn.Linear(7, 5, bias=False), lambda: tnn.Linear(7, 5, bias=False)),
    "batchnorm": (lambda: nn.BatchNorm2d(4), lambda: tnn.BatchNorm2d(4)),
    "batchnorm_relu": (lambda: nn.BatchNormReLU2d(4), lambda: tnn.BatchNorm2d(4)),  # a ReLU has no state
    "se": (lambda: nn.SEBlock(32, reduction=8), lambda: TorchSE(32, reduction=8)),
    "sequential": (
        lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.ReLU(), nn.Identity())),
        lambda: tnn.Sequential(tnn.Conv2d(3, 4, 1), tnn.BatchNorm2d(4), tnn.Sequential(tnn.ReLU(), tnn.Identity())),
    ),
    "tiny_net": (TinyNet, TorchTinyNet),
}


@pytest.mark.parametrize("kind", LAYER_TWINS)
def test_state_dict_keys_shapes_and_dtypes_match_torch(kind):
    """state_dict() has exactly the torch twin's keys in its order (batch norm's num_batches_tracked
    included), the same shapes, and num_batches_tracked is a 0-d int64 as in torch."""
    make, make_twin = LAYER_TWINS[kind]
    state, torch_state = make().state_dict(), make_twin().state_dict()
    assert list(state) == list(torch_state)
    for key, value in state.items():
        assert isinstance(value, np.ndarray)
        assert value.shape == tuple(torch_state[key].shape), key
        if key.endswith("num_batches_tracked"):
            assert value.dtype == np.int64 and value.shape == ()


def test_state_dict_is_a_copy():
    """Writing into the arrays state_dict() returned leaves the model as it was."""
    model = tiny_net(7)
    state = model.state_dict()
    for value in state.values():
        value[...] = 5
    assert not np.any(model.fc.weight.data == 5) and not np.any(model.features[1].running_var == 5)


@pytest.mark.parametrize("as_path", [str, pathlib.Path], ids=["str", "Path"])
def test_save_then_load_into_a_fresh_model_gives_identical_outputs(tmp_path, as_path):
    """save() writes an .npz; a model built with another seed, loaded from that path, has the same state
    (running statistics and num_batches_tracked included) and gives bit-identical outputs in both modes."""
    rng = np.random.default_rng(8)
    x = Tensor(rng.standard_normal((3, 3, 5, 5)).astype(np.float32))
    model = tiny_net(1)
    model(x)  # one training step: running statistics and num_batches_tracked leave their initial values
    path = as_path(tmp_path / "model.npz")
    model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]  # no temporary file left behind
    fresh = tiny_net(2)
    model.eval(), fresh.eval()
    assert not np.array_equal(fresh(x).data, model(x).data)  # the test would show nothing otherwise
    assert fresh.load_state_dict(path) is fresh
    assert_states_equal(fresh.state_dict(), model.state_dict())
    np.testing.assert_array_equal(fresh(x).data, model(x).data)
    model.train(), fresh.train()
    np.testing.assert_array_equal(fresh(x).data, model(x).data)


def test_load_a_torch_state_dict_then_outputs_equal_torch():
    """load_state_dict takes {k: v.numpy()} from a torch twin's state_dict (different initial weights, and
    running statistics moved by a training step); the tinyse model then computes what torch computes in eval
    and in training mode."""
    rng = np.random.default_rng(9)
    torch.manual_seed(9)
    twin = TorchTinyNet().double()
    x = rng.standard_normal((4, 3, 5, 5))
    twin(torch.from_numpy(x))
    model = tiny_net(0).to(dtype=np.float64)
    model.load_state_dict(torch_state_as_numpy(twin))
    twin.eval(), model.eval()
    assert rel_error(model(Tensor(x)).data, twin(torch.from_numpy(x))) < 1e-10
    twin.train(), model.train()
    assert rel_error(model(Tensor(x)).data, twin(torch.from_numpy(x))) < 1e-10
    bn, torch_bn = model.features[1], twin.features[1]
    assert rel_error(bn.running_mean, torch_bn.running_mean) < 1e-10
    assert int(bn.num_batches_tracked) == int(torch_bn.num_batches_tracked) == 2


def test_loaded_model_shares_no_memory_with_the_source():
    """After load_state_dict({k: v.numpy()}) (NumPy views of torch's tensors) a tinyse training step and an
    in-place write to the source arrays leave the other side unchanged: the model copied the arrays."""
    rng = np.random.default_rng(10)
    torch.manual_seed(10)
    twin = TorchTinyNet()
    source = torch_state_as_numpy(twin)
    torch_before = {k: v.clone() for k, v in twin.state_dict().items()}
    model = tiny_net(0)
    model.load_state_dict(source)
    model(Tensor(rng.standard_normal((4, 3, 5, 5)).astype(np.float32)))  # updates running stats in place
    for key, value in twin.state_dict().items():
        assert torch.equal(value, torch_before[key]), f"tinyse's training step changed torch's {key}"
    model_before = model.state_dict()
    for value in source.values():
        value[...] = 3
    assert_states_equal(model.state_dict(), model_before)


def _bad_state(kind):
    """The state dict of another model (different values everywhere), spoiled in one key."""
    state = tiny_net(99).state_dict()
    if kind == "missing":
        del state["se.fc2.bias"]
        return state, "se.fc2.bias", ()
    if kind == "extra":
        state["se.fc3.weight"] = np.zeros((2, 2), np.float32)
        return state, "se.fc3.weight", ()
    if kind == "mis-shaped":
        state["features.1.running_var"] = np.ones(9, np.float32)
        return state, "features.1.running_var", ("(8,)", "(9,)")
    state["fc.weight"] = np.ones((8, 5), np.float32)  # transposed
    return state, "fc.weight", ("(5, 8)", "(8, 5)")


@pytest.mark.parametrize("kind", ["missing", "extra", "mis-shaped", "transposed"])
def test_load_mismatched_state_names_the_key_and_changes_nothing(kind):
    """A missing, extra or mis-shaped key makes load_state_dict fail with a message naming the key (and both
    shapes when they differ); the model keeps its state, although every other key held new values."""
    model = tiny_net(0)
    before = model.state_dict()
    state, key, shapes = _bad_state(kind)
    with pytest.raises((KeyError, ValueError)) as info:
        model.load_state_dict(state)
    message = str(info.value)
    assert key in message
    for shape in shapes:
        assert shape in message
    assert_states_equal(model.state_dict(), before)


def dict_of_arrays(model):
    """{key: the model's own array} of every parameter and buffer, where they live (no copy, no transfer)."""
    return {**{name: p.data for name, p in model.named_parameters()}, **dict(model.named_buffers())}


@requires_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_load_state_dict_takes_gpu_arrays_and_copies_them(target):
    """A state of device arrays (another GPU model's own) loads into a model on either device: the same state and
    outputs as the source, each array on the model's device, and no memory shared with the source."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 3, 5, 5)).astype(np.float32)
    source = tiny_net(1).to("gpu")
    source(Tensor(to_device(x, "gpu")))  # one training step: the running statistics move
    model = tiny_net(2).to(target)
    model.load_state_dict(dict_of_arrays(source))
    for key, array in dict_of_arrays(model).items():  # batch norm's counter lives on the host (a host-only buffer)
        assert device_of(array) == ("cpu" if key.endswith("num_batches_tracked") else target), key
    assert_states_equal(model.state_dict(), source.state_dict())
    source.eval(), model.eval()
    y, y_source = model(Tensor(to_device(x, target))).data, source(Tensor(to_device(x, "gpu"))).data
    assert rel_error(y, to_device(y_source, "cpu")) < TORCH_TOLERANCE[np.float32]  # the CPU's conv rounds otherwise
    before = model.state_dict()
    for array in dict_of_arrays(source).values():
        array[...] = 7
    assert_states_equal(model.state_dict(), before)


@requires_gpu
@pytest.mark.gpu
def test_load_state_dict_onto_the_gpu_copies_each_array_once_and_reads_nothing_back():
    """Loading a NumPy state into a GPU model is one copy to the device per array that lives there (all but
    batch norm's host-side counter) and none back (checking the keys and shapes reads the model's shapes,
    not its arrays); a state of device arrays crosses nothing; a
    mis-shaped state fails before anything is copied. Counted by the emulated CuPy."""
    if not emulated_cupy.installed():
        pytest.skip("counts copies with the emulated CuPy's counters")
    model = tiny_net(0).to("gpu")
    host_state, gpu_state = tiny_net(3).state_dict(), dict_of_arrays(tiny_net(4).to("gpu"))
    with emulated_cupy.counting() as from_host:
        model.load_state_dict(host_state)
    on_device = [key for key in host_state if not key.endswith("num_batches_tracked")]
    assert len(on_device) < len(host_state)
    assert (from_host["host_to_device"], from_host["device_to_host"]) == (len(on_device), 0)
    with emulated_cupy.counting() as from_device:
        model.load_state_dict(gpu_state)
    assert (from_device["host_to_device"], from_device["device_to_host"]) == (0, 0)
    state, key, _ = _bad_state("mis-shaped")
    with emulated_cupy.counting() as refused, pytest.raises(ValueError, match=re.escape(key)):
        model.load_state_dict(state)
    assert (refused["host_to_device"], refused["device_to_host"]) == (0, 0)


# --- the layers against PyTorch --------------------------------------------------------------------
LAYER_CASES = {
    # name: (tinyse layer, torch layer, input shape)
    "conv_stride2_pad1": (
        lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), lambda: tnn.Conv2d(4, 6, 3, 2, 1), (2, 4, 7, 7)
    ),
    "conv_groups_no_bias": (
        lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False),
        lambda: tnn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False),
        (2, 4, 5, 5),
    ),
    "conv_1x1": (lambda: nn.Conv2d(4, 3, 1), lambda: tnn.Conv2d(4, 3, 1), (2, 4, 3, 3)),
    "conv_depthwise": (lambda: nn.Conv2d(4, 4, 3, groups=4), lambda: tnn.Conv2d(4, 4, 3, groups=4), (2, 4, 5, 5)),
    "linear": (lambda: nn.Linear(7, 5), lambda: tnn.Linear(7, 5), (3, 7)),
    "linear_no_bias": (lambda: nn.Linear(7, 5, bias=False), lambda: tnn.Linear(7, 5, bias=False), (3, 7)),
    "batchnorm": (lambda: nn.BatchNorm2d(4), lambda: tnn.BatchNorm2d(4), (3, 4, 5, 5)),
    "batchnorm_relu": (lambda: nn.BatchNormReLU2d(4), lambda: TorchBatchNormReLU(4), (3, 4, 5, 5)),
    "batchnorm_momentum_eps": (
        lambda: nn.BatchNorm2d(4, eps=1e-3, momentum=0.3),
        lambda: tnn.BatchNorm2d(4, eps=1e-3, momentum=0.3),
        (3, 4, 2, 2),
    ),
    "relu": (nn.ReLU, tnn.ReLU, (2, 3, 4, 4)),
    "sigmoid": (nn.Sigmoid, tnn.Sigmoid, (2, 3, 4, 4)),
    "maxpool_3_2_1": (lambda: nn.MaxPool2d(3, 2, 1), lambda: tnn.MaxPool2d(3, 2, 1), (2, 3, 7, 7)),
    "maxpool_2": (lambda: nn.MaxPool2d(2), lambda: tnn.MaxPool2d(2), (2, 3, 6, 6)),
    "avgpool_2": (lambda: nn.AvgPool2d(2), lambda: tnn.AvgPool2d(2), (2, 3, 6, 6)),
    "avgpool_3_2_1": (lambda: nn.AvgPool2d(3, 2, 1), lambda: tnn.AvgPool2d(3, 2, 1), (2, 3, 7, 7)),
    "global_avg_pool": (nn.GlobalAvgPool2d, TorchGlobalAvgPool, (2, 3, 4, 5)),
    "flatten": (nn.Flatten, tnn.Flatten, (2, 3, 4, 5)),
    "identity": (nn.Identity, tnn.Identity, (2, 3, 4, 5)),
    "se": (lambda: nn.SEBlock(16, reduction=4), lambda: TorchSE(16, reduction=4), (2, 16, 3, 3)),
}


@pytest.mark.parametrize("dtype, device", DTYPE_DEVICES)
@pytest.mark.parametrize("case", LAYER_CASES)
def test_layer_matches_torch(case, dtype, device):
    """Each layer, holding its torch twin's weights, gives torch's output (same dtype), input gradient and
    parameter gradients, and leaves the same state (batch norm's running statistics and counter)."""
    make, make_twin, shape = LAYER_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    nn.manual_seed(11)
    layer = make().to(device=device, dtype=dtype)
    twin = load_into_twin(layer, make_twin(), dtype)
    x = distinct_values(rng, shape, dtype) if "maxpool" in case else rng.standard_normal(shape).astype(dtype)
    assert_model_matches_torch(layer, twin, x, TORCH_TOLERANCE[dtype], device)


@pytest.mark.parametrize("dtype, device", DTYPE_DEVICES)
@pytest.mark.parametrize("case", ["batchnorm", "batchnorm_relu", "batchnorm_momentum_eps"])
def test_batchnorm_layers_match_torch_in_both_modes(case, dtype, device):
    """A batch norm (with its ReLU fused, or not) agrees with torch in training mode and then in eval mode, where it
    normalises with the running statistics the training step left: output, input gradient (through the ReLU's mask
    where there is one), weight and bias gradients, and the state, which eval mode leaves unchanged."""
    make, make_twin, shape = LAYER_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()) + 1)
    layer = make().to(device=device, dtype=dtype)
    layer.weight.data = to_device(rng.uniform(0.5, 1.5, layer.weight.shape).astype(dtype), device)
    layer.bias.data = to_device(rng.uniform(-0.5, 0.5, layer.bias.shape).astype(dtype), device)
    twin = load_into_twin(layer, make_twin(), dtype)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)  # running statistics move well off 0 and 1
    assert_train_and_eval_match_torch(layer, twin, x, TORCH_TOLERANCE[dtype], device)


def test_batchnorm_counts_training_batches_and_freezes_in_eval():
    """num_batches_tracked counts training forwards only, as in torch; in eval mode the running statistics
    normalise (torch's eval output) and stay unchanged."""
    rng = np.random.default_rng(12)
    bn = nn.BatchNorm2d(3).to(dtype=np.float64)
    twin = load_into_twin(bn, tnn.BatchNorm2d(3))
    for _ in range(3):
        x = rng.standard_normal((4, 3, 2, 2)) * 3 + 1
        bn(Tensor(x)), twin(torch.from_numpy(x))
    assert int(bn.num_batches_tracked) == int(twin.num_batches_tracked) == 3
    bn.eval(), twin.eval()
    before = bn.state_dict()
    x = rng.standard_normal((2, 3, 2, 2))
    assert rel_error(bn(Tensor(x)).data, twin(torch.from_numpy(x))) < 1e-10
    assert_states_equal(bn.state_dict(), before)
    for key, value in twin.state_dict().items():
        assert rel_error(before[key], value) < 1e-10, key


def test_conv_groups_must_divide_the_channels():
    """Conv2d refuses a group count that does not divide the channels, saying which numbers clash."""
    with pytest.raises(ValueError, match=r"groups=3.*in_channels=4"):
        nn.Conv2d(4, 6, 3, groups=3)


@pytest.mark.parametrize(
    "make, fan_in",
    [
        (lambda: nn.Linear(400, 300), 400),
        (lambda: nn.Conv2d(64, 96, 3), 64 * 9),
        (lambda: nn.Conv2d(64, 96, 3, groups=4), 16 * 9),
    ],
    ids=["linear", "conv", "grouped_conv"],
)
def test_default_init_is_torch_uniform_rule(make, fan_in):
    """Linear and Conv2d start as PyTorch's do: weight and bias uniform in +-1/sqrt(fan_in) (fan_in per group),
    so values stay inside the bound, come close to it, and have std bound/sqrt(3)."""
    nn.manual_seed(0)
    layer = make()
    bound = 1 / np.sqrt(fan_in)
    for name, p in layer.named_parameters():
        values = p.data.astype(np.float64).ravel()
        assert np.abs(values).max() <= bound * (1 + 1e-6), name
        assert np.abs(values).max() > bound * (0.9 if name == "bias" else 0.999), name
    w = layer.weight.data.astype(np.float64)
    assert abs(w.std() / (bound / np.sqrt(3)) - 1) < 0.03
    assert abs(w.mean()) < 0.02 * bound


def test_manual_seed_makes_layers_reproducible():
    """The same seed gives the same initial weights; another seed gives other weights."""
    nn.manual_seed(5)
    a = TinyNet().state_dict()
    nn.manual_seed(5)
    b = TinyNet().state_dict()
    nn.manual_seed(6)
    c = TinyNet().state_dict()
    assert_states_equal(a, b)
    assert not np.array_equal(a["features.0.weight"], c["features.0.weight"])


# --- the SE block ----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_sigmoid_gates_lie_strictly_between_0_and_1(device):
    """The paper's sigmoid gates are in (0, 1): the block only ever shrinks a channel, by s = gates (N, C),
    and the output is exactly U * s per channel."""
    rng = np.random.default_rng(13)
    block = nn.SEBlock(32, reduction=4).to(device)
    u = rng.standard_normal((4, 32, 5, 5)).astype(np.float32)
    out = block(Tensor(to_device(u, device))).numpy()
    gates = to_device(block.gates, "cpu")
    assert gates.shape == (4, 32)
    assert np.all(gates > 0) and np.all(gates < 1)
    np.testing.assert_array_equal(out, u * gates[:, :, None, None])
    assert np.all(np.abs(out) <= np.abs(u))


@pytest.mark.parametrize("device", DEVICES)
def test_zero_excitation_weights_give_gates_of_one_half(device):
    """With fc2's weight and bias zero the gate is sigmoid(0) = 1/2 for every channel and sample, whatever
    the input and fc1: the output is exactly 0.5 * U."""
    rng = np.random.default_rng(14)
    block = nn.SEBlock(16, reduction=4)
    block.fc2.weight.data[...] = 0
    block.fc2.bias.data[...] = 0
    block.to(device)
    u = (rng.standard_normal((3, 16, 4, 4)) * 10).astype(np.float32)
    out = block(Tensor(to_device(u, device)))
    assert np.all(to_device(block.gates, "cpu") == 0.5)
    np.testing.assert_array_equal(out.numpy(), 0.5 * u)


@pytest.mark.parametrize(
    "channels, reduction, hidden",
    [(16, 16, 1), (64, 16, 4), (16, 32, 1), (256, 16, 16), (64, 8, 8), (10, 3, 3), (3, 16, 1)],
)
def test_reduction_ratio_sets_the_hidden_width(channels, reduction, hidden):
    """The bottleneck has max(1, C // r) units: fc1 maps C -> hidden, fc2 hidden -> C, each with a bias (each
    case's hidden width worked out by hand from the paper's C / r); C / r < 1 still leaves one unit."""
    block = nn.SEBlock(channels, reduction=reduction)
    assert block.fc1.weight.shape == (hidden, channels) and block.fc1.bias.shape == (hidden,)
    assert block.fc2.weight.shape == (channels, hidden) and block.fc2.bias.shape == (channels,)
    assert block.num_parameters() == 2 * channels * hidden + hidden + channels


SE_VARIANTS = [(s, e) for s in ("avg", "max") for e in ("sigmoid", "tanh", "relu")]


@pytest.mark.parametrize("dtype, device", DTYPE_DEVICES)
@pytest.mark.parametrize("squeeze, excitation", SE_VARIANTS)
def test_se_variants_match_torch(squeeze, excitation, dtype, device):
    """Every squeeze ("avg": channel means, "max": channel maxima, torch's amax) and excitation (sigmoid, tanh,
    relu gates) agrees with the torch composition: output, gates, and the gradients of U and of fc1 / fc2."""
    rng = np.random.default_rng(15)
    nn.manual_seed(15)
    block = nn.SEBlock(24, reduction=4, squeeze=squeeze, excitation=excitation).to(device=device, dtype=dtype)
    twin = load_into_twin(block, TorchSE(24, reduction=4, squeeze=squeeze, excitation=excitation), dtype)
    u = distinct_values(rng, (3, 24, 4, 4), dtype)  # no ties, so the maximum has one winner per channel
    assert_model_matches_torch(block, twin, u, TORCH_TOLERANCE[dtype], device)
    assert rel_error(block.gates, twin.gates(torch.from_numpy(u))) < TORCH_TOLERANCE[dtype]


def test_max_squeeze_differs_from_avg_squeeze():
    """The squeeze option is really used: the same weights give other gates with "max" than with "avg"."""
    rng = np.random.default_rng(16)
    nn.manual_seed(16)
    avg = nn.SEBlock(8, reduction=2, squeeze="avg")
    nn.manual_seed(16)
    mx = nn.SEBlock(8, reduction=2, squeeze="max")
    u = Tensor(rng.standard_normal((2, 8, 4, 4)).astype(np.float32))
    avg(u), mx(u)
    assert np.abs(avg.gates - mx.gates).max() > 1e-3


@pytest.mark.parametrize(
    "option, value, choices",
    [("squeeze", "median", ("avg", "max")), ("excitation", "softmax", ("sigmoid", "tanh", "relu"))],
)
def test_unknown_se_option_names_the_choices(option, value, choices):
    """A bad squeeze or excitation name raises ValueError naming the bad value and every valid choice."""
    with pytest.raises(ValueError) as info:
        nn.SEBlock(16, **{option: value})
    message = str(info.value)
    assert value in message
    for choice in choices:
        assert re.search(rf"\b{choice}\b", message), (choice, message)


def test_a_module_shared_at_two_places_is_listed_once():
    """As in PyTorch, a layer reused twice owns its parameters once."""
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(model.parameters()) == 2
    assert len(list(model.modules())) == 3


def test_se_reduction_below_one_is_a_clear_error():
    with pytest.raises(ValueError, match="reduction ratio must be at least 1, got 0"):
        nn.SEBlock(16, reduction=0)
