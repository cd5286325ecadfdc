"""SGD against torch.optim.SGD, dtype and device discipline, resuming from a state dict, and the lr schedules
against torch.optim.lr_scheduler."""
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tinyse.backend import device_of, to_device
from tinyse.optim import SGD, cosine_lr, make_schedule, step_lr, warmup
from tinyse.tensor import Tensor

from conftest import DEVICES, rel_error

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
def test_sgd_matches_torch_on_device(device, dtype):
    assert_sgd_matches_torch(3, 5, dtype, (0.9, True, 5e-4), device)


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
        ["lr", "momentum", "nesterov", "weight_decay", "num_params", "momentum_buffer.0", "momentum_buffer.2"]
    )
    assert state["lr"] == 0.05 and state["num_params"] == 3
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
