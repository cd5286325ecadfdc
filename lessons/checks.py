"""Ready-made checks for the lessons' exercises: is the backward you wrote right?

Two forms, for the two ways the lessons write an op:

    check_backward(forward, backward, inputs, torch_fn=None)
        Plain functions, as in lessons 1-3: ``forward(*inputs)`` returns ``(y, cache)`` and
        ``backward(grad_y, cache)`` returns the gradient of every input (one array, or a tuple).

    check_function(op, inputs, torch_fn=None)
        A ``tinyse.Function`` subclass, as from lesson 4 on: ``op()`` makes a fresh op; calling it on
        tensors runs your ``forward``, and ``backward()`` runs yours.

Each compares your gradients with central finite differences in float64 and, when PyTorch is
installed and you pass ``torch_fn`` (the same maths on torch tensors), with PyTorch's autograd; all
for one random upstream gradient dL/dy (not ones: errors could cancel). It prints one line per
reference and raises ``AssertionError`` naming the input whose gradient is wrong, so a wrong
answer cannot pass silently. It returns the errors (relative: max |yours - theirs| / max |theirs|).
"""
import numpy as np

TOLERANCE = 1e-6  # float64: a right backward is at 1e-8 or below; a wrong one at 1e-2 or above


def relative_error(yours, theirs):
    """max |yours - theirs| / max |theirs| (both as float64 NumPy arrays; 0 when both are all zero)."""
    yours, theirs = np.asarray(yours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if yours.shape != theirs.shape:
        raise AssertionError(f"a gradient of shape {yours.shape} where {theirs.shape} was expected")
    return float(np.abs(yours - theirs).max(initial=0.0) / max(np.abs(theirs).max(initial=0.0), 1e-30))


def numerical_gradients(loss, inputs, h=1e-6):
    """dL/dx of a scalar ``loss(*inputs)`` for every input, by central differences (inputs changed and restored)."""
    gradients = []
    for x in inputs:
        grad = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            original = x[i]
            x[i] = original + h
            plus = loss(*inputs)
            x[i] = original - h
            minus = loss(*inputs)
            x[i] = original
            grad[i] = (plus - minus) / (2 * h)
        gradients.append(grad)
    return gradients


def torch_gradients(torch_fn, inputs, grad_y):
    """PyTorch's dL/dx of every input for upstream ``grad_y``, or None when PyTorch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    tensors = [torch.tensor(x, requires_grad=True) for x in inputs]
    torch_fn(*tensors).backward(torch.from_numpy(grad_y))
    return [t.grad.numpy() for t in tensors]


def compare(yours, references, tolerance=TOLERANCE):
    """Print and check your gradients against each reference {name: gradients or None}; return the errors."""
    errors = {}
    for name, theirs in references.items():
        if theirs is None:
            print(f"  {name}: skipped (PyTorch is not installed)")
            continue
        per_input = [relative_error(a, b) for a, b in zip(yours, theirs, strict=True)]
        errors[name] = max(per_input)
        verdict = "right" if errors[name] < tolerance else "WRONG"
        print(f"  vs {name}: largest relative error {errors[name]:.1e}  -> {verdict}")
        for index, error in enumerate(per_input):
            if error >= tolerance:
                raise AssertionError(f"the gradient of input {index} differs from {name} by {error:.1e}")
    return errors


def check_backward(forward, backward, inputs, torch_fn=None, seed=0):
    """Check ``backward(grad_y, cache)`` against finite differences (and PyTorch); see the module docstring."""
    inputs = [np.array(x, dtype=np.float64) for x in inputs]
    y, cache = forward(*inputs)
    grad_y = np.random.default_rng(seed).standard_normal(np.shape(y))
    yours = backward(grad_y, cache)
    yours = list(yours) if isinstance(yours, (tuple, list)) else [yours]
    numeric = numerical_gradients(lambda *xs: float(np.sum(forward(*xs)[0] * grad_y)), inputs)
    return compare(yours, {"finite differences": numeric, "PyTorch": torch_gradients(torch_fn, inputs, grad_y)
                           if torch_fn else None})


def check_function(op, inputs, torch_fn=None, seed=0):
    """Check a ``tinyse.Function`` subclass's backward (``op()`` makes one) against finite differences (and PyTorch)."""
    from tinyse import Tensor, no_grad

    inputs = [np.array(x, dtype=np.float64) for x in inputs]
    tensors = [Tensor(x.copy(), requires_grad=True) for x in inputs]
    y = op()(*tensors)
    grad_y = np.random.default_rng(seed).standard_normal(y.shape)
    y.backward(grad_y)
    yours = [t.grad for t in tensors]

    def loss(*arrays):
        with no_grad():
            return float(np.sum(op()(*[Tensor(a) for a in arrays]).data * grad_y))

    numeric = numerical_gradients(loss, inputs)
    return compare(yours, {"finite differences": numeric, "PyTorch": torch_gradients(torch_fn, inputs, grad_y)
                           if torch_fn else None})
