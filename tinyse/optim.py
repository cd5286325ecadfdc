"""The optimiser (SGD with momentum, PyTorch's semantics) and learning-rate schedules.

Training loop, one step::

    optimizer.lr = schedule(epoch + step / steps_per_epoch)   # progress in epochs, a float
    optimizer.zero_grad()                                     # gradients accumulate until cleared
    loss.backward()
    optimizer.step()

``SGD`` works on the raw arrays of each parameter (``p.data`` and ``p.grad``),
NumPy or CuPy alike, and keeps their dtype: every hyperparameter is a Python
float, which NumPy and CuPy treat as "weak" (float32 times a Python float stays
float32, where times an ``np.float64`` scalar it would become float64).

A schedule is a pure function of training progress ``epoch`` (completed epochs
plus the fraction of the current one) that returns the learning rate; it keeps
no state, so resuming a run needs only the epoch it stopped at.
"""
import math
import re

import numpy as np

from tinyse.backend import device_of, get_array_module, to_device
from tinyse.tensor import Tensor


def _check_hyperparameters(lr, momentum, nesterov, weight_decay):
    """Raise ValueError for the settings torch.optim.SGD refuses."""
    if lr < 0:
        raise ValueError(f"invalid learning rate {lr}: it must be >= 0")
    if momentum < 0:
        raise ValueError(f"invalid momentum {momentum}: it must be >= 0")
    if weight_decay < 0:
        raise ValueError(f"invalid weight_decay {weight_decay}: it must be >= 0")
    if nesterov and momentum == 0:
        raise ValueError("nesterov=True needs a momentum > 0 (Nesterov's look-ahead is a momentum method)")


class SGD:
    """Stochastic gradient descent with momentum and weight decay, as torch.optim.SGD (dampening 0).

    For each parameter p with gradient grad, one ``step()`` does::

        g   = grad + weight_decay * p                  # L2 penalty weight_decay/2 * |p|^2, folded into the gradient
        buf = momentum * buf + g                       # buf = g on the parameter's first step
        g   = g + momentum * buf   if nesterov else buf
        p   = p - lr * g

    (with momentum 0 there is no buffer and g is used as it is). Parameters
    whose ``.grad`` is None are skipped, buffer and all, as in torch.

    Inputs:
        params: Tensors (e.g. ``model.parameters()``), each with ``.data`` and ``.grad`` raw arrays
        lr: learning rate; a plain attribute, which the training loop sets from a schedule each step
        momentum, nesterov, weight_decay: as above

    ``p.data`` and the momentum buffers are updated in place and keep their
    dtype and device.
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD got an empty parameter list")
        for index, p in enumerate(self.params):
            if not isinstance(p, Tensor):
                raise TypeError(f"SGD can only optimise Tensors, but parameter {index} is a {type(p).__name__}")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("SGD got the same parameter twice (it would be updated twice per step)")
        lr, momentum, nesterov, weight_decay = float(lr), float(momentum), bool(nesterov), float(weight_decay)
        _check_hyperparameters(lr, momentum, nesterov, weight_decay)
        self.lr = lr
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.momentum_buffers = [None] * len(self.params)  # one per parameter, made on its first step

    def __repr__(self):
        return (
            f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
            f"weight_decay={self.weight_decay}, parameters={len(self.params)})"
        )

    def zero_grad(self):
        """Clear every parameter's gradient (backward() adds to ``.grad`` until it is cleared)."""
        for p in self.params:
            p.grad = None

    def step(self):
        """Update every parameter that has a gradient, in place (see the class docstring for the math)."""
        # float(): a schedule may hand back an np.float64, which would turn float32 arrays into float64
        lr, momentum, weight_decay = float(self.lr), float(self.momentum), float(self.weight_decay)
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}: it must be >= 0")
        for index, p in enumerate(self.params):
            if p.grad is None:
                continue
            get_array_module(p.data, p.grad)  # fails clearly when the gradient lives on another device
            g = p.grad.astype(p.data.dtype, copy=False)
            if weight_decay != 0:
                g = g + weight_decay * p.data  # a new array: p.grad itself is left as backward() made it
            if momentum != 0:
                buf = self.momentum_buffers[index]
                if buf is None:
                    buf = self.momentum_buffers[index] = g.copy()  # a copy: buf must never share p.grad's memory
                else:
                    buf *= momentum
                    buf += g
                g = g + momentum * buf if self.nesterov else buf
            p.data -= lr * g

    # --- saving and resuming ---------------------------------------------------------------
    def state_dict(self):
        """Everything needed to resume, as NumPy arrays and Python numbers (ready for ``np.savez``).

        Keys:
            "lr", "momentum", "weight_decay"   Python floats
            "nesterov"                         Python bool
            "num_params"                       Python int: how many parameters this optimiser has
            "momentum_buffer.<i>"              NumPy copy of the momentum buffer of parameter i
                                               (i = position in ``params``); present only for the
                                               parameters that have one (momentum > 0 and at least
                                               one step taken with a gradient)

        To save it in one file with the model weights, prefix the keys (e.g. ``optimizer/lr``) and
        strip the prefix again before ``load_state_dict``.
        """
        state = {
            "lr": float(self.lr),
            "momentum": float(self.momentum),
            "nesterov": bool(self.nesterov),
            "weight_decay": float(self.weight_decay),
            "num_params": len(self.params),
        }
        for index, buf in enumerate(self.momentum_buffers):
            if buf is not None:
                state[f"momentum_buffer.{index}"] = to_device(buf, "cpu").copy()
        return state

    def load_state_dict(self, state):
        """Restore the hyperparameters and momentum buffers saved by ``state_dict``.

        ``state`` is that dict, or one read back from ``np.load`` (numbers then arrive as 0-d arrays).
        The parameters must be the same, in the same order: the number of them and the shape of each
        buffer are checked before anything is changed. Each buffer is copied onto its parameter's
        device and dtype. Parameters with no saved buffer start a fresh one on their next step.
        """
        state = dict(state)
        scalar_keys = ("lr", "momentum", "nesterov", "weight_decay", "num_params")
        buffer_keys = {key: int(key.split(".")[1]) for key in state if re.fullmatch(r"momentum_buffer\.\d+", key)}
        missing = [key for key in scalar_keys if key not in state]
        unexpected = sorted(state.keys() - set(scalar_keys) - buffer_keys.keys())
        if missing or unexpected:
            raise KeyError(f"not an SGD state dict: missing keys {missing}, unexpected keys {unexpected}")

        count = int(state["num_params"])
        if count != len(self.params):
            raise ValueError(f"the state dict is for {count} parameters, but this optimiser has {len(self.params)}")
        for key, index in buffer_keys.items():
            if index >= len(self.params):
                raise ValueError(f"state dict key {key!r}: there is no parameter {index} (only {len(self.params)})")
            saved_shape, own_shape = np.shape(state[key]), self.params[index].shape
            if saved_shape != own_shape:
                raise ValueError(
                    f"state dict key {key!r}: parameter {index} has shape {own_shape}, "
                    f"but the saved momentum buffer has shape {saved_shape}"
                )
        lr, momentum = float(state["lr"]), float(state["momentum"])
        nesterov, weight_decay = bool(state["nesterov"]), float(state["weight_decay"])
        _check_hyperparameters(lr, momentum, nesterov, weight_decay)

        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, weight_decay
        self.momentum_buffers = [None] * len(self.params)
        for key, index in buffer_keys.items():
            p = self.params[index].data
            # astype copies: the buffer is updated in place and must not share the caller's array
            self.momentum_buffers[index] = to_device(state[key], device_of(p)).astype(p.dtype)
        return self


# --- learning-rate schedules: lr as a function of training progress (epochs, a float) -------------
def step_lr(base_lr, epoch, milestones, gamma=0.1):
    """Step decay: ``base_lr * gamma ** (number of milestones <= floor(epoch))``.

    The lr changes only at epoch boundaries (as torch's MultiStepLR stepped once per epoch); a
    milestone listed twice counts twice. He et al.'s CIFAR ResNets: base_lr 0.1, divided by 10
    (gamma 0.1) at 50% and 75% of training (32k and 48k of 64k iterations).
    """
    passed = sum(1 for milestone in milestones if milestone <= math.floor(epoch))
    return float(base_lr) * float(gamma) ** passed


def cosine_lr(base_lr, epoch, total_epochs, min_lr=0.0):
    """Cosine annealing: ``min_lr + (base_lr - min_lr) * (1 + cos(pi * epoch / total_epochs)) / 2``.

    base_lr at epoch 0, min_lr at total_epochs (torch's CosineAnnealingLR closed form, T_max =
    total_epochs, eta_min = min_lr); smooth in between, so fractional epochs decay it step by step.
    """
    base_lr, min_lr = float(base_lr), float(min_lr)
    return min_lr + (base_lr - min_lr) * (1.0 + math.cos(math.pi * epoch / total_epochs)) / 2.0


def warmup(lr, epoch, warmup_epochs, start_factor=0.1):
    """Linear warm-up: ``lr * (start_factor + (1 - start_factor) * min(1, epoch / warmup_epochs))``.

    The factor climbs in a straight line from ``start_factor`` at epoch 0 to 1 at ``warmup_epochs``
    and stays 1 after (torch's LinearLR closed form, total_iters = warmup_epochs). It starts at
    start_factor, not 0, so the very first step (epoch 0.0) already learns: the default 0.1 is He et
    al.'s warm-up for ResNet-110 (lr 0.01 where the schedule says 0.1). ``warmup_epochs`` 0 means no
    warm-up (factor 1).
    """
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    if not 0 < start_factor <= 1:
        raise ValueError(f"start_factor must be in (0, 1], got {start_factor}")
    if warmup_epochs == 0:
        return float(lr)
    progress = min(1.0, epoch / warmup_epochs)
    return float(lr) * (start_factor + (1.0 - start_factor) * progress)


SCHEDULES = ("step", "cosine", "constant")


class Schedule:
    """A schedule made by ``make_schedule``: call it with progress in epochs, get the lr.

    ``schedule(epoch) = warmup(main(epoch), epoch, warmup_epochs)``: the warm-up factor multiplies
    the main schedule, which is "step" (``step_lr``), "cosine" (``cosine_lr`` down to 0) or
    "constant" (base_lr throughout).
    """

    def __init__(self, name, base_lr, total_epochs, milestones, gamma, warmup_epochs):
        self.name = name
        self.base_lr = base_lr
        self.total_epochs = total_epochs
        self.milestones = milestones
        self.gamma = gamma
        self.warmup_epochs = warmup_epochs

    def __call__(self, epoch):
        if self.name == "step":
            lr = step_lr(self.base_lr, epoch, self.milestones, self.gamma)
        elif self.name == "cosine":
            lr = cosine_lr(self.base_lr, epoch, self.total_epochs)
        else:
            lr = self.base_lr
        return warmup(lr, epoch, self.warmup_epochs)

    def __repr__(self):
        milestones = f", milestones={self.milestones}, gamma={self.gamma}" if self.name == "step" else ""
        return (
            f"Schedule({self.name!r}, base_lr={self.base_lr}, total_epochs={self.total_epochs}"
            f"{milestones}, warmup_epochs={self.warmup_epochs})"
        )


def make_schedule(name, base_lr, total_epochs, milestones=None, gamma=0.1, warmup_epochs=0):
    """The schedule ``name`` ("step", "cosine" or "constant") as a function epoch -> lr.

    For "step", ``milestones`` default to 50% and 75% of ``total_epochs``, rounded half up to whole
    epochs (He et al.'s CIFAR recipe: e.g. 82 and 123 of 164 epochs); the other schedules take none.
    ``warmup_epochs`` > 0 adds a linear warm-up (see ``warmup``) in front of any of them.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}: choose one of {', '.join(repr(s) for s in SCHEDULES)}")
    base_lr, gamma = float(base_lr), float(gamma)
    if base_lr < 0:
        raise ValueError(f"invalid learning rate {base_lr}: it must be >= 0")
    if total_epochs <= 0:
        raise ValueError(f"total_epochs must be > 0, got {total_epochs}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    if name == "step":
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if milestones is None:
            milestones = [math.floor(fraction * total_epochs + 0.5) for fraction in (0.5, 0.75)]
        milestones = sorted(milestones)
    elif milestones is not None:
        raise ValueError(f"milestones apply only to the 'step' schedule, not to {name!r}")
    return Schedule(name, base_lr, total_epochs, milestones, gamma, warmup_epochs)
