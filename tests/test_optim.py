"""SGD against torch.optim.SGD (parameter groups too), dtype and device discipline, resuming from a state dict,
the lr schedules against torch.optim.lr_scheduler (one-cycle against OneCycleLR), and the moving average of the
weights against its closed form."""
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tinyse import models
from tinyse.backend import device_of, to_device
from tinyse.optim import (
    NEWTON_SCHULZ_COEFFICIENTS,
    SGD,
    ModelEMA,
    Muon,
    MuonWithSGD,
    cosine_lr,
    ema_decay,
    make_schedule,
    muon_split,
    one_cycle_lr,
    orthogonalize,
    param_groups,
    step_lr,
    warmup,
)
from tinyse.tensor import Tensor
from tinyse.testing import emulated_cupy

from conftest import DEVICES, rel_error, requires_gpu

SGD_TOLERANCE = {np.float64: 1e-12, np.float32: 1e-6}
SHAPES = [(3, 4), (5,), (2, 3, 2, 2)]
SETTINGS = [  # (momentum, nesterov, weight_decay)
    (0.0, False, 0.0),
    (0.0, False, 5e-4),
    (0.9, False, 0.0),
    (0.9, False, 5e-4),
    (0.9, True, 0.0),
    (0.9, True, 5e-4),
]


def make_run(seed, steps, dtype, skip_some=True):
    """Initial parameters, and per step: the lr and each parameter's gradient (None for some when skip_some)."""
    rng = np.random.default_rng(seed)
    initial = [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
    lrs = [float(lr) for lr in rng.uniform(0.01, 0.5, steps)]  # changed every step, as a schedule does
    grads = [
        [None if skip_some and rng.random() < 0.25 else rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
        for _ in range(steps)
    ]
    return initial, lrs, grads


def run_tinyse(initial, lrs, grads, settings, device="cpu"):
    params = [Tensor(to_device(a.copy(), device), requires_grad=True) for a in initial]
    optimizer = SGD(params, 0.5, *settings)  # the lr is set before every step below
    for lr, step_grads in zip(lrs, grads):
        optimizer.lr = lr
        optimizer.zero_grad()
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else to_device(g, device)
        optimizer.step()
    return params, optimizer


def run_torch(initial, lrs, grads, settings):
    momentum, nesterov, weight_decay = settings
    params = [torch.tensor(a) for a in initial]
    optimizer = torch.optim.SGD(params, lr=lrs[0], momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    for lr, step_grads in zip(lrs, grads):
        optimizer.param_groups[0]["lr"] = lr
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else torch.tensor(g)
        optimizer.step()
    buffers = [optimizer.state[p].get("momentum_buffer") for p in params]
    return params, buffers


def assert_sgd_matches_torch(seed, steps, dtype, settings, device="cpu"):
    initial, lrs, grads = make_run(seed, steps, dtype)
    ours, optimizer = run_tinyse(initial, lrs, grads, settings, device)
    expected, expected_buffers = run_torch(initial, lrs, grads, settings)
    tolerance = SGD_TOLERANCE[dtype]
    for index, (p, e, buf, e_buf) in enumerate(zip(ours, expected, optimizer.momentum_buffers, expected_buffers)):
        assert p.dtype == dtype and p.device == device
        assert rel_error(p.data, e) < tolerance, f"parameter {index} differs from torch"
        assert (buf is None) == (e_buf is None), f"parameter {index}: momentum buffer {buf} vs torch {e_buf}"
        if buf is not None:
            assert buf.dtype == dtype and device_of(buf) == device
            assert rel_error(buf, e_buf) < tolerance, f"momentum buffer {index} differs from torch"


# --- SGD against torch.optim.SGD -----------------------------------------------------------------
@given(
    seed=st.integers(0, 2**32 - 1),
    steps=st.integers(1, 6),
    dtype=st.sampled_from([np.float64, np.float32]),
    settings=st.sampled_from(SETTINGS),
)
def test_sgd_matches_torch(seed, steps, dtype, settings):
    assert_sgd_matches_torch(seed, steps, dtype, settings)


@pytest.mark.parametrize("settings", SETTINGS)
def test_sgd_matches_torch_every_setting(settings):
    """Each setting for sure (hypothesis samples them), float64, with a schedule's lr changes and skipped grads."""
    assert_sgd_matches_torch(7, 6, np.float64, settings)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("settings", SETTINGS)
def test_sgd_matches_torch_on_device(device, dtype, settings):
    """On the GPU every setting against torch: the step is one kernel over all the parameters when each has a
    gradient (``SGD._step_all_on_gpu``), one kernel per parameter in the steps where some have none."""
    assert_sgd_matches_torch(3, 5, dtype, settings, device)


@requires_gpu
@pytest.mark.gpu
def test_sgd_on_the_gpu_is_two_launches_a_step_and_follows_arrays_swapped_under_it():
    """With every parameter holding a gradient, a GPU step gathers the gradients (one kernel for more than 8
    arrays, as CuPy's concatenate) and updates all the parameters in one kernel: 2 launches for 12
    parameters. Arrays swapped under the optimiser between steps (a parameter's, as ``Module.to`` and
    ``load_state_dict`` do; the momentum buffers, by the optimiser's own ``load_state_dict``) are the ones
    updated next: 4 steps against torch's, float64."""
    if not emulated_cupy.installed():
        pytest.skip("counts launches with the emulated CuPy's counters")
    rng = np.random.default_rng(2)
    shapes = [(3, 4), (5,), (2, 3, 2, 2)] * 4
    initial = [rng.standard_normal(shape) for shape in shapes]
    grads = [[rng.standard_normal(shape) for shape in shapes] for _ in range(4)]
    params = [Tensor(to_device(a.copy(), "gpu"), requires_grad=True) for a in initial]
    groups = [{"params": params[:6], "weight_decay": 5e-4}, {"params": params[6:], "weight_decay": 0.0}]
    optimizer = SGD(groups, 0.1, momentum=0.9, nesterov=True)
    twins = [torch.tensor(a) for a in initial]
    torch_optimizer = torch.optim.SGD([{"params": twins[:6], "weight_decay": 5e-4}, {"params": twins[6:]}],
                                      lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0)
    for step, step_grads in enumerate(grads):
        if step == 2:
            params[4].data = params[4].data.copy()  # a new array, as Module.to or load_state_dict leave
            optimizer.load_state_dict(optimizer.state_dict())  # new momentum buffers
        for p, twin, g in zip(params, twins, step_grads):
            p.grad, twin.grad = to_device(g, "gpu"), torch.tensor(g)
        with emulated_cupy.counting() as counts:
            optimizer.step()
        torch_optimizer.step()
        if step in (1, 3):  # a step on the flat arrays as they stand (steps 0 and 2 first lay them out)
            assert counts["kernel_launches"] == 2, counts["launches_by_name"]
    for index, (p, twin) in enumerate(zip(params, twins)):
        assert rel_error(p.data, twin.numpy()) < SGD_TOLERANCE[np.float64], f"parameter {index}"


def test_parameters_without_gradient_are_skipped():
    rng = np.random.default_rng(0)
    frozen, trained = (Tensor(rng.standard_normal(3), requires_grad=True) for _ in range(2))
    before = frozen.data.copy()
    optimizer = SGD([frozen, trained], 0.1, momentum=0.9, weight_decay=5e-4)  # decay alone must not move it
    trained.grad = np.ones(3)
    optimizer.step()
    assert np.array_equal(frozen.data, before)
    assert optimizer.momentum_buffers[0] is None and optimizer.momentum_buffers[1] is not None


# --- dtype, memory, zero_grad ---------------------------------------------------------------------
def float32_run(number):
    """Three float32 steps with every hyperparameter passed through ``number`` (float or np.float64)."""
    rng = np.random.default_rng(1)
    params = [Tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True) for shape in SHAPES]
    optimizer = SGD(params, number(0.1), momentum=number(0.9), nesterov=True, weight_decay=number(5e-4))
    for step in range(3):
        optimizer.lr = number(0.1) / (step + 1)
        for p in params:
            p.grad = rng.standard_normal(p.shape).astype(np.float32)
        optimizer.step()
    return params, optimizer


def test_float32_stays_float32():
    """Even when the loop hands over NumPy float64 scalars (which NumPy treats as strong, not weak):
    the arithmetic stays float32, so the result is the same bits as with Python floats."""
    params, optimizer = float32_run(np.float64)
    for p, buf in zip(params, optimizer.momentum_buffers):
        assert p.data.dtype == np.float32 and buf.dtype == np.float32
    assert all(v.dtype == np.float32 for k, v in optimizer.state_dict().items() if k.startswith("momentum_buffer"))
    with_python_floats, _ = float32_run(float)
    assert all(np.array_equal(a.data, b.data) for a, b in zip(params, with_python_floats))


def test_momentum_buffer_never_shares_the_gradient():
    p = Tensor(np.zeros(4), requires_grad=True)
    optimizer = SGD([p], 0.1, momentum=0.9)
    p.grad = np.ones(4)
    optimizer.step()
    assert not np.shares_memory(optimizer.momentum_buffers[0], p.grad)
    p.grad[:] = 100.0  # backward() accumulating into the same array must not reach the buffer
    assert np.array_equal(optimizer.momentum_buffers[0], np.ones(4))


def test_zero_grad_clears_every_gradient():
    params = [Tensor(np.zeros(2), requires_grad=True) for _ in range(3)]
    for p in params:
        p.grad = np.ones(2)
    SGD(params, 0.1).zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": -0.1}, "learning rate"),
        ({"lr": 0.1, "momentum": -0.9}, "momentum"),
        ({"lr": 0.1, "weight_decay": -1e-4}, "weight_decay"),
        ({"lr": 0.1, "nesterov": True}, "nesterov=True needs a momentum"),
        ({"lr": 0.1, "momentum": 0.0, "nesterov": True}, "nesterov=True needs a momentum"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SGD([Tensor(np.zeros(2), requires_grad=True)], **kwargs)


def test_bad_parameter_lists_raise():
    p = Tensor(np.zeros(2), requires_grad=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], 0.1)
    with pytest.raises(ValueError, match="same parameter twice"):
        SGD([p, p], 0.1)
    with pytest.raises(TypeError, match="parameter 1 is a ndarray"):
        SGD([p, np.zeros(2)], 0.1)


def test_negative_lr_from_a_schedule_raises_at_step():
    p = Tensor(np.zeros(2), requires_grad=True)
    optimizer = SGD([p], 0.1)
    p.grad = np.ones(2)
    optimizer.lr = -0.1
    with pytest.raises(ValueError, match="learning rate"):
        optimizer.step()


# --- state_dict / load_state_dict -----------------------------------------------------------------
def resume_run(initial, lrs, grads, settings, k, through=None):
    """Run k steps, save the state, load it into a new optimiser (after ``through`` (state) if given), run the rest."""
    params, optimizer = run_tinyse(initial, lrs[:k], grads[:k], settings)
    state = optimizer.state_dict()
    if through is not None:
        state = through(state)
    resumed = SGD(params, 123.0)  # other hyperparameters: load_state_dict must restore them
    resumed.load_state_dict(state)
    for lr, step_grads in zip(lrs[k:], grads[k:]):
        resumed.lr = lr
        resumed.zero_grad()
        for p, g in zip(params, step_grads):
            p.grad = g
        resumed.step()
    return params, resumed


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("settings", [(0.9, False, 5e-4), (0.9, True, 1e-4), (0.0, False, 5e-4)])
def test_resume_equals_uninterrupted_run_bit_for_bit(settings, dtype):
    initial, lrs, grads = make_run(11, 7, dtype)
    straight, optimizer = run_tinyse(initial, lrs, grads, settings)
    for k in (0, 1, 4):
        resumed, resumed_optimizer = resume_run(initial, lrs, grads, settings, k)
        for a, b in zip(straight, resumed):
            assert a.dtype == b.dtype == dtype and np.array_equal(a.data, b.data)
        for a, b in zip(optimizer.momentum_buffers, resumed_optimizer.momentum_buffers):
            assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a, b))
        assert (resumed_optimizer.momentum, resumed_optimizer.nesterov, resumed_optimizer.weight_decay) == settings


def test_resume_through_an_npz_file(tmp_path):
    settings = (0.9, True, 5e-4)
    initial, lrs, grads = make_run(12, 6, np.float32)
    straight, _ = run_tinyse(initial, lrs, grads, settings)

    def through_npz(state):
        np.savez(tmp_path / "optimizer.npz", **state)
        with np.load(tmp_path / "optimizer.npz") as archive:
            return dict(archive)

    resumed, optimizer = resume_run(initial, lrs, grads, settings, 3, through=through_npz)
    assert all(np.array_equal(a.data, b.data) for a, b in zip(straight, resumed))
    assert isinstance(optimizer.lr, float) and isinstance(optimizer.nesterov, bool)


def test_state_dict_format_and_copies():
    params = [Tensor(np.zeros(shape, dtype=np.float32), requires_grad=True) for shape in SHAPES]
    optimizer = SGD(params, 0.05, momentum=0.9, weight_decay=1e-4)
    params[0].grad = np.ones(SHAPES[0], dtype=np.float32)
    params[2].grad = np.ones(SHAPES[2], dtype=np.float32)
    optimizer.step()
    state = optimizer.state_dict()
    assert sorted(state) == sorted(
        ["lr", "momentum", "nesterov", "weight_decay", "num_params", "group_sizes", "group_weight_decays",
         "momentum_buffer.0", "momentum_buffer.2"]
    )
    assert state["lr"] == 0.05 and state["num_params"] == 3
    assert state["group_sizes"].tolist() == [3] and state["group_weight_decays"].tolist() == [1e-4]
    assert type(state["momentum_buffer.0"]) is np.ndarray
    state["momentum_buffer.0"][...] = 7.0  # a copy: changing it leaves the optimiser alone
    assert np.array_equal(optimizer.momentum_buffers[0], np.ones(SHAPES[0]))
    optimizer.load_state_dict(state)
    state["momentum_buffer.0"][...] = 8.0  # and load copies too
    assert np.array_equal(optimizer.momentum_buffers[0], np.full(SHAPES[0], 7.0))


def test_load_keeps_each_parameters_dtype():
    params = [Tensor(np.zeros(3, dtype=np.float32), requires_grad=True)]
    optimizer = SGD(params, 0.1, momentum=0.9)
    float64_buffer = np.ones(3)  # from somewhere else
    optimizer.load_state_dict(
        {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0, "num_params": 1,
         "momentum_buffer.0": float64_buffer}
    )
    assert optimizer.momentum_buffers[0].dtype == np.float32


def trained_state(shapes):
    params = [Tensor(np.zeros(shape), requires_grad=True) for shape in shapes]
    optimizer = SGD(params, 0.1, momentum=0.9)
    for p in params:
        p.grad = np.ones(p.shape)
    optimizer.step()
    return optimizer.state_dict()


def test_mismatched_state_raises_clearly():
    optimizer = SGD([Tensor(np.zeros(shape), requires_grad=True) for shape in SHAPES], 0.1, momentum=0.9)
    before = [None] * len(SHAPES)
    with pytest.raises(ValueError, match="state dict is for 2 parameters, but this optimiser has 3"):
        optimizer.load_state_dict(trained_state(SHAPES[:2]))
    with pytest.raises(ValueError, match=r"'momentum_buffer.1': parameter 1 has shape \(5,\), .* shape \(6,\)"):
        optimizer.load_state_dict(trained_state([SHAPES[0], (6,), SHAPES[2]]))
    state = trained_state(SHAPES)
    state["momentum_buffer.3"] = np.zeros(2)
    with pytest.raises(ValueError, match=r"'momentum_buffer\.3': there is no parameter 3"):
        optimizer.load_state_dict(state)
    with pytest.raises(KeyError, match=r"missing keys \['momentum'\], unexpected keys \['model/fc.weight'\]"):
        optimizer.load_state_dict(
            {"lr": 0.1, "nesterov": False, "weight_decay": 0.0, "num_params": 3, "model/fc.weight": np.zeros(2)}
        )
    state = trained_state(SHAPES)
    state["momentum"], state["nesterov"] = 0.0, True
    with pytest.raises(ValueError, match="nesterov=True needs a momentum"):
        optimizer.load_state_dict(state)
    assert optimizer.momentum_buffers == before and optimizer.lr == 0.1  # a failed load changes nothing


@pytest.mark.parametrize("device", DEVICES)
def test_state_dict_moves_between_devices(device):
    """state_dict holds NumPy arrays whatever the device; load puts the buffers on the parameters' device."""
    initial, lrs, grads = make_run(5, 3, np.float32, skip_some=False)
    params, optimizer = run_tinyse(initial, lrs, grads, (0.9, False, 0.0), device)
    state = optimizer.state_dict()
    assert all(type(v) is np.ndarray for k, v in state.items() if k.startswith("momentum_buffer"))
    fresh = SGD(params, 0.1, momentum=0.9).load_state_dict(state)
    for buf, p in zip(fresh.momentum_buffers, params):
        assert device_of(buf) == device and buf.dtype == np.float32 and buf.shape == p.shape


# --- schedules against torch.optim.lr_scheduler ---------------------------------------------------
def torch_schedule_lrs(make_scheduler, base_lr, epochs):
    """lr per integer epoch 0..epochs-1 from a torch scheduler stepped once per epoch (closed form too)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = make_scheduler(optimizer)
    stepped, closed = [], []
    for _ in range(epochs):
        stepped.append(scheduler.get_last_lr()[0])
        closed.append(scheduler._get_closed_form_lr()[0])
        optimizer.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler.step()
    return stepped, closed


@pytest.mark.parametrize("milestones", [[3, 6], [2, 2, 7], [8, 4], []])
def test_step_lr_matches_multistep_lr(milestones):
    stepped, closed = torch_schedule_lrs(
        lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.2), 0.1, 10
    )
    for epoch, (expected, expected_closed) in enumerate(zip(stepped, closed)):
        for fraction in (0.0, 0.3, 0.999):  # constant within an epoch
            ours = step_lr(0.1, epoch + fraction, milestones, gamma=0.2)
            assert math.isclose(ours, expected, rel_tol=1e-12) and math.isclose(ours, expected_closed, rel_tol=1e-12)


def test_cosine_lr_matches_cosine_annealing_lr():
    total, base_lr, min_lr = 12, 0.1, 1e-3
    stepped, closed = torch_schedule_lrs(
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=min_lr), base_lr, total + 1
    )
    for epoch in range(total + 1):
        ours = cosine_lr(base_lr, epoch, total, min_lr)
        assert math.isclose(ours, closed[epoch], rel_tol=1e-12)
        assert math.isclose(ours, stepped[epoch], rel_tol=1e-9)  # torch's recursive form drifts a little
    assert cosine_lr(base_lr, 0, total) == base_lr and cosine_lr(base_lr, total, total) == 0.0
    fine = [cosine_lr(base_lr, e, total) for e in np.linspace(0, total, 97)]
    assert all(a > b for a, b in itertools.pairwise(fine))  # fractional epochs decay it smoothly


def test_warmup_matches_linear_lr():
    _, closed = torch_schedule_lrs(
        lambda opt: torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=4), 0.1, 8
    )
    for epoch, expected in enumerate(closed):
        assert math.isclose(warmup(0.1, epoch, 4), expected, rel_tol=1e-12)


def test_warmup_rises_to_the_lr_and_never_starts_at_zero():
    progress = np.linspace(0.0, 5.0, 201)
    factors = [warmup(0.1, float(e), 2.5) for e in progress]
    assert factors[0] > 0 and math.isclose(factors[0], 0.01)  # the very first step learns
    assert all(a <= b for a, b in itertools.pairwise(factors))
    assert all(a < b for a, b in itertools.pairwise(factors[:101]))  # strictly rising during warm-up
    assert warmup(0.1, 2.5, 2.5) == 0.1 and all(f == 0.1 for f in factors[100:])
    assert warmup(0.1, 0.0, 0) == 0.1  # no warm-up
    assert warmup(0.1, 0.0, 2, start_factor=0.5) == 0.05


def test_make_schedule_step_defaults_to_he_et_al():
    """He et al.: lr 0.1, /10 at 50% and 75% of training; 164 epochs -> milestones 82 and 123."""
    schedule = make_schedule("step", 0.1, 164)
    assert schedule.milestones == [82, 123]
    assert schedule(0.0) == 0.1 and schedule(81.99) == 0.1
    assert math.isclose(schedule(82.0), 0.01) and math.isclose(schedule(122.5), 0.01)
    assert math.isclose(schedule(123.0), 0.001) and math.isclose(schedule(163.9), 0.001)
    assert make_schedule("step", 0.1, 10).milestones == [5, 8]  # 7.5 rounds half up
    assert make_schedule("step", 0.1, 10, milestones=[6, 3], gamma=0.5)(7) == 0.025


def test_make_schedule_cosine_constant_and_warmup():
    cosine = make_schedule("cosine", 0.2, 10)
    assert cosine(0) == 0.2 and math.isclose(cosine(5), 0.1) and cosine(10) == 0.0
    constant = make_schedule("constant", 0.05, 10)
    assert all(constant(e) == 0.05 for e in (0, 3.3, 9.99))
    warm = make_schedule("cosine", 0.2, 10, warmup_epochs=2)
    assert 0 < warm(0.0) < warm(0.01) < warm(1.0) < warm(2.0)
    assert math.isclose(warm(0.0), 0.02) and warm(2.0) == cosine(2.0) and warm(7.5) == cosine(7.5)
    assert isinstance(make_schedule("step", np.float64(0.1), 10)(3), float)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("linear", 0.1, 10), {}, r"unknown schedule 'linear': choose one of 'step', 'cosine', 'constant'"),
        (("step", -0.1, 10), {}, "learning rate"),
        (("cosine", 0.1, 0), {}, "total_epochs must be > 0"),
        (("constant", 0.1, 10), {"warmup_epochs": -1}, "warmup_epochs must be >= 0"),
        (("step", 0.1, 10), {"gamma": 0.0}, "gamma must be > 0"),
        (("cosine", 0.1, 10), {"milestones": [5]}, "milestones apply only to the 'step' schedule"),
    ],
)
def test_make_schedule_bad_inputs_raise(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_schedule(*args, **kwargs)


def test_warmup_bad_inputs_raise():
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0"):
        warmup(0.1, 0.0, -1)
    with pytest.raises(ValueError, match=r"start_factor must be in \(0, 1\]"):
        warmup(0.1, 0.0, 2, start_factor=0.0)


# --- parameter groups: no weight decay on batch norm and biases ----------------------------------------
GROUP_DECAYS = [5e-4, 0.0]  # (weights, then batch norm parameters and biases), as the fast recipe


def grouped(params, decays=GROUP_DECAYS):
    """The parameters as torch-style groups: the first two in the first group, the rest in the second."""
    return [{"params": params[:2], "weight_decay": decays[0]}, {"params": params[2:], "weight_decay": decays[1]}]


def run_grouped(initial, lrs, grads, momentum, nesterov, library, start=None):
    """Train with two parameter groups in tinyse or torch; returns the parameters (and the optimiser)."""
    if library == "torch":
        params = [torch.tensor(a) for a in initial]
        optimizer = torch.optim.SGD(grouped(params), lr=lrs[0], momentum=momentum, nesterov=nesterov)
    else:
        params = [Tensor(a.copy(), requires_grad=True) for a in initial]
        optimizer = SGD(grouped(params), 0.5, momentum, nesterov, weight_decay=1.0)  # 1.0: the groups override it
    for lr, step_grads in zip(lrs, grads):
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else (torch.tensor(g) if library == "torch" else g)
        if library == "torch":
            for group in optimizer.param_groups:
                group["lr"] = lr
        else:
            optimizer.lr = lr
        optimizer.step()
    return params, optimizer


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("momentum, nesterov", [(0.9, True), (0.9, False), (0.0, False)])
def test_sgd_with_parameter_groups_matches_torch(momentum, nesterov, dtype):
    """Two groups, 5e-4 and no weight decay, over 8 steps of changing lr and skipped gradients: torch's numbers."""
    initial, lrs, grads = make_run(21, 8, dtype)
    ours, optimizer = run_grouped(initial, lrs, grads, momentum, nesterov, "tinyse")
    expected, _ = run_grouped(initial, lrs, grads, momentum, nesterov, "torch")
    for index, (p, e) in enumerate(zip(ours, expected)):
        assert p.dtype == dtype and rel_error(p.data, e) < SGD_TOLERANCE[dtype], f"parameter {index}"
    assert optimizer.weight_decays() == [5e-4, 5e-4, 0.0]


def test_a_group_without_weight_decay_is_not_decayed():
    """A zero gradient: the decayed group shrinks by lr * wd * p, the other group does not move."""
    decayed, kept = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(2), requires_grad=True)
    optimizer = SGD([{"params": [decayed], "weight_decay": 0.1}, {"params": [kept], "weight_decay": 0.0}], 0.5)
    decayed.grad, kept.grad = np.zeros(3), np.zeros(2)
    optimizer.step()
    assert np.allclose(decayed.data, 1 - 0.5 * 0.1) and np.array_equal(kept.data, np.ones(2))
    default = SGD([{"params": [decayed]}], 0.1, weight_decay=3e-4)  # a group without its own takes the default
    assert default.weight_decays() == [3e-4]


def test_param_groups_leave_batch_norm_and_biases_out_of_the_decay():
    """SE-ResNet-20: every conv and linear weight decays; batch norm's scale and shift and every bias do not."""
    model = models.create("se_resnet20", seed=0)
    named = dict(model.named_parameters())
    decay, no_decay = param_groups(model.named_parameters(), 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    names = {id(p): name for name, p in named.items()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decayed | kept == set(named) and not decayed & kept
    assert decayed == {n for n in named if n.endswith("weight") and ("conv" in n or "fc" in n)}
    assert kept == {n for n in named if ".bn" in n or n.startswith("bn") or n.endswith("bias")}
    assert {"fc.bias", "bn1.weight", "layer1.0.se.fc1.bias"} <= kept and "layer1.0.se.fc1.weight" in decayed
    (everything,) = param_groups(model.named_parameters(), 5e-4, decay_norm_and_bias=True)
    assert len(everything["params"]) == len(named) and everything["weight_decay"] == 5e-4
    assert len(param_groups([("w", Tensor(np.zeros((2, 2))))], 1e-4)) == 1  # an empty group is left out


def test_param_groups_split_a_torch_twin_the_same_way():
    """The same function splits the PyTorch twin (same names): the torch recipe decays the same parameters."""
    from tinyse.testing.twins import twin_for_name

    model, twin = models.create("se_resnet20", seed=0), twin_for_name("se_resnet20")
    ours = [[name for name, p in model.named_parameters() if any(p is q for q in g["params"])]
            for g in param_groups(model.named_parameters(), 5e-4)]
    theirs = [[name for name, p in twin.named_parameters() if any(p is q for q in g["params"])]
              for g in param_groups(twin.named_parameters(), 5e-4)]
    assert [sorted(g) for g in ours] == [sorted(g) for g in theirs]


def test_muon_split_gives_the_conv_filters_to_muon_and_the_rest_to_sgd_groups():
    """SE-ResNet-20: with a Muon lr every 4-axis conv filter goes to Muon, each exactly once, and SGD's groups
    hold the rest (the SE and fc weights decayed, batch norm and biases not); with lr 0 SGD gets everything."""
    model = models.create("se_resnet20", seed=0)
    named = dict(model.named_parameters())
    names = {id(p): name for name, p in named.items()}
    filters, (decay, no_decay) = muon_split(model.named_parameters(), 0.03, 5e-4)
    to_muon = [names[id(p)] for p in filters]
    assert len(to_muon) == len(set(to_muon)) and set(to_muon) == {n for n in named if "conv" in n and "weight" in n}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed == {n for n in named if n.endswith("weight") and ("se.fc" in n or n == "fc.weight")}
    assert set(to_muon) | decayed | {names[id(p)] for p in no_decay["params"]} == set(named)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 5e-4
    filters, groups = muon_split(model.named_parameters(), 0.0, 5e-4)
    assert filters == [] and [len(g["params"]) for g in groups] == [len(g["params"])
                                                                    for g in param_groups(named.items(), 5e-4)]


def test_grouped_optimizer_resumes_bit_for_bit_and_checks_the_groups():
    initial, lrs, grads = make_run(22, 7, np.float32)
    straight, _ = run_grouped(initial, lrs, grads, 0.9, True, "tinyse")
    params, optimizer = run_grouped(initial, lrs[:3], grads[:3], 0.9, True, "tinyse")
    state = optimizer.state_dict()
    assert state["group_sizes"].tolist() == [2, 1] and state["group_weight_decays"].tolist() == GROUP_DECAYS
    resumed = SGD(grouped(params, decays=[0.1, 0.1]), 0.1, momentum=0.0)  # load restores every setting
    resumed.load_state_dict(state)
    assert resumed.weight_decays() == [5e-4, 5e-4, 0.0] and resumed.nesterov
    for lr, step_grads in zip(lrs[3:], grads[3:]):
        resumed.lr = lr
        for p, g in zip(params, step_grads):
            p.grad = g
        resumed.step()
    assert all(np.array_equal(a.data, b.data) for a, b in zip(straight, params))
    one_group = SGD(params, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"parameter groups of sizes \[2, 1\], but this optimiser's groups have "
                                         r"sizes \[3\]"):
        one_group.load_state_dict(state)
    old = {k: v for k, v in state.items() if not k.startswith("group_")}  # a checkpoint from before the groups
    assert SGD(params, 0.1, momentum=0.9).load_state_dict(old).weight_decays() == [1.0] * 3  # its weight_decay


@pytest.mark.parametrize("groups, error, message", [
    ([{"params": [], "lr": 0.1}], ValueError, r"group 0 has settings \['lr'\]; a group may set only 'weight_decay'"),
    ([{"weight_decay": 0.1}], TypeError, "group 0 must be a dict with a 'params' list"),
    ([{"params": [Tensor(np.zeros(2))], "weight_decay": -1.0}], ValueError, "invalid weight_decay -1.0"),
])
def test_bad_parameter_groups_raise(groups, error, message):
    with pytest.raises(error, match=message):
        SGD(groups, 0.1)


# --- one-cycle ---------------------------------------------------------------------------------------
def torch_one_cycle(peak, epochs, warmup_epochs, steps_per_epoch, div):
    """torch's OneCycleLR lr at every step 0 .. epochs * steps_per_epoch, laid out to be one_cycle_lr (see there)."""
    total = epochs * steps_per_epoch + 1
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peak, total_steps=total, pct_start=(warmup_epochs * steps_per_epoch + 1) / total,
        anneal_strategy="linear", div_factor=div, final_div_factor=float("inf"), cycle_momentum=False)
    lrs = []
    for _ in range(total):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # stepping past total_steps on the last round
            if len(lrs) < total:
                scheduler.step()
    return lrs


@pytest.mark.parametrize("peak, epochs, warmup_epochs, steps_per_epoch, div", [
    (0.2, 15, 3, 10, 25.0),   # the fast recipe's shape
    (0.4, 6, 1.5, 8, 10.0),   # a warm-up that ends mid-epoch
    (0.1, 4, 2, 3, 1.0),      # div 1: the warm-up is flat at the peak
])
def test_one_cycle_matches_torch_one_cycle_lr(peak, epochs, warmup_epochs, steps_per_epoch, div):
    expected = torch_one_cycle(peak, epochs, warmup_epochs, steps_per_epoch, div)
    ours = [one_cycle_lr(peak, step / steps_per_epoch, epochs, warmup_epochs, div) for step in range(len(expected))]
    assert np.allclose(ours, expected, rtol=1e-12, atol=1e-15)
    schedule = make_schedule("onecycle", peak, epochs, warmup_epochs=warmup_epochs, div_factor=div)
    assert [schedule(step / steps_per_epoch) for step in range(len(expected))] == ours


def test_one_cycle_shape_start_peak_and_end():
    """0.008 at the first step, 0.2 at the end of the warm-up, falling in a straight line to 0 at the end."""
    schedule = make_schedule("onecycle", 0.2, 15, warmup_epochs=3)
    assert math.isclose(schedule(0.0), 0.008) and schedule(3.0) == 0.2 and schedule(15.0) == 0.0
    assert math.isclose(schedule(9.0), 0.1) and schedule(20.0) == 0.0
    steps = 391
    last_step = schedule(15 - 1 / steps)  # the last step of training: near zero, not zero
    assert 0 < last_step < 1e-4 and math.isclose(last_step, 0.2 / (12 * steps))
    fine = [schedule(e) for e in np.linspace(0, 15, 301)]
    peak_at = fine.index(max(fine))
    assert all(a < b for a, b in itertools.pairwise(fine[: peak_at + 1]))
    assert all(a > b for a, b in itertools.pairwise(fine[peak_at:]))
    no_warmup = make_schedule("onecycle", 0.2, 10)
    assert no_warmup(0.0) == 0.2 and math.isclose(no_warmup(5.0), 0.1)
    assert "onecycle" in repr(schedule) and "div_factor=25.0" in repr(schedule)


@pytest.mark.parametrize("kwargs, message", [
    ({"warmup_epochs": 15}, r"warmup_epochs \(15\) must be shorter than the run \(15 epochs\)"),
    ({"warmup_epochs": 2, "div_factor": 0.5}, "div_factor must be >= 1"),
    ({"warmup_epochs": 2, "milestones": [5]}, "milestones apply only to the 'step' schedule"),
])
def test_one_cycle_bad_inputs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_schedule("onecycle", 0.2, 15, **kwargs)


# --- the moving average of the weights ------------------------------------------------------------------
def test_ema_decay_starts_at_zero_and_rises_to_the_decay():
    assert ema_decay(0.999, 1) == 0.0 and math.isclose(ema_decay(0.5, 2), 0.5 * 0.5 / 0.75)
    betas = [ema_decay(0.999, t) for t in range(1, 20000, 97)]
    assert all(a < b for a, b in itertools.pairwise(betas)) and math.isclose(betas[-1], 0.999, rel_tol=1e-9)
    with pytest.raises(ValueError, match="updates count from 1"):
        ema_decay(0.9, 0)


def ema_run(decay, steps, seed=0):
    """A tiny batch-norm model whose weights and running statistics are set to random values before each update."""
    from tinyse.nn import BatchNorm2d

    model = BatchNorm2d(3)
    ema = ModelEMA(model, decay)
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(steps):
        model.weight.data = rng.standard_normal(3).astype(np.float32)
        model.running_var[...] = rng.uniform(0.5, 2.0, 3)
        model.num_batches_tracked += 1
        history.append(model.state_dict())
        ema.update(model)
    return model, ema, history


def test_ema_is_the_normalised_exponentially_weighted_mean_of_every_step():
    """After t updates: sum_s d^(t-s) w_s / sum_s d^(t-s), for the weights and batch norm's running statistics;
    the step counter (an integer buffer) is copied."""
    decay, steps = 0.8, 6
    _, ema, history = ema_run(decay, steps)
    weights = np.array([decay ** (steps - s) for s in range(1, steps + 1)])
    for key in ("weight", "running_var", "bias"):
        expected = sum(w * h[key].astype(np.float64) for w, h in zip(weights, history)) / weights.sum()
        assert rel_error(ema.model.state_dict()[key], expected) < 1e-6, key
    assert ema.model.state_dict()["num_batches_tracked"] == steps and ema.steps == steps
    assert ema.model.weight.dtype == np.float32 and not ema.model.training


def test_ema_first_update_copies_and_the_average_is_a_separate_model():
    model, ema, history = ema_run(0.999, 1)
    assert all(np.array_equal(v, history[0][k]) for k, v in ema.model.state_dict().items())
    model.weight.data[...] = 123.0
    assert not np.any(ema.model.weight.data == 123.0)


def test_ema_resumes_from_its_state_dict_exactly(tmp_path):
    _, straight, _ = ema_run(0.9, 5, seed=3)
    model, half, _ = ema_run(0.9, 2, seed=3)
    np.savez(tmp_path / "ema.npz", **half.state_dict())
    with np.load(tmp_path / "ema.npz") as archive:
        resumed = ModelEMA(model, 0.5).load_state_dict(dict(archive))
    assert resumed.decay == 0.9 and resumed.steps == 2
    rng = np.random.default_rng(3)
    for step in range(5):  # replay the same random stream, folding in only steps 3-5
        weight, running_var = rng.standard_normal(3).astype(np.float32), rng.uniform(0.5, 2.0, 3)
        if step >= 2:
            model.weight.data, model.running_var[...] = weight, running_var
            resumed.update(model)
    for key, value in straight.model.state_dict().items():
        if key != "num_batches_tracked":
            assert np.array_equal(resumed.model.state_dict()[key], value), key


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_ema_decay_outside_0_1_is_an_error(decay):
    with pytest.raises(ValueError, match=r"EMA decay must be in \(0, 1\)"):
        ModelEMA(models.create("resnet20"), decay)


@pytest.mark.parametrize("device", DEVICES)
def test_ema_on_the_device_of_its_model(device):
    """The average lives on the model's device, keeps float32, and equals the CPU numbers."""
    averages = {}
    for where in ("cpu", device):
        model = models.create("resnet20", seed=0).to(where)
        ema = ModelEMA(model, 0.9)
        rng = np.random.default_rng(1)
        for _ in range(3):
            for p in model.parameters():
                p.data = to_device(rng.standard_normal(p.shape).astype(np.float32), where)
            ema.update(model)
        assert device_of(ema.model.conv1.weight.data) == where and ema.model.conv1.weight.dtype == np.float32
        averages[where] = ema.state_dict()
    for key, value in averages["cpu"].items():
        assert np.allclose(averages[device][key], value, rtol=1e-6, atol=1e-7), key


# --- Muon: orthogonalised momentum for the conv filters ------------------------------------------
def newton_schulz_on_a_singular_value(s, steps=5):
    """The scalar map orthogonalize applies to each singular value (s already divided by |M|_F)."""
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 24), columns=st.integers(1, 40))
def test_orthogonalize_keeps_u_and_v_and_maps_each_singular_value(seed, rows, columns):
    """Against the SVD (float64): orthogonalize(M) = U f(S / |M|_F) V^T, f the iterated quintic, for wide and tall M."""
    matrix = np.random.default_rng(seed).standard_normal((rows, columns))
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    expected = (u * newton_schulz_on_a_singular_value(s / (np.linalg.norm(matrix) + 1e-7))) @ vt  # 1e-7: as its code
    result = orthogonalize(matrix)
    assert result.shape == matrix.shape and result.dtype == np.float64
    assert np.allclose(result, expected, rtol=1e-6, atol=1e-9)


def test_orthogonalize_brings_the_singular_values_near_1():
    """Singular values from 0.005 to 1 of the largest come out between 0.68 and 1.21; the rest scale down to 0."""
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    v, _ = np.linalg.qr(rng.standard_normal((144, 16)))
    singular_values = np.geomspace(1.0, 0.005, 16)
    result = orthogonalize((u * singular_values) @ v.T)
    out = np.linalg.svd(result, compute_uv=False)
    assert out.min() > 0.68 and out.max() < 1.21
    assert np.array_equal(orthogonalize(np.zeros((3, 5))), np.zeros((3, 5)))  # no NaN from a zero gradient
    assert orthogonalize(np.ones((4, 6), dtype=np.float32)).dtype == np.float32


def muon_step_in_torch(weights, grads, lrs, momentum, nesterov):
    """Muon's update as its docstring writes it, in torch (float64), with the SVD's U f(S) V^T for orthogonalize."""
    weights = [torch.tensor(w) for w in weights]
    buffers = [None] * len(weights)
    for lr, step_grads in zip(lrs, grads):
        for index, (w, g) in enumerate(zip(weights, step_grads)):
            g = torch.tensor(g)
            if momentum:
                buffers[index] = g.clone() if buffers[index] is None else momentum * buffers[index] + g
                g = g + momentum * buffers[index] if nesterov else buffers[index]
            w *= math.sqrt(w.shape[0]) / w.norm()
            matrix = g.reshape(w.shape[0], -1)
            u, s, vt = torch.linalg.svd(matrix, full_matrices=False)
            s = torch.tensor(newton_schulz_on_a_singular_value(s.numpy() / (matrix.norm().item() + 1e-7)))
            w -= lr * ((u * s) @ vt).reshape(w.shape)
    return weights, buffers


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_muon_matches_its_formula_in_torch(momentum, nesterov):
    rng = np.random.default_rng(3)
    shapes = [(8, 3, 3, 3), (4, 12), (6, 2, 1, 1)]
    initial = [rng.standard_normal(shape) for shape in shapes]
    lrs = [0.05, 0.2, 0.1, 0.01]
    grads = [[rng.standard_normal(shape) for shape in shapes] for _ in lrs]
    params = [Tensor(w.copy(), requires_grad=True) for w in initial]
    muon = Muon(params, 1.0, momentum, nesterov)
    for lr, step_grads in zip(lrs, grads):
        muon.lr = lr
        for p, g in zip(params, step_grads):
            p.grad = g
        muon.step()
    expected, buffers = muon_step_in_torch(initial, grads, lrs, momentum, nesterov)
    for index, (p, e) in enumerate(zip(params, expected)):
        assert rel_error(p.data, e.numpy()) < 1e-8, f"parameter {index} differs"
        if momentum:
            assert rel_error(muon.momentum_buffers[index], buffers[index].numpy()) < 1e-12


def test_muon_holds_each_weights_scale_and_skips_parameters_without_gradient():
    rng = np.random.default_rng(4)
    filters = Tensor(rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 7, requires_grad=True)
    idle = Tensor(rng.standard_normal((4, 4)).astype(np.float32), requires_grad=True)
    before = idle.data.copy()
    muon = Muon([filters, idle], lr=0.0)
    filters.grad = rng.standard_normal(filters.shape).astype(np.float32)
    muon.step()
    assert filters.dtype == np.float32
    assert np.isclose(np.linalg.norm(filters.data), 4.0, rtol=1e-5)  # sqrt(C_out) = sqrt(16): lr 0 only rescales
    assert np.array_equal(idle.data, before) and muon.momentum_buffers[1] is None


def test_muon_refuses_bad_parameters_and_settings():
    with pytest.raises(ValueError, match=r"orthogonalises matrices, but parameter 1 has shape \(5,\)"):
        Muon([Tensor(np.zeros((2, 3))), Tensor(np.zeros(5))], 0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        Muon([], 0.1)
    with pytest.raises(ValueError, match="invalid momentum -1"):
        Muon([Tensor(np.zeros((2, 3)))], 0.1, momentum=-1)
    weight = Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match="same parameter twice"):
        Muon([weight, weight], 0.1)
    with pytest.raises(ValueError, match="given to both Muon and SGD"):
        MuonWithSGD(Muon([weight], 0.1), SGD([weight], 0.1))
    with pytest.raises(KeyError, match="not a Muon state dict"):
        Muon([weight], 0.1).load_state_dict({"lr": 0.1})


def muon_with_sgd(model, muon_lr=0.05, lr=0.2):
    named = list(model.named_parameters())
    filters = [p for _, p in named if p.ndim == 4]
    rest = [(name, p) for name, p in named if p.ndim != 4]
    return MuonWithSGD(Muon(filters, muon_lr, 0.9, True), SGD(param_groups(rest, 5e-4), lr, 0.9, True, 5e-4))


def test_muon_with_sgd_follows_one_schedule_and_resumes_bit_for_bit(tmp_path):
    """The lr set on the pair reaches SGD as it is and Muon scaled; a state saved to .npz resumes exactly."""
    rng = np.random.default_rng(5)
    images = [Tensor(rng.standard_normal((4, 3, 8, 8)).astype(np.float32)) for _ in range(4)]

    def train(model, optimizer, steps):
        for images_batch in steps:
            optimizer.lr = 0.1
            optimizer.zero_grad()
            (model(images_batch) ** 2).mean().backward()
            optimizer.step()

    straight = models.create("se_resnet20", seed=0)
    optimizer = muon_with_sgd(straight)
    optimizer.lr = 0.1
    assert optimizer.sgd.lr == 0.1 and math.isclose(optimizer.muon.lr, 0.025)
    assert len(optimizer.muon.params) == 19 and len(optimizer.params) == len(list(straight.parameters()))
    train(straight, optimizer, images)

    first = models.create("se_resnet20", seed=0)
    optimizer = muon_with_sgd(first)
    train(first, optimizer, images[:2])
    np.savez(tmp_path / "state.npz", **optimizer.state_dict())
    resumed = models.create("se_resnet20", seed=0)
    resumed.load_state_dict(first.state_dict())
    optimizer = muon_with_sgd(resumed)  # as the run's config builds it; the buffers come from the file
    with np.load(tmp_path / "state.npz") as saved:
        optimizer.load_state_dict(dict(saved))
    train(resumed, optimizer, images[2:])
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert np.array_equal(a.data, b.data), name
    with pytest.raises(KeyError, match=r"neither muon/\.\.\. nor sgd/\.\.\."):
        optimizer.load_state_dict({"lr": 0.1})


@pytest.mark.parametrize("device", DEVICES)
def test_muon_on_the_device_equals_the_cpu(device):
    results = {}
    for where in ("cpu", device):
        rng = np.random.default_rng(6)
        param = Tensor(to_device(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), where), requires_grad=True)
        muon = Muon([param], 0.1)
        for _ in range(3):
            param.grad = to_device(rng.standard_normal(param.shape).astype(np.float32), where)
            muon.step()
        assert device_of(param.data) == where and param.dtype == np.float32
        results[where] = to_device(param.data, "cpu")
    assert np.allclose(results[device], results["cpu"], rtol=1e-5, atol=1e-6)
