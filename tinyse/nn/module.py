"""``Module``: a tree of layers that owns parameters and buffers, as torch.nn.Module does.

Assigning a ``Parameter`` or a ``Module`` to an attribute registers it; arrays
that are state but not trained (batch norm's running statistics) are registered
with ``register_buffer``. Names are dotted paths (``layer1.0.conv1.weight``),
the same keys a PyTorch model of the same structure has, so weights move
between the two with ``state_dict`` / ``load_state_dict``.
"""
import os
import tempfile

import numpy as np

from tinyse.backend import device_of, to_device
from tinyse.tensor import Tensor

_tracer = None  # when set (tinyse.summary does), every module call goes through it: _tracer(module, args)


class Parameter(Tensor):
    """A Tensor that a Module trains: ``requires_grad`` is always on."""

    def __init__(self, data):
        super().__init__(data, requires_grad=True)


class Module:
    """Base class of every layer and model: subclasses set attributes in ``__init__`` and write ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"call super().__init__() in {type(self).__name__}.__init__ before assigning attributes")
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        registered = isinstance(value, (Parameter, Module)) or name in self.__dict__.get("_buffer_names", ())
        if registered:
            # a plain attribute of that name (``self.bias = None`` earlier) would shadow the
            # registries, which ``__getattr__`` only reaches when normal lookup fails
            self.__dict__.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif registered:
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):  # called only when normal lookup fails
        for registry in ("_parameters", "_buffers", "_modules"):
            if name in self.__dict__.get(registry, {}):
                return self.__dict__[registry][name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def register_buffer(self, name, array, on_host=False):
        """Keep ``array`` as state of this module (saved and moved with it, never trained).

        ``on_host``: the array stays in host memory when ``to()`` moves the rest to the GPU: for state that
        only the host reads, such as batch norm's batch counter (on the GPU, ``+= 1`` would be a kernel launch
        per layer and step).
        """
        self.__dict__.setdefault("_buffer_names", set()).add(name)
        if on_host:
            self.__dict__.setdefault("_host_buffer_names", set()).add(name)
        self.__dict__.pop(name, None)  # a plain attribute of that name would shadow the buffer
        self._buffers[name] = array

    def __call__(self, *args):
        if _tracer is not None:
            return _tracer(self, args)
        return self.forward(*args)

    def forward(self, *args):
        raise NotImplementedError

    # --- walking the tree ------------------------------------------------------------------
    def named_modules(self, prefix="", seen=None):
        """(dotted name, module) for this module and every module below it, depth first, each module once."""
        seen = set() if seen is None else seen
        if id(self) in seen:
            return
        seen.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name, seen)

    def modules(self):
        return (module for _, module in self.named_modules())

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self):
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        for prefix, module in self.named_modules():
            for name, b in module._buffers.items():
                yield (f"{prefix}.{name}" if prefix else name), b

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # --- training state --------------------------------------------------------------------
    def zero_grad(self):
        """Clear every parameter's gradient (gradients accumulate across backward() calls until then)."""
        for p in self.parameters():
            p.grad = None

    def train(self, mode=True):
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device=None, dtype=None):
        """Move every parameter and buffer to ``device`` and/or cast floating ones to ``dtype``, in place."""
        for module in self.modules():
            for p in module._parameters.values():
                p.data = _convert(p.data, device, dtype)
                p.grad = None
            host_only = module.__dict__.get("_host_buffer_names", ())
            for name, b in module._buffers.items():
                module._buffers[name] = _convert(b, None if name in host_only else device, dtype)
        return self

    # --- saving and loading ------------------------------------------------------------------
    def named_arrays(self):
        """(dotted name, array) of every parameter and buffer, in ``state_dict`` order: the model's own arrays,
        on its device (no copy, no transfer)."""
        for prefix, module in self.named_modules():
            for name, array in [*((n, p.data) for n, p in module._parameters.items()), *module._buffers.items()]:
                yield (f"{prefix}.{name}" if prefix else name), array

    def state_dict(self):
        """{dotted name: NumPy array} of every parameter and buffer, with PyTorch's key names (copies, on the host)."""
        return {key: to_device(array, "cpu").copy() for key, array in self.named_arrays()}

    def load_state_dict(self, state):
        """Copy arrays into the parameters and buffers, keeping each one's dtype and device.

        ``state`` is a dict of NumPy or device arrays (e.g. ``{k: v.numpy() for k, v in
        torch_model.state_dict().items()}``), an opened ``.npz``, or the path of one. Keys and shapes must
        match exactly; nothing changes when they do not. Each array is copied once, to the model's device:
        the model never shares memory with the caller's arrays (``v.numpy()`` of a torch tensor is a view,
        and training updates batch norm's running statistics in place).
        """
        if isinstance(state, (str, os.PathLike)):
            with np.load(state) as archive:
                return self.load_state_dict(dict(archive))
        state = dict(state)
        own = dict(self.named_arrays())  # shapes are read where the arrays are: nothing is copied to compare
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        if missing or unexpected:
            raise KeyError(f"state dict does not match the model: missing keys {missing}, unexpected keys {unexpected}")
        for key, value in state.items():
            shape = tuple(value.shape) if hasattr(value, "shape") else np.shape(value)
            if shape != own[key].shape:
                raise ValueError(f"state dict key {key!r}: model expects shape {own[key].shape}, got {shape}")
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                p.data = _copy_like(state[f"{prefix}.{name}" if prefix else name], p.data)
            for name, b in module._buffers.items():
                module._buffers[name] = _copy_like(state[f"{prefix}.{name}" if prefix else name], b)
        return self

    def save(self, path):
        """Write ``state_dict()`` to an ``.npz`` file, through a temporary file so a crash never leaves half of one."""
        path = os.fspath(path)
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".npz")
        try:
            with os.fdopen(handle, "wb") as f:
                np.savez(f, **self.state_dict())
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise

    # --- printing ------------------------------------------------------------------------
    def extra_repr(self):
        """The settings shown in ``print(model)`` beside the class name."""
        return ""

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            lines.append(f"  ({name}): " + repr(child).replace("\n", "\n  "))
        return "\n".join(lines) + "\n)"


def _copy_like(value, like):
    """A new array holding ``value``'s values, on ``like``'s device and in its dtype: ``value`` copied once (by
    the transfer when it lives on the other device), and cast when its dtype differs."""
    moved = to_device(value, device_of(like))
    may_share_memory = moved is value or getattr(moved, "base", None) is not None  # no transfer, or a view
    return moved.astype(like.dtype, copy=may_share_memory)


def _convert(array, device=None, dtype=None):
    if device is not None:
        array = to_device(array, device)
    if dtype is not None and array.dtype.kind == "f":
        array = array.astype(dtype, copy=False)
    return array


class Sequential(Module):
    """Modules applied one after another; children are named "0", "1", ... as in PyTorch."""

    def __init__(self, *modules):
        super().__init__()
        for i, module in enumerate(modules):
            setattr(self, str(i), module)

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x
