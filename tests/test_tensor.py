"""The autograd core: Tensor, backward, accumulation, no_grad, devices, dtypes."""
import numpy as np
import pytest
import torch

import tinyse
import tinyse.functional as F
from tinyse import Tensor, no_grad
from tinyse.tensor import Function

from conftest import DEVICES, rel_error, requires_gpu


def pair(rng, shape, dtype=np.float64):
    """The same random values as a tinyse leaf and a torch leaf."""
    data = rng.standard_normal(shape).astype(dtype)
    return Tensor(data.copy(), requires_grad=True), torch.tensor(data, requires_grad=True)


def test_backward_from_scalar_matches_torch():
    """Every operator of Tensor (with numbers and arrays on either side) differentiates as in torch."""
    rng = np.random.default_rng(0)
    (a, ta), (b, tb) = pair(rng, (3, 4)), pair(rng, (4,))
    const = rng.standard_normal((3, 4))

    def expression(a, b, c):
        return ((2 - a * b + 1.5) / (b * b + 1) - (-a) ** 3 + c * a + a @ b.reshape(4, 1) / 3).mean()

    expression(a, b, const).backward()
    expression(ta, tb, torch.tensor(const)).backward()
    assert rel_error(a.grad, ta.grad) < 1e-12
    assert rel_error(b.grad, tb.grad) < 1e-12


def test_reflected_operators_with_arrays():
    """ndarray on the left of + - * / @ calls the Tensor's reflected operator."""
    x = Tensor(np.array([[1.0, 2.0], [3.0, 4.0]]), requires_grad=True)
    left = np.array([[2.0, 0.5], [1.0, -1.0]])
    y = left + x
    assert isinstance(y, Tensor)
    ((left - x) * (left / x) + (left @ x)).sum().backward()
    x64 = torch.tensor(x.data, requires_grad=True)
    tl = torch.tensor(left)
    ((tl - x64) * (tl / x64) + (tl @ x64)).sum().backward()
    assert rel_error(x.grad, x64.grad) < 1e-12


def test_backward_with_explicit_upstream_gradient():
    rng = np.random.default_rng(1)
    x, tx = pair(rng, (2, 3))
    upstream = rng.standard_normal((2, 3))
    F.tanh(x * 3).backward(upstream)
    torch.tanh(tx * 3).backward(torch.tensor(upstream))
    assert rel_error(x.grad, tx.grad) < 1e-12


def test_backward_needs_a_gradient_for_non_scalars():
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"single value, got shape \(2, 2\)"):
        (x * 2).backward()
    with pytest.raises(ValueError, match=r"gradient of shape \(3,\) for a tensor of shape \(2, 2\)"):
        (x * 2).backward(np.ones(3))
    with pytest.raises(RuntimeError, match="does not require gradients"):
        Tensor(np.ones(1)).backward()


def test_gradients_accumulate_until_cleared():
    """Two backward passes add their gradients into .grad, as in PyTorch; clearing resets."""
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x).sum().backward()
    (x * x).sum().backward()
    assert np.array_equal(x.grad, 2 * (2 * x.data))
    x.zero_grad()
    (x * 3).sum().backward()
    assert np.array_equal(x.grad, [3.0, 3.0])


def test_tensor_used_twice_like_a_residual_connection():
    """y = relu(x W) + x: x reaches y by two paths and its gradient is the sum of both."""
    rng = np.random.default_rng(2)
    (x, tx), (w, tw) = pair(rng, (4, 5)), pair(rng, (5, 5))
    upstream = rng.standard_normal((4, 5))
    (F.relu(x @ w) + x).backward(upstream)
    (torch.relu(tx @ tw) + tx).backward(torch.tensor(upstream))
    assert rel_error(x.grad, tx.grad) < 1e-12
    assert rel_error(w.grad, tw.grad) < 1e-12


def test_the_same_leaf_as_both_operands():
    x = Tensor(np.array([3.0]), requires_grad=True)
    F.add(x, x).backward(np.array([1.0]))
    assert x.grad[0] == 2.0


def test_deep_chain_has_no_recursion_limit():
    """A 5000-op chain and a 200-block residual stack backpropagate (the sort is iterative)."""
    x = Tensor(np.array([1.0]), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    y.sum().backward()
    assert np.isclose(x.grad[0], 1.0001**5000, rtol=1e-10)

    x = Tensor(np.array([0.5]), requires_grad=True)
    h = x
    for _ in range(200):
        h = h + F.tanh(h) * 0.01  # a residual block: h used twice
    h.sum().backward()
    tx = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    th = tx
    for _ in range(200):
        th = th + torch.tanh(th) * 0.01
    th.sum().backward()
    assert rel_error(x.grad, tx.grad) < 1e-12


def test_graph_is_freed_after_backward():
    x = Tensor(np.ones(3), requires_grad=True)
    hidden = x * 2
    y = (hidden + 1).sum()
    op = hidden.creator
    y.backward()
    assert y.creator is None and hidden.creator is None and op.inputs is None


def test_no_grad_builds_no_graph():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        assert not tinyse.is_grad_enabled()
        y = F.relu(x * 2)
    assert tinyse.is_grad_enabled()
    assert not y.requires_grad and y.creator is None
    with pytest.raises(ZeroDivisionError), no_grad():
        raise ZeroDivisionError
    assert tinyse.is_grad_enabled(), "no_grad must restore the flag after an exception"


def test_detach_cuts_the_graph_and_shares_data():
    x = Tensor(np.ones(3), requires_grad=True)
    y = x * 2
    d = y.detach()
    assert d.data is y.data and not d.requires_grad and d.creator is None
    (d * x).sum().backward()
    assert np.array_equal(x.grad, y.data)  # d is a constant: only the direct path counts


def test_constructor_dtypes():
    assert Tensor([1, 2]).dtype == np.float32
    assert Tensor(3.0).dtype == np.float32
    assert Tensor(np.zeros(2)).dtype == np.float64
    assert Tensor(np.zeros(2, np.float32)).dtype == np.float32
    assert Tensor(np.arange(3)).dtype.kind == "i"  # labels stay integers
    assert Tensor(np.zeros(2), dtype=np.float32).dtype == np.float32
    with pytest.raises(TypeError, match="int64"):
        Tensor(np.arange(3), requires_grad=True)


def test_data_is_a_plain_assignable_attribute():
    x = Tensor(np.ones(2), requires_grad=True)
    (x * 3).sum().backward()
    x.data -= 0.1 * x.grad
    assert np.allclose(x.data, 0.7)
    x.data = np.zeros(2)
    assert np.array_equal((x + 1).data, [1.0, 1.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_of_every_gradient_in_a_small_network(dtype):
    """The demo SE network (conv, batch norm, ReLU, SE ops, pooling, linear, loss) keeps its dtype end to end."""
    from tinyse.demo import forward, make_parameters

    rng = np.random.default_rng(0)
    params = {k: Tensor(v.astype(dtype), requires_grad=True) for k, v in make_parameters(rng).items()}
    images = Tensor(rng.standard_normal((4, 3, 8, 8)).astype(dtype), requires_grad=True)
    loss = F.cross_entropy(forward(params, images) * 2 + 1, np.array([0, 1, 2, 3]))
    assert loss.dtype == dtype
    loss.backward()
    for name, p in [*params.items(), ("images", images)]:
        assert p.grad.dtype == dtype, f"{name}: gradient is {p.grad.dtype}"
        assert p.grad.shape == p.shape


def test_a_wrong_backward_is_reported_with_shapes():
    class Broken(Function):
        def forward(self, x):
            return x * 2

        def backward(self, grad_out):
            return grad_out.sum(axis=0)

    x = Tensor(np.ones((2, 3)), requires_grad=True)
    message = r"Broken\.backward gave a gradient of shape \(3,\) for an input of shape \(2, 3\)"
    with pytest.raises(RuntimeError, match=message):
        Broken()(x).sum().backward()


def test_numpy_and_to_cpu():
    x = Tensor(np.arange(3.0))
    assert x.to("cpu") is x
    assert isinstance(x.numpy(), np.ndarray) and x.device == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        x.to("tpu")


@pytest.mark.skipif(tinyse.gpu_available(), reason="checks the error raised where there is no GPU")
def test_to_gpu_without_gpu_says_what_to_install():
    with pytest.raises(RuntimeError, match="cupy"):
        Tensor(np.ones(2)).to("gpu")


@requires_gpu
@pytest.mark.gpu
def test_gpu_round_trip_and_mixed_devices():
    x = Tensor(np.arange(4.0), requires_grad=True)
    g = x.to("gpu")
    assert g.device == "gpu" and g.requires_grad
    (g * g).sum().backward()
    assert np.array_equal(tinyse.backend.to_device(g.grad, "cpu"), 2 * np.arange(4.0))
    assert np.array_equal(g.numpy(), x.data)
    with pytest.raises(RuntimeError, match="different devices"):
        g + x


@pytest.mark.parametrize("device", DEVICES)
def test_methods_sum_mean_reshape_on_each_device(device):
    rng = np.random.default_rng(3)
    data = rng.standard_normal((2, 3, 4))
    x = Tensor(data.copy(), requires_grad=True).to(device)
    tx = torch.tensor(data, requires_grad=True)
    (x.sum(axis=1).mean() + x.reshape(6, 4).mean(axis=0).sum() * x.flatten().sum()).backward()
    (tx.sum(dim=1).mean() + tx.reshape(6, 4).mean(dim=0).sum() * tx.flatten(1).sum()).backward()
    assert rel_error(x.grad, tx.grad) < 1e-12


def test_python_numbers_meet_tensors_and_each_other():
    """Two numbers give a float32 tensor; a float number never truncates on an integer tensor."""
    assert F.add(1, 2).dtype == np.float32 and F.add(1, 2).item() == 3
    labels = Tensor(np.array([1, 2]))
    assert np.array_equal((labels + 0.5).data, [1.5, 2.5])
    assert ((labels * 2).data == np.array([2, 4])).all()


def test_axis_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match="axis 0 is out of range for a tensor with 0 dimensions"):
        F.sum(Tensor(np.array(1.0)), axis=0)
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        Tensor(np.ones((2, 2))).mean(axis=3)


# --- a tensor's gradients summed in place (tensor.add_gradient, Function.fresh_input_grads) -----------------
class SameArrayTwice(Function):
    """y = a + b, whose backward hands grad_out itself to both inputs: one array held by two gradients."""

    def forward(self, a, b):
        return a + b

    def backward(self, grad_out):
        return grad_out, grad_out


class Double(Function):
    """y = 2 a, with a new array for its gradient."""

    fresh_input_grads = True

    def forward(self, a):
        return 2 * a

    def backward(self, grad_out):
        return 2 * grad_out


@pytest.mark.parametrize("fresh_first", [True, False], ids=["fresh-first", "shared-first"])
def test_in_place_sum_never_writes_into_an_array_another_gradient_holds(fresh_first):
    """t = 2u gets one array that u's gradient also holds (SameArrayTwice) and a fresh one (Double), in either
    order. The sum must go into the fresh one: were it added into the shared array, u's gradient, which is
    summed after t's, would count Double's share once more. The caller's upstream stays untouched too."""
    rng = np.random.default_rng(3)
    x = Tensor(rng.standard_normal(4), requires_grad=True)
    u = Double()(x)
    t = Double()(u)
    shared, fresh = SameArrayTwice()(t, u), Double()(t)
    w_shared, w_fresh = rng.standard_normal(4), rng.standard_normal(4)
    terms = [F.mul(fresh, w_fresh), F.mul(shared, w_shared)]
    total = (terms[0] + terms[1]) if fresh_first else (terms[1] + terms[0])
    upstream = rng.standard_normal(4)
    kept = upstream.copy()
    total.backward(upstream)
    assert np.array_equal(upstream, kept)
    # dL/dt = U w_shared + 2 U w_fresh;  dL/du = U w_shared + 2 dL/dt;  dL/dx = 2 dL/du
    assert np.allclose(x.grad, 2 * upstream * (3 * w_shared + 4 * w_fresh))


def test_add_gradient_adds_in_place_only_into_arrays_nothing_else_holds():
    """The three cases of add_gradient: into the fresh newcomer, into the engine's own sum, else a new sum."""
    from tinyse.tensor import add_gradient

    shared, other, fresh, more = (np.full(3, value) for value in (1.0, 2.0, 4.0, 8.0))
    grads, owned = {}, set()
    add_gradient(grads, owned, "t", shared, False)
    add_gradient(grads, owned, "t", other, False)  # neither is ours: a new array, ours from now on
    assert grads["t"] is not shared and grads["t"] is not other and "t" in owned
    total = grads["t"]
    add_gradient(grads, owned, "t", more, False)  # into our own sum
    assert grads["t"] is total and np.array_equal(total, [11.0] * 3)
    grads, owned = {"u": shared}, set()
    add_gradient(grads, owned, "u", fresh, True)  # into the fresh newcomer
    assert grads["u"] is fresh and np.array_equal(fresh, [5.0] * 3)
    assert np.array_equal(shared, [1.0] * 3) and np.array_equal(other, [2.0] * 3) and np.array_equal(more, [8.0] * 3)


def fresh_grad_cases():
    """(name, op, input arrays) for each op that sets fresh_input_grads, in every mode whose backward differs."""
    from tinyse.ops import activation, conv, fused, linalg, norm, se

    rng = np.random.default_rng(5)
    x, u = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((2, 3, 4, 4))
    weight, gates, channel = rng.standard_normal((4, 3, 3, 3)), rng.random((2, 3)), rng.random(3) + 0.5

    def statistics():
        return np.zeros(3), np.ones(3)

    return [
        ("conv stride 1", conv.Conv2d(1, 1), [x, weight, rng.standard_normal(4)]),
        ("conv stride 2", conv.Conv2d(2, 1), [x, weight, None]),
        ("batch_norm", norm.BatchNorm(*statistics()), [x, channel, channel]),
        ("batch_norm eval", norm.BatchNorm(*statistics(), training=False), [x, channel, channel]),
        ("batch_norm_relu", fused.BatchNormReLU(*statistics()), [x, channel, channel]),
        ("batch_norm_relu eval", fused.BatchNormReLU(*statistics(), training=False), [x, channel, channel]),
        ("se_scale", se.SEScale(), [u, gates]),
        *((f"se_excite {gate}", se.SEExcite(gate), [gates, rng.standard_normal((2, 3)), rng.standard_normal(2),
                                                    rng.standard_normal((3, 2)), None]) for gate in se.GATES),
        ("linear", linalg.Linear(), [gates, rng.standard_normal((4, 3)), rng.standard_normal(4)]),
        ("relu", activation.ReLU(), [u]),
        ("sigmoid", activation.Sigmoid(), [u]),
        ("tanh", activation.Tanh(), [u]),
    ]


def op_classes(cls=Function):
    for sub in cls.__subclasses__():
        yield sub
        yield from op_classes(sub)


def test_every_op_with_fresh_input_grads_is_checked():
    """An op that sets fresh_input_grads must have a case in fresh_grad_cases (checked by the next test)."""
    checked = {type(op) for _, op, _ in fresh_grad_cases()}
    claiming = {cls for cls in op_classes() if cls.fresh_input_grads and cls.__module__.startswith("tinyse.")}
    assert claiming <= checked, f"add a case for {claiming - checked}"


@pytest.mark.parametrize("name", [name for name, _, _ in fresh_grad_cases()])
def test_fresh_input_grads_share_memory_with_nothing(name):
    """What the engine relies on to add into an op's gradients in place: each is writeable and shares no memory
    with grad_out, the inputs, what the op still holds, or the op's other gradients."""
    _, op, arrays = next(case for case in fresh_grad_cases() if case[0] == name)
    inputs = [None if a is None else Tensor(a, requires_grad=True) for a in arrays]
    out = op(*inputs)
    grad_out = np.random.default_rng(6).standard_normal(out.shape)
    grads = op.backward(grad_out)
    grads = [g for g in (grads if isinstance(grads, tuple) else (grads,)) if g is not None]
    held = [grad_out, *(a for a in arrays if a is not None)]
    held += [value for value in vars(op).values() if isinstance(value, np.ndarray)]
    for i, g in enumerate(grads):
        assert g.flags.writeable
        assert not any(np.shares_memory(g, other) for other in held + grads[:i] + grads[i + 1 :])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("as_tensor", [False, True], ids=["array", "Tensor"])
def test_an_upstream_gradient_of_another_dtype_is_cast_to_the_tensors(device, as_tensor):
    """A float64 upstream gradient into a float32 graph: cast once at the top, whether it comes as an array or
    as a Tensor. Uncast, the float64 reaches the ReLU's CuPy kernel, which takes one dtype and raises."""
    x = Tensor(np.array([[-1.0, 2.0], [3.0, -4.0]], np.float32), requires_grad=True).to(device)
    y = F.relu(x * 2.0)
    upstream = tinyse.backend.to_device(np.full((2, 2), 0.5), device)  # float64
    y.backward(Tensor(upstream) if as_tensor else upstream)
    assert x.grad.dtype == np.float32
    assert np.array_equal(tinyse.backend.to_device(x.grad, "cpu"), np.array([[0.0, 1.0], [1.0, 0.0]], np.float32))
