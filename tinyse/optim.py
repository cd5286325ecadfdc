"""The optimisers (SGD with momentum, PyTorch's semantics; Muon for conv filters), learning-rate schedules, and an
average of the weights.

Training loop, one step::

    optimizer.lr = schedule(epoch + step / steps_per_epoch)   # progress in epochs, a float
    optimizer.zero_grad()                                     # gradients accumulate until cleared
    loss.backward()
    optimizer.step()
    ema.update(model)                                         # optional: the moving average of the weights

``SGD(param_groups(model, weight_decay), ...)`` leaves batch norm's parameters and
every bias out of the weight decay, as ``torch.optim.SGD`` does with two groups.

``SGD`` works on the raw arrays of each parameter (``p.data`` and ``p.grad``),
NumPy or CuPy alike, and keeps their dtype: every hyperparameter is a Python
float, which NumPy and CuPy treat as "weak" (float32 times a Python float stays
float32, where times an ``np.float64`` scalar it would become float64).

A schedule is a pure function of training progress ``epoch`` (completed epochs
plus the fraction of the current one) that returns the learning rate; it keeps
no state, so resuming a run needs only the epoch it stopped at.
"""
import copy
import math
import re

import numpy as np

from tinyse.backend import device_of, elementwise_kernel, get_array_module, to_device
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


def param_groups(named_parameters, weight_decay, decay_norm_and_bias=False):
    """SGD's parameter groups: the weights with ``weight_decay``, batch norm's parameters and the biases without.

    named_parameters: (name, parameter) pairs, e.g. ``model.named_parameters()`` (tinyse or torch: only
    ``.ndim`` is read). The split is by shape: a 1-D parameter is a bias or a batch norm scale / shift
    (a conv or linear weight has 2 or more axes). Decaying those towards 0 does not regularise the
    function (batch norm undoes a scale of the weights before it) but shrinks the scales the network
    needs; leaving them out is the usual practice (Goyal et al. 2017, "Accurate, Large Minibatch SGD",
    sec. 5.1; timm's ``param_groups_weight_decay``).

    Returns [{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}],
    the format ``SGD`` and ``torch.optim.SGD`` both take (an empty group is left out);
    with ``decay_norm_and_bias`` one group of every parameter with ``weight_decay``.
    """
    named_parameters = list(named_parameters)
    if decay_norm_and_bias:
        return [{"params": [p for _, p in named_parameters], "weight_decay": float(weight_decay)}]
    decay = [p for _, p in named_parameters if p.ndim > 1]
    no_decay = [p for _, p in named_parameters if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def muon_split(named_parameters, muon_lr, weight_decay, decay_norm_and_bias=False):
    """The parameters split between Muon and SGD: (filters, sgd_groups).

    With ``muon_lr`` (non-zero) the conv filters, the 4-axis parameters (each followed by a batch norm, which
    makes their scale free), go to Muon; every other parameter goes to SGD in ``param_groups``. With
    ``muon_lr`` 0 ``filters`` is empty and SGD gets everything. tinyse and torch parameters alike
    (only ``.ndim`` is read), so ``tinyse.train`` and the PyTorch twin split the same way.
    """
    named_parameters = list(named_parameters)
    filters = [p for _, p in named_parameters if p.ndim == 4] if muon_lr else []
    rest = [(name, p) for name, p in named_parameters if not (muon_lr and p.ndim == 4)]
    return filters, param_groups(rest, weight_decay, decay_norm_and_bias)


def _group_list(params, weight_decay):
    """``params`` as a list of groups ({"params": [...], "weight_decay": float}), as torch normalises them."""
    params = list(params)
    if not params or not isinstance(params[0], dict):
        return [{"params": params, "weight_decay": weight_decay}]
    groups = []
    for index, group in enumerate(params):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"SGD: parameter group {index} must be a dict with a 'params' list, got {group!r}")
        unknown = sorted(group.keys() - {"params", "weight_decay"})
        if unknown:
            raise ValueError(f"SGD: parameter group {index} has settings {unknown}; a group may set only "
                             "'weight_decay' (lr, momentum and nesterov are the optimiser's)")
        groups.append({"params": list(group["params"]), "weight_decay": float(group.get("weight_decay", weight_decay))})
    return groups


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
        params: Tensors (e.g. ``model.parameters()``), each with ``.data`` and ``.grad`` raw arrays; or, as in
            torch, a list of parameter groups ``{"params": [...], "weight_decay": wd}`` (``param_groups``
            makes them), each group with its own weight decay (a group without one takes ``weight_decay``)
        lr: learning rate; a plain attribute, which the training loop sets from a schedule each step
        momentum, nesterov, weight_decay: as above

    ``p.data`` and the momentum buffers are updated in place and keep their
    dtype and device. (On the GPU the first step moves each ``p.data`` into one flat array of all the
    parameters, as a view with the same values, so that one kernel updates them all: ``_step_all_on_gpu``.)
    ``self.params`` lists every parameter, group after group; a momentum buffer
    is known by its parameter's position in that list.
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        lr, momentum, nesterov, weight_decay = float(lr), float(momentum), bool(nesterov), float(weight_decay)
        self.param_groups = _group_list(params, weight_decay)
        self.params = [p for group in self.param_groups for p in group["params"]]
        if not self.params:
            raise ValueError("SGD got an empty parameter list")
        for index, p in enumerate(self.params):
            if not isinstance(p, Tensor):
                raise TypeError(f"SGD can only optimise Tensors, but parameter {index} is a {type(p).__name__}")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("SGD got the same parameter twice (it would be updated twice per step)")
        _check_hyperparameters(lr, momentum, nesterov, weight_decay)
        for group in self.param_groups:
            _check_hyperparameters(lr, momentum, nesterov, group["weight_decay"])
        self.lr = lr
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.momentum_buffers = [None] * len(self.params)  # one per parameter, made on its first step
        self.flat = None  # on the GPU: every parameter and buffer end to end (``_flat_state``)

    def __repr__(self):
        groups = "" if len(self.param_groups) == 1 else (
            ", groups=" + str([(len(g["params"]), g["weight_decay"]) for g in self.param_groups]))
        return (
            f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
            f"weight_decay={self.weight_decay}, parameters={len(self.params)}{groups})"
        )

    def weight_decays(self):
        """The weight decay of each parameter, in ``self.params`` order (its group's)."""
        return [group["weight_decay"] for group in self.param_groups for _ in group["params"]]

    def zero_grad(self):
        """Clear every parameter's gradient (backward() adds to ``.grad`` until it is cleared)."""
        for p in self.params:
            p.grad = None

    def step(self):
        """Update every parameter that has a gradient, in place (see the class docstring for the math)."""
        # float(): a schedule may hand back an np.float64, which would turn float32 arrays into float64
        lr, momentum = float(self.lr), float(self.momentum)
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}: it must be >= 0")
        if momentum != 0 and self._step_all_on_gpu(lr, momentum):
            return
        for index, (p, weight_decay) in enumerate(zip(self.params, self.weight_decays())):
            if p.grad is None:
                continue
            xp = get_array_module(p.data, p.grad)  # fails clearly when the gradient lives on another device
            g = p.grad.astype(p.data.dtype, copy=False)
            if xp is not np and momentum != 0:  # the GPU: the four lines below in one kernel
                first = self.momentum_buffers[index] is None
                if first:
                    self.momentum_buffers[index] = xp.empty_like(p.data)
                self._kernel_step(g, weight_decay, lr, momentum, first, p.data, self.momentum_buffers[index])
                continue
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

    def _kernel_step(self, grad, weight_decay, lr, momentum, first, param, buf):
        """The four lines of ``step`` as one CuPy kernel, updating ``param`` and ``buf`` in place: for one
        parameter (``weight_decay`` a number), or for all of them laid end to end (``_step_all_on_gpu``,
        ``weight_decay`` then an array, each value's group's)."""
        kernel = elementwise_kernel(
            "T grad, T weight_decay, T lr, T momentum, bool nesterov, bool first", "T param, T buf",
            """
            T g = grad + weight_decay * param;
            buf = first ? g : momentum * buf + g;
            g = nesterov ? g + momentum * buf : buf;
            param -= lr * g;
            """,
            "tinyse_sgd_step",
        )
        kernel(grad, weight_decay, lr, momentum, self.nesterov, first, param, buf)

    def _step_all_on_gpu(self, lr, momentum):
        """``step`` on the GPU for every parameter at once, as torch's fused SGD: 2 kernel launches a step
        (the gradients gathered into one array, then ``_kernel_step`` over all the values) instead of one
        per parameter (SE-ResNet-20 has 95). The parameters and momentum buffers live end to end in one
        flat array each (``_flat_state``), each ``p.data`` a view into it. CuPy's ``concatenate`` copies
        more than 8 arrays in one kernel (after copying a table of their addresses to the device).

        Returns False, having done nothing, unless every parameter is on the GPU with a gradient, all
        share one dtype, and either all or none have a momentum buffer: ``step`` then goes parameter by
        parameter.
        """
        params = self.params
        if any(p.grad is None for p in params) or get_array_module(*(p.data for p in params)) is np:
            return False
        dtype = params[0].data.dtype
        made = [buf is not None for buf in self.momentum_buffers]
        if any(p.data.dtype != dtype for p in params) or any(made) != all(made):
            return False
        flat = self._flat_state()
        xp = get_array_module(flat["params"], *(p.grad for p in params))
        grads = xp.concatenate([p.grad.astype(dtype, copy=False).ravel() for p in params])
        self._kernel_step(grads, flat["weight_decay"], lr, momentum, not all(made), flat["params"], flat["buffers"])
        self.momentum_buffers = list(flat["buffer_views"])  # made by this step if they were not before
        return True

    def _flat_state(self):
        """{"params", "buffers", "weight_decay"}: flat device arrays, the parameters' values end to end, their
        momentum buffers likewise, and each value's weight decay. Made on the first GPU step, and again
        whenever an array was swapped out since (``Module.to``, ``load_state_dict`` of the model or of this
        optimiser) or a group's weight decay changed; the parameters' ``.data`` and ``momentum_buffers``
        then become views into the flat arrays, so that an update of those updates the model."""
        flat, decays = self.flat, self.weight_decays()
        if (flat is not None and flat["decays"] == decays
                and all(p.data is view for p, view in zip(self.params, flat["param_views"]))
                and all(buf is None or buf is view for buf, view in zip(self.momentum_buffers, flat["buffer_views"]))):
            return flat
        xp = get_array_module(self.params[0].data)
        params = xp.concatenate([p.data.ravel() for p in self.params])
        buffers = (xp.empty_like(params) if self.momentum_buffers[0] is None
                   else xp.concatenate([buf.ravel() for buf in self.momentum_buffers]))
        sizes = [p.data.size for p in self.params]
        ends = np.cumsum(sizes).tolist()

        def pieces(flat):  # flat's stretch of each parameter, shaped as that parameter
            return [flat[end - size:end].reshape(p.shape) for p, size, end in zip(self.params, sizes, ends)]

        param_views, buffer_views = pieces(params), pieces(buffers)  # the caller hands on the buffer views
        for p, view in zip(self.params, param_views):
            p.data = view
        weight_decay = xp.asarray(np.repeat(np.array(decays, dtype=params.dtype), sizes))  # one copy to the device
        self.flat = {"params": params, "buffers": buffers, "weight_decay": weight_decay, "decays": decays,
                     "param_views": param_views, "buffer_views": buffer_views}
        return self.flat

    # --- saving and resuming ---------------------------------------------------------------
    def state_dict(self):
        """Everything needed to resume, as NumPy arrays and Python numbers (ready for ``np.savez``).

        Keys:
            "lr", "momentum", "weight_decay"   Python floats
            "nesterov"                         Python bool
            "num_params"                       Python int: how many parameters this optimiser has
            "group_sizes"                      int64 array: the number of parameters in each group
            "group_weight_decays"              float64 array: the weight decay of each group
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
            "group_sizes": np.array([len(g["params"]) for g in self.param_groups], dtype=np.int64),
            "group_weight_decays": np.array([g["weight_decay"] for g in self.param_groups], dtype=np.float64),
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
        The groups must have the same sizes; their weight decays are restored. A state dict without
        groups (tinyse before parameter groups) is one group, with its ``weight_decay``.
        """
        state = dict(state)
        scalar_keys = ("lr", "momentum", "nesterov", "weight_decay", "num_params")
        group_keys = ("group_sizes", "group_weight_decays")
        buffer_keys = {key: int(key.split(".")[1]) for key in state if re.fullmatch(r"momentum_buffer\.\d+", key)}
        missing = [key for key in scalar_keys if key not in state]
        unexpected = sorted(state.keys() - set(scalar_keys) - set(group_keys) - buffer_keys.keys())
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
        sizes = [int(n) for n in np.atleast_1d(state.get("group_sizes", [count]))]
        decays = [float(d) for d in np.atleast_1d(state.get("group_weight_decays", [weight_decay]))]
        own_sizes = [len(group["params"]) for group in self.param_groups]
        if sizes != own_sizes or len(decays) != len(sizes):
            raise ValueError(f"the state dict has parameter groups of sizes {sizes}, but this optimiser's "
                             f"groups have sizes {own_sizes}")
        for decay in decays:
            _check_hyperparameters(lr, momentum, nesterov, decay)

        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, weight_decay
        for group, decay in zip(self.param_groups, decays):
            group["weight_decay"] = decay
        self.momentum_buffers = [None] * len(self.params)
        for key, index in buffer_keys.items():
            p = self.params[index].data
            # astype copies: the buffer is updated in place and must not share the caller's array
            self.momentum_buffers[index] = to_device(state[key], device_of(p)).astype(p.dtype)
        return self


# --- Muon: the conv filters' momentum, orthogonalised -------------------------------------------
NEWTON_SCHULZ_STEPS = 5
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Jordan et al. (2024): a steep rise from 0, in 5 steps


def orthogonalize(matrix, steps=NEWTON_SCHULZ_STEPS):
    """About U V^T for ``matrix`` = U S V^T (its SVD): the matrix with its singular values set to about 1.

    A Newton-Schulz iteration, only matrix products (fast on a CPU or a GPU, where an SVD is slow)::

        X_0     = M / |M|_F                      every singular value now <= 1
        A       = X_k X_k^T
        X_k+1   = a X_k + (b A + c A^2) X_k      each singular value s -> a s + b s^3 + c s^5

    U and V stay as they are; only the singular values move. (a, b, c) = NEWTON_SCHULZ_COEFFICIENTS make the
    map rise steeply from 0 (slope a = 3.4), so 5 steps lift small singular values (down to about 1/300 of
    |M|_F) as far as larger ones, to between about 0.7 and 1.2 rather than to exactly 1, which trains as well
    (Jordan et al. 2024, "Muon: an optimizer for hidden layers"). A wide matrix (rows <= columns) keeps A
    small (rows x rows); a tall one is transposed first and back after.

    matrix: (rows, columns) raw array, NumPy or CuPy. Returns a new array of the same shape and dtype.
    """
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    xp = get_array_module(matrix)
    tall = matrix.shape[0] > matrix.shape[1]
    x = matrix.T if tall else matrix
    x = x / (xp.sqrt((x * x).sum()) + 1e-7)  # +1e-7: a zero gradient gives a zero update, not NaN
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.T if tall else x


class Muon:
    """Momentum, orthogonalised (Muon, Jordan et al. 2024), for weights that a batch norm follows: conv filters.

    For each parameter W, shape (C_out, ...), with gradient G, one ``step()`` does::

        buf = momentum * buf + G                          buf = G on the parameter's first step
        G   = G + momentum * buf   if nesterov else buf
        W   = W * sqrt(C_out) / |W|_F                     the scale batch norm ignores, held fixed
        W   = W - lr * orthogonalize(G as a (C_out, rest) matrix)

    Why: SGD moves each filter along its gradient, which a few directions dominate. Orthogonalising the
    update gives every direction of the (C_out, rest) matrix the same step, so the rare directions learn
    as fast as the common ones. The update's size no longer depends on the gradient's, so the weights'
    scale is held at sqrt(C_out) (filters of norm 1 on average): the batch norm after the conv undoes any
    scale of W, and a fixed scale makes ``lr`` the relative step. There is no weight decay (it only
    shrinks the scale, which is fixed here).

    params: Tensors with 2 or more axes (``.data``, ``.grad`` raw arrays, NumPy or CuPy); those without a
        gradient are skipped. lr: a plain attribute, set by the training loop (``MuonWithSGD``).
    """

    def __init__(self, params, lr, momentum=0.9, nesterov=True):
        lr, momentum, nesterov = float(lr), float(momentum), bool(nesterov)
        self.params = list(params)
        if not self.params:
            raise ValueError("Muon got an empty parameter list")
        for index, p in enumerate(self.params):
            if not isinstance(p, Tensor):
                raise TypeError(f"Muon can only optimise Tensors, but parameter {index} is a {type(p).__name__}")
            if p.ndim < 2:
                raise ValueError(f"Muon orthogonalises matrices, but parameter {index} has shape {p.shape} "
                                 "(give biases and batch norm's parameters to SGD)")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("Muon got the same parameter twice (it would be updated twice per step)")
        _check_hyperparameters(lr, momentum, nesterov, 0.0)
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.momentum_buffers = [None] * len(self.params)

    def __repr__(self):
        return f"Muon(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, parameters={len(self.params)})"

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        """Update every parameter that has a gradient, in place (the class docstring has the math)."""
        lr, momentum = float(self.lr), float(self.momentum)
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}: it must be >= 0")
        for index, p in enumerate(self.params):
            if p.grad is None:
                continue
            xp = get_array_module(p.data, p.grad)
            g = p.grad.astype(p.data.dtype, copy=False)
            if momentum != 0:
                buf = self.momentum_buffers[index]
                if buf is None:
                    buf = self.momentum_buffers[index] = g.copy()
                else:
                    buf *= momentum
                    buf += g
                g = g + momentum * buf if self.nesterov else buf
            rows = p.data.shape[0]
            p.data *= math.sqrt(rows) / xp.sqrt((p.data * p.data).sum())  # a 0-d array: no wait for the device
            p.data -= lr * orthogonalize(g.reshape(rows, -1)).reshape(p.data.shape)

    def state_dict(self):
        """{"lr", "momentum", "nesterov", "num_params", "momentum_buffer.<i>" (NumPy copies, those made)}."""
        state = {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov, "num_params": len(self.params)}
        for index, buf in enumerate(self.momentum_buffers):
            if buf is not None:
                state[f"momentum_buffer.{index}"] = to_device(buf, "cpu").copy()
        return state

    def load_state_dict(self, state):
        """Restore what ``state_dict`` saved (or ``np.load`` read back), checked before anything changes."""
        state = dict(state)
        scalar_keys = ("lr", "momentum", "nesterov", "num_params")
        buffer_keys = {key: int(key.split(".")[1]) for key in state if re.fullmatch(r"momentum_buffer\.\d+", key)}
        missing = [key for key in scalar_keys if key not in state]
        unexpected = sorted(state.keys() - set(scalar_keys) - buffer_keys.keys())
        if missing or unexpected:
            raise KeyError(f"not a Muon state dict: missing keys {missing}, unexpected keys {unexpected}")
        if int(state["num_params"]) != len(self.params):
            raise ValueError(f"the state dict is for {int(state['num_params'])} parameters, "
                             f"but this optimiser has {len(self.params)}")
        for key, index in buffer_keys.items():
            if index >= len(self.params) or np.shape(state[key]) != self.params[index].shape:
                raise ValueError(f"state dict key {key!r} does not fit this optimiser's parameters")
        lr, momentum, nesterov = float(state["lr"]), float(state["momentum"]), bool(state["nesterov"])
        _check_hyperparameters(lr, momentum, nesterov, 0.0)
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.momentum_buffers = [None] * len(self.params)
        for key, index in buffer_keys.items():
            p = self.params[index].data
            self.momentum_buffers[index] = to_device(state[key], device_of(p)).astype(p.dtype)
        return self


class MuonWithSGD:
    """Muon for the conv filters, SGD for every other parameter, on the training loop's one schedule.

    The loop sets ``optimizer.lr`` from its schedule at every step: SGD takes that lr, Muon that lr times
    ``muon.lr / sgd.lr`` as they were built, so both rise and fall together, each from its own peak.
    ``state_dict`` holds both, their keys prefixed "muon/" and "sgd/".
    """

    def __init__(self, muon, sgd):
        if sgd.lr <= 0:
            raise ValueError(f"MuonWithSGD scales Muon's lr by SGD's, which must be > 0, got {sgd.lr}")
        shared = {id(p) for p in muon.params} & {id(p) for p in sgd.params}
        if shared:
            raise ValueError(f"{len(shared)} parameters are given to both Muon and SGD")
        self.muon, self.sgd = muon, sgd
        self.muon_lr_ratio = muon.lr / sgd.lr
        self.params = muon.params + sgd.params

    def __repr__(self):
        return f"MuonWithSGD({self.muon!r}, {self.sgd!r})"

    @property
    def lr(self):
        return self.sgd.lr

    @lr.setter
    def lr(self, lr):
        self.sgd.lr = lr
        self.muon.lr = float(lr) * self.muon_lr_ratio

    def zero_grad(self):
        self.muon.zero_grad()
        self.sgd.zero_grad()

    def step(self):
        self.muon.step()
        self.sgd.step()

    def state_dict(self):
        state = {f"muon/{key}": value for key, value in self.muon.state_dict().items()}
        state.update({f"sgd/{key}": value for key, value in self.sgd.state_dict().items()})
        return state

    def load_state_dict(self, state):
        parts = {"muon/": {}, "sgd/": {}}
        for key, value in dict(state).items():
            prefix = next((p for p in parts if key.startswith(p)), None)
            if prefix is None:
                raise KeyError(f"not a MuonWithSGD state dict: key {key!r} is neither muon/... nor sgd/...")
            parts[prefix][key[len(prefix):]] = value
        self.muon.load_state_dict(parts["muon/"])
        self.sgd.load_state_dict(parts["sgd/"])
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


def one_cycle_lr(peak_lr, epoch, total_epochs, warmup_epochs, div_factor=25.0):
    """One cycle (Smith & Topin 2019, "Super-Convergence"): up in a straight line, then down in one.

        lr(epoch) = peak/div + (peak - peak/div) * epoch / warmup_epochs          for epoch < warmup_epochs
        lr(epoch) = peak * (total_epochs - epoch) / (total_epochs - warmup_epochs)  after, down to 0 at the end

    A triangle: from ``peak_lr / div_factor`` (the first step, e.g. 0.2 / 25 = 0.008) to ``peak_lr`` at
    ``warmup_epochs``, then a linear decay that reaches 0 at ``total_epochs``, the end of the last step;
    the last step itself runs at about peak / (steps after the warm-up). The rise lets the large
    peak lr be reached without the first steps blowing up; the long fall anneals the weights into a
    minimum. Linear on both sides, this is ``torch.optim.lr_scheduler.OneCycleLR`` with
    ``anneal_strategy="linear"`` and ``final_div_factor=inf``, where torch counts steps 0..T-1 and
    ends its warm-up at step pct_start*T - 1: with S steps per epoch, torch's lr at step i is this
    function at epoch i / S when T = total_epochs*S + 1 and pct_start = (warmup_epochs*S + 1) / T.
    ``warmup_epochs`` 0 starts at the peak. Beyond ``total_epochs`` the lr stays 0.
    """
    peak_lr = float(peak_lr)
    if epoch < warmup_epochs:
        start = peak_lr / div_factor
        return start + (peak_lr - start) * epoch / warmup_epochs
    return peak_lr * (max(0.0, total_epochs - epoch) / (total_epochs - warmup_epochs))


SCHEDULES = ("step", "cosine", "constant", "onecycle")


class Schedule:
    """A schedule made by ``make_schedule``: call it with progress in epochs, get the lr.

    ``schedule(epoch) = warmup(main(epoch), epoch, warmup_epochs)``: the warm-up factor multiplies
    the main schedule, which is "step" (``step_lr``), "cosine" (``cosine_lr`` down to 0) or
    "constant" (base_lr throughout). "onecycle" (``one_cycle_lr``, base_lr its peak) has its warm-up
    built in, from base_lr / div_factor.
    """

    def __init__(self, name, base_lr, total_epochs, milestones, gamma, warmup_epochs, div_factor=25.0):
        self.name = name
        self.base_lr = base_lr
        self.total_epochs = total_epochs
        self.milestones = milestones
        self.gamma = gamma
        self.warmup_epochs = warmup_epochs
        self.div_factor = div_factor

    def __call__(self, epoch):
        if self.name == "onecycle":
            return one_cycle_lr(self.base_lr, epoch, self.total_epochs, self.warmup_epochs, self.div_factor)
        if self.name == "step":
            lr = step_lr(self.base_lr, epoch, self.milestones, self.gamma)
        elif self.name == "cosine":
            lr = cosine_lr(self.base_lr, epoch, self.total_epochs)
        else:
            lr = self.base_lr
        return warmup(lr, epoch, self.warmup_epochs)

    def __repr__(self):
        milestones = f", milestones={self.milestones}, gamma={self.gamma}" if self.name == "step" else ""
        div = f", div_factor={self.div_factor}" if self.name == "onecycle" else ""
        return (
            f"Schedule({self.name!r}, base_lr={self.base_lr}, total_epochs={self.total_epochs}"
            f"{milestones}, warmup_epochs={self.warmup_epochs}{div})"
        )


def make_schedule(name, base_lr, total_epochs, milestones=None, gamma=0.1, warmup_epochs=0, div_factor=25.0):
    """The schedule ``name`` ("step", "cosine", "constant" or "onecycle") as a function epoch -> lr.

    For "step", ``milestones`` default to 50% and 75% of ``total_epochs``, rounded half up to whole
    epochs (He et al.'s CIFAR recipe: e.g. 82 and 123 of 164 epochs); the other schedules take none.
    ``warmup_epochs`` > 0 adds a linear warm-up (see ``warmup``) in front of step, cosine and constant;
    for "onecycle" it is the rise from ``base_lr / div_factor`` to the peak ``base_lr`` (``one_cycle_lr``),
    and must be shorter than the run.
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
    if name == "onecycle":
        if warmup_epochs >= total_epochs:
            raise ValueError(f"onecycle: warmup_epochs ({warmup_epochs}) must be shorter than the run "
                             f"({total_epochs} epochs)")
        if not div_factor >= 1:
            raise ValueError(f"onecycle: div_factor must be >= 1 (the start is peak / div_factor), got {div_factor}")
    return Schedule(name, base_lr, total_epochs, milestones, gamma, warmup_epochs, float(div_factor))


# --- the moving average of the weights -----------------------------------------------------------
def ema_decay(decay, step):
    """The weight of the old average at update ``step`` (1, 2, ...) of ``ModelEMA``:

        beta_t = decay * (1 - decay^(t-1)) / (1 - decay^t)

    0 at the first update (the average becomes the weights), rising to ``decay``. With it the average
    after t updates is sum_s decay^(t-s) * w_s / sum_s decay^(t-s) over s = 1..t: each step's weights
    w_s weighed by decay^age, normalised to sum to 1 (the bias correction of Adam, Kingma & Ba 2015).
    """
    if step < 1:
        raise ValueError(f"ema_decay: updates count from 1, got {step}")
    return decay * (1.0 - decay ** (step - 1)) / (1.0 - decay**step)


class ModelEMA:
    """An exponential moving average of a model's weights and batch-norm statistics, updated after every step.

        average_t = beta_t * average_{t-1} + (1 - beta_t) * weights_t,   beta_t = ema_decay(decay, t)

    Every floating array of the model's state is averaged: the parameters and batch norm's running
    mean and variance, as timm's ``ModelEmaV2`` and ``torch.optim.swa_utils.AveragedModel(use_buffers=True)``
    do: the averaged weights are evaluated with averaged statistics. (Recomputing the statistics for
    the averaged weights, as SWA's ``update_bn`` does, would cost a pass over the training set at every
    evaluation.) Integer state (``num_batches_tracked``) is copied.

    Why the bias correction (``ema_decay``): timm and torch start the average as a copy of the initial
    weights and then use ``decay`` itself, so after the first epoch of a 15-epoch run at decay 0.999
    (391 steps) the random initial weights still weigh 0.999^391 = 68%: the average is mostly the
    untrained network. Here they weigh nothing, and the average follows training from the first epoch.
    After a few thousand steps the two agree (decay^t -> 0).

    decay: per step; the average spans about 1 / (1 - decay) steps (0.999: 1,000 steps, 2.6 epochs of
    CIFAR-10 at batch 128; at another batch size the same span in epochs takes another decay).
    ``self.model`` is a copy of the model holding the average: evaluate it, save it
    (``state_dict``), never train it.
    """

    def __init__(self, model, decay):
        decay = float(decay)
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.steps = decay, 0
        self.model = copy.deepcopy(model).eval()

    def __repr__(self):
        return f"ModelEMA(decay={self.decay}, steps={self.steps})"

    def update(self, model):
        """Fold the weights of ``model`` (the one being trained) into the average, in place."""
        self.steps += 1
        beta = ema_decay(self.decay, self.steps)
        for average, current in zip(_state_arrays(self.model), _state_arrays(model)):
            if average.dtype.kind == "f":
                average *= beta
                average += (1.0 - beta) * current
            else:
                average[...] = current

    def state_dict(self):
        """{"decay", "steps", "model/<key>" for every entry of the average model's state_dict()}."""
        state = {"decay": self.decay, "steps": self.steps}
        state.update({f"model/{k}": v for k, v in self.model.state_dict().items()})
        return state

    def load_state_dict(self, state):
        state = dict(state)
        if "steps" not in state or "decay" not in state:
            raise KeyError(f"not a ModelEMA state dict: keys {sorted(state)[:5]}...")
        self.decay, self.steps = float(state["decay"]), int(state["steps"])
        self.model.load_state_dict({k[len("model/"):]: v for k, v in state.items() if k.startswith("model/")})
        return self


def _state_arrays(model):
    """The raw arrays of a model's parameters, then its buffers, in a fixed order (two copies of one model agree)."""
    return [p.data for _, p in model.named_parameters()] + [b for _, b in model.named_buffers()]
