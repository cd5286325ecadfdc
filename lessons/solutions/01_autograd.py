"""Worked solutions to the exercises of lesson 1 (01_autograd.ipynb): autograd from scratch.

Run from anywhere: ``python lessons/solutions/01_autograd.py``. Each ``exercise_<k>`` works one
exercise and asserts its result. The file starts with the lesson's engine, condensed (``Value``,
the iterative sort, ``unbroadcast``, ``Tensor``), so that it runs on its own; the solutions add to
it as the exercises ask (in the notebook, you would write the new methods inside the class).
"""
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # lessons/, for checks.py
from checks import check_backward


# --- the lesson's engine, condensed ---------------------------------------------------------------
class Value:
    """A scalar that remembers how it was computed (section 1 of the lesson)."""

    def __init__(self, data, parents=(), op=""):
        self.data, self.grad, self.parents, self.op = float(data), 0.0, parents, op
        self.backward_step = lambda: None

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def backward_step():
            self.grad += out.grad
            other.grad += out.grad

        out.backward_step = backward_step
        return out

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def backward_step():
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out.backward_step = backward_step
        return out

    __radd__ = __add__
    __rmul__ = __mul__

    def tanh(self):
        t = math.tanh(self.data)
        out = Value(t, (self,), "tanh")

        def backward_step():
            self.grad += (1 - t * t) * out.grad

        out.backward_step = backward_step
        return out


def topological_order_recursive(root):
    order, visited = [], set()

    def visit(node):
        if id(node) not in visited:
            visited.add(id(node))
            for parent in node.parents:
                visit(parent)
            order.append(node)

    visit(root)
    return order


def topological_order(root):
    """Every node after all of its parents, with an explicit stack (works for Value and Tensor)."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        node, parents_done = stack.pop()
        if parents_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        stack.extend((parent, False) for parent in node.parents if id(parent) not in visited)
    return order


def backward_values(root):
    root.grad = 1.0
    for node in reversed(topological_order(root)):
        node.backward_step()


def unbroadcast(grad, shape):
    """Sum grad over the axes that broadcasting added (in front) or stretched (size 1), giving shape."""
    grad = grad.sum(axis=tuple(range(grad.ndim - len(shape))))
    stretched = tuple(axis for axis, size in enumerate(shape) if size == 1 and grad.shape[axis] != 1)
    return grad.sum(axis=stretched, keepdims=True)


def as_tensor(x):
    return x if isinstance(x, Tensor) else Tensor(x)


class Tensor:
    """The lesson's array engine (without no_grad, which no exercise here needs)."""

    __array_ufunc__ = None

    def __init__(self, data, parents=(), backward_fn=None):
        self.data = np.asarray(data, dtype=np.float64)
        self.grad, self.parents, self.backward_fn = None, parents, backward_fn

    shape = property(lambda self: self.data.shape)

    def __add__(self, other):
        other = as_tensor(other)
        return Tensor(self.data + other.data, (self, other),
                      lambda g: (unbroadcast(g, self.shape), unbroadcast(g, other.shape)))

    def __mul__(self, other):
        other = as_tensor(other)
        return Tensor(self.data * other.data, (self, other),
                      lambda g: (unbroadcast(g * other.data, self.shape), unbroadcast(g * self.data, other.shape)))

    __radd__ = __add__
    __rmul__ = __mul__

    def __matmul__(self, other):
        other = as_tensor(other)
        return Tensor(self.data @ other.data, (self, other), lambda g: (g @ other.data.T, self.data.T @ g))

    def tanh(self):
        y = np.tanh(self.data)
        return Tensor(y, (self,), lambda g: (g * (1 - y * y),))

    def sum(self):
        return Tensor(self.data.sum(), (self,), lambda g: (np.broadcast_to(g, self.shape).copy(),))

    def backward(self):
        if self.data.size != 1:
            raise RuntimeError(f"backward() starts from a scalar loss, got shape {self.shape}")
        grads = {id(self): np.ones_like(self.data)}
        for node in reversed(topological_order(self)):
            grad_out = grads.pop(id(node))
            if not node.parents:
                node.grad = grad_out.copy() if node.grad is None else node.grad + grad_out
                continue
            for parent, grad in zip(node.parents, node.backward_fn(grad_out)):
                grads[id(parent)] = grads[id(parent)] + grad if id(parent) in grads else grad


def numerical_gradient(f, array, h=1e-6):
    """Central differences of the scalar f() for every element of array (changed in place, then restored)."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        original = array[index]
        array[index] = original + h
        plus = f()
        array[index] = original - h
        minus = f()
        array[index] = original
        grad[index] = (plus - minus) / (2 * h)
    return grad


def rel_error(a, b):
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-12))


def check_tensor_op(f, arrays, tolerance=1e-7):
    """Our Tensor's gradients of the scalar f(*tensors) against central differences; returns the worst error."""
    tensors = [Tensor(a) for a in arrays]
    f(*tensors).backward()
    worst = 0.0
    for tensor, array in zip(tensors, arrays):
        numeric = numerical_gradient(lambda: float(f(*(Tensor(a) for a in arrays)).data), array)
        worst = max(worst, rel_error(tensor.grad, numeric))
    assert worst < tolerance, f"gradient differs from central differences by {worst:.1e}"
    return worst


# --- the exercises ----------------------------------------------------------------------------------
def divide_forward(a, b):
    """y = a / b with broadcasting: a (4, 3), b (3,) -> y (4, 3); the cache keeps a and b."""
    return a / b, (a, b)


def divide_backward(grad_y, cache):
    """grad_y = dL/dy (4, 3) -> (dL/da shaped like a, dL/db shaped like b)."""
    a, b = cache
    grad_a = unbroadcast(grad_y / b, a.shape)  # dy/da = 1/b
    grad_b = unbroadcast(-grad_y * a / b**2, b.shape)  # dy/db = -a/b^2, summed over the rows b was copied into
    return grad_a, grad_b


def tensor_truediv(self, other):
    """Tensor division, with the backward written above."""
    other = as_tensor(other)
    y, cache = divide_forward(self.data, other.data)
    return Tensor(y, (self, other), lambda g: divide_backward(g, cache))


Tensor.__truediv__ = tensor_truediv


def exercise_1():
    """Write this backward: division y = a / b with a (4, 3) and b (3,) broadcast, then Tensor.__truediv__."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 3))
    b = rng.uniform(0.5, 2.0, 3) * rng.choice([-1.0, 1.0], 3)
    errors = check_backward(divide_forward, divide_backward, [a, b], torch_fn=lambda a, b: a / b)
    assert errors["finite differences"] < 1e-7
    worst = check_tensor_op(lambda a, b: (a / b * a).sum(), [a, b])  # a used twice: accumulation too
    print(f"Tensor division (a / b * a).sum() vs central differences: {worst:.1e}")


def exercise_2():
    """A node used twice: L = tanh(a b + a) at a = 0.5, b = -1.5; dL/da = (1 - L^2)(b + 1)."""
    a, b = Value(0.5), Value(-1.5)
    product = a * b
    total = product + a
    loss = total.tanh()
    backward_values(loss)
    local = 1 - loss.data**2  # the grad of the sum, and of the product (d(p + a)/dp = 1)
    print(f"L = {loss.data:.6f}; grads: sum {total.grad:.6f}, product {product.grad:.6f}, "
          f"a {a.grad:.6f} = (1 - L^2)(b + 1) = {local * (b.data + 1):.6f}, b {b.grad:.6f} = (1 - L^2) a")
    assert math.isclose(total.grad, local) and math.isclose(product.grad, local)
    assert math.isclose(a.grad, local * (b.data + 1)) and math.isclose(b.grad, local * a.data)
    uses_of_a = sum(parent is a for node in topological_order(loss) for parent in node.parents)
    assert uses_of_a == 2  # two arrows leave a in the picture: to the product and to the sum
    # In the notebook: draw_graph(loss, {id(a): "a", id(b): "b", id(loss): "L"}, ax) draws it.


def tensor_exp(self):
    y = np.exp(self.data)
    return Tensor(y, (self,), lambda g: (g * y,))  # exp' = exp: the output itself


def tensor_log(self):
    return Tensor(np.log(self.data), (self,), lambda g: (g / self.data,))


def tensor_relu(self):
    mask = self.data > 0
    return Tensor(np.where(mask, self.data, 0.0), (self,), lambda g: (g * mask,))  # 0 at the kink, as PyTorch


Tensor.exp, Tensor.log, Tensor.relu = tensor_exp, tensor_log, tensor_relu


def exercise_3():
    """Add exp, log and relu to Tensor and check each; why relu's check must stay away from 0."""
    rng = np.random.default_rng(3)
    weights = rng.standard_normal((4, 3))  # a random weighting, so that errors cannot cancel in a plain sum
    x = rng.standard_normal((4, 3))
    x = np.where(np.abs(x) < 0.01, 0.01, x)  # keep relu's check off the kink
    for name, f, array in (
        ("exp", lambda t: (t.exp() * weights).sum(), x),
        ("log", lambda t: (t.log() * weights).sum(), np.abs(x) + 0.5),  # log needs positive inputs
        ("relu", lambda t: (t.relu() * weights).sum(), x),
    ):
        print(f"{name}: vs central differences {check_tensor_op(f, [array]):.1e}")
    at_zero = np.zeros(1)
    numeric = numerical_gradient(lambda: float(Tensor(at_zero).relu().sum().data), at_zero)
    analytic = Tensor(np.zeros(1))
    analytic.relu().sum().backward()
    print(f"relu at 0: central difference {numeric[0]}, backward {analytic.grad[0]} (a kink: no derivative)")
    assert numeric[0] == 0.5 and analytic.grad[0] == 0.0


def tensor_sum(self, axis=None):
    """Sum over all elements (axis=None) or over one axis (keepdims=False)."""
    def backward_fn(grad_out):
        if axis is not None:
            grad_out = np.expand_dims(grad_out, axis)  # put the summed axis back, as size 1, where it was
        return (np.broadcast_to(grad_out, self.shape).copy(),)

    return Tensor(self.data.sum(axis=axis), (self,), backward_fn)


Tensor.sum = tensor_sum


def exercise_4():
    """Tensor.sum(axis): the backward puts the summed axis back (size 1) before broadcasting."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3))
    for axis, size in ((0, 3), (1, 4)):
        weights = rng.standard_normal(size)
        worst = check_tensor_op(lambda t, axis=axis, weights=weights: (t.tanh().sum(axis=axis) * weights).sum(), [x])
        print(f"sum(axis={axis}) of a (4, 3) tensor: vs central differences {worst:.1e}")
    square = rng.standard_normal((3, 3))  # square: a wrong axis would broadcast silently, so check it too
    weights = rng.standard_normal(3)
    check_tensor_op(lambda t: (t.sum(axis=1) * weights).sum(), [square])


def backward_from(self, grad=None):
    """backward() from any output: grad (shaped like self) is the upstream gradient; None for a scalar loss."""
    if grad is None:
        if self.data.size != 1:
            raise RuntimeError(f"backward() without a gradient needs a single value, got shape {self.shape}")
        grad = np.ones_like(self.data)
    grads = {id(self): np.asarray(grad, dtype=np.float64)}
    for node in reversed(topological_order(self)):
        grad_out = grads.pop(id(node))
        if not node.parents:
            node.grad = grad_out.copy() if node.grad is None else node.grad + grad_out
            continue
        for parent, parent_grad in zip(node.parents, node.backward_fn(grad_out)):
            grads[id(parent)] = grads[id(parent)] + parent_grad if id(parent) in grads else parent_grad


Tensor.backward = backward_from


def exercise_5():
    """backward(grad) from a non-scalar output equals the backward of the scalar sum(y * grad)."""
    rng = np.random.default_rng(5)
    x, weight, g = rng.standard_normal((4, 3)), rng.standard_normal((3, 2)), rng.standard_normal((4, 2))
    direct = [Tensor(x), Tensor(weight)]
    (direct[0] @ direct[1]).tanh().backward(g)
    through_sum = [Tensor(x), Tensor(weight)]
    ((through_sum[0] @ through_sum[1]).tanh() * g).sum().backward()
    error = max(rel_error(a.grad, b.grad) for a, b in zip(direct, through_sum))
    print(f"y.backward(g) vs (y * g).sum().backward(): {error:.1e}  "
          "(tinyse.gradcheck builds L = sum(fn(*inputs) * w) for a fixed random w, so it needs no more)")
    assert error < 1e-15


def chain(depth):
    node = Value(0.5)
    for _ in range(depth):
        node = node * 1.0
    return node


def fails(depth):
    try:
        topological_order_recursive(chain(depth))
        return False
    except RecursionError:
        return True


def exercise_6():
    """The smallest chain depth that makes the recursive sort fail: a little below the recursion limit."""
    limit = sys.getrecursionlimit()
    low, high = 1, limit  # fails(low) is False, fails(high) is True
    assert not fails(low) and fails(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fails(middle) else (middle, high)
    print(f"recursion limit {limit}: the recursive sort fails from a chain of {high} ops "
          f"({limit - high} frames were already on the stack); the iterative sort handles "
          f"{len(topological_order(chain(10 * limit)))} nodes")
    assert limit - 300 < high <= limit  # the frames below us (a notebook's, pytest's) count too
    # setrecursionlimit(10**6) is a poor fix: each Python call also uses C stack, a few MB in all; a deep enough
    # recursion then crashes the interpreter (a segmentation fault) instead of raising RecursionError.


class FlaggedTensor:
    """The lesson's Tensor with a requires_grad flag (add, mul, tanh, sum are enough to show it).

    An op records its parents and backward only when some parent requires a gradient, and its output then
    requires one; backward gives .grad only to leaves that require it.
    """

    __array_ufunc__ = None

    def __init__(self, data, requires_grad=False, parents=(), backward_fn=None):
        self.data = np.asarray(data, dtype=np.float64)
        self.requires_grad, self.grad, self.parents, self.backward_fn = requires_grad, None, parents, backward_fn

    shape = property(lambda self: self.data.shape)

    @staticmethod
    def op_output(data, parents, backward_fn):
        if any(parent.requires_grad for parent in parents):
            return FlaggedTensor(data, True, parents, backward_fn)
        return FlaggedTensor(data)  # no parent needs a gradient: nothing to record

    def __add__(self, other):
        other = other if isinstance(other, FlaggedTensor) else FlaggedTensor(other)
        return self.op_output(self.data + other.data, (self, other),
                              lambda g: (unbroadcast(g, self.shape), unbroadcast(g, other.shape)))

    def __mul__(self, other):
        other = other if isinstance(other, FlaggedTensor) else FlaggedTensor(other)
        return self.op_output(self.data * other.data, (self, other),
                              lambda g: (unbroadcast(g * other.data, self.shape),
                                         unbroadcast(g * self.data, other.shape)))

    __radd__ = __add__
    __rmul__ = __mul__

    def tanh(self):
        y = np.tanh(self.data)
        return self.op_output(y, (self,), lambda g: (g * (1 - y * y),))

    def sum(self):
        return self.op_output(self.data.sum(), (self,), lambda g: (np.broadcast_to(g, self.shape).copy(),))

    def backward(self):
        if not self.requires_grad:
            raise RuntimeError("backward() called on a tensor that does not require gradients")
        grads = {id(self): np.ones_like(self.data)}
        for node in reversed(topological_order(self)):
            grad_out = grads.pop(id(node), None)
            if grad_out is None:  # a node that needs no gradient: nothing flows to it
                continue
            if not node.parents:
                node.grad = grad_out.copy() if node.grad is None else node.grad + grad_out
                continue
            for parent, grad in zip(node.parents, node.backward_fn(grad_out)):
                if parent.requires_grad:
                    grads[id(parent)] = grads[id(parent)] + grad if id(parent) in grads else grad


def exercise_7():
    """A requires_grad flag: constants get no .grad, and ops on tensors that need none record nothing."""
    rng = np.random.default_rng(7)
    start = FlaggedTensor(rng.standard_normal(3), requires_grad=True)
    scale = FlaggedTensor(0.001)  # a constant: requires_grad=False
    h = start
    for _ in range(10):
        h = h + scale * h.tanh()
    h.sum().backward()
    print(f"d sum(h)/d start = {np.round(start.grad, 6)}; the constant's grad: {scale.grad}")
    assert scale.grad is None and start.grad is not None

    plain = FlaggedTensor(rng.standard_normal(3)) * 2.0 + 1.0  # no input requires a gradient
    assert plain.parents == () and plain.backward_fn is None and not plain.requires_grad

    reference = Tensor(start.data)  # the same chain on the lesson's Tensor
    h = reference
    for _ in range(10):
        h = h + 0.001 * h.tanh()
    h.sum().backward()
    assert rel_error(start.grad, reference.grad) < 1e-15


if __name__ == "__main__":
    for number in range(1, 8):
        print(f"--- exercise {number}")
        globals()[f"exercise_{number}"]()
    print("all exercises of lesson 1 check out")
