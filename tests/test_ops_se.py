"""The three Squeeze-and-Excitation ops: se_squeeze, se_excite (sigmoid/tanh/relu gate, with or
without biases), se_scale, and the whole block built from them.

Each is checked against a composition of PyTorch ops (forward and every input
and weight gradient), against finite differences, for dtype discipline, for
the behaviour the paper relies on (gates in (0, 1), 0.5 at zero weights, the
squeeze is the channel mean, gates of 1 leave U unchanged), and clear errors.
"""

import numpy as np
import pytest
import torch.nn.functional as TF
from hypothesis import assume, example, given
from hypothesis import strategies as st

import tinyse.functional as F
from tinyse import Tensor, gradcheck
from tinyse.testing.twins import GATES

from conftest import DEVICES, DTYPES, GRADCHECK_TOLERANCE, TORCH_TOLERANCE, assert_matches_torch, rel_error

seeds = st.integers(0, 2**32 - 1)
batch, channels, spatial = st.integers(1, 4), st.integers(1, 8), st.integers(1, 9)
nchw = st.tuples(batch, channels, spatial, spatial)


def random(shape, seed, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --- squeeze --------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=nchw, seed=seeds)
@example(shape=(1, 3, 4, 4), seed=0)  # batch of 1
def test_se_squeeze_matches_torch(dtype, device, shape, seed):
    """se_squeeze matches torch's mean over (H, W), and each z[n, c] equals NumPy's mean of channel c of sample n."""
    u = random(shape, seed, dtype)
    z, _ = assert_matches_torch(F.se_squeeze, lambda t: t.mean(dim=(2, 3)), [u], device, seed)
    assert z.shape == shape[:2]
    assert rel_error(z.data, u.astype(np.float64).mean(axis=(2, 3))) < TORCH_TOLERANCE[dtype]


@given(shape=nchw, seed=seeds)
def test_se_squeeze_gradcheck(shape, seed):
    """se_squeeze's backward (dL/dz spread evenly over H*W) matches finite differences."""
    assume(np.prod(shape) <= 400)
    assert gradcheck(F.se_squeeze, random(shape, seed)) < GRADCHECK_TOLERANCE


# --- excite -----------------------------------------------------------------------------------------
def torch_excite(gate):
    """The paper's excitation from torch ops: gate(W2 relu(W1 z + b1) + b2)."""
    return lambda z, w1, b1, w2, b2: GATES[gate](TF.linear(TF.relu(TF.linear(z, w1, b1)), w2, b2))


@st.composite
def excite_cases(draw):
    """z (N, C), w1 (hidden, C), b1 (hidden,) or None, w2 (C, hidden), b2 (C,) or None, from a drawn seed.

    Weights are normal / sqrt(fan_in), as a layer is initialised, so the pre-activations are O(1).
    """
    n, c, hidden = draw(batch), draw(channels), draw(st.integers(1, 8))
    with_b1, with_b2 = draw(st.booleans()), draw(st.booleans())
    rng = np.random.default_rng(draw(seeds))
    z = rng.standard_normal((n, c))
    w1, w2 = rng.standard_normal((hidden, c)) / np.sqrt(c), rng.standard_normal((c, hidden)) / np.sqrt(hidden)
    b1 = rng.standard_normal(hidden) * 0.5 if with_b1 else None
    b2 = rng.standard_normal(c) * 0.5 if with_b2 else None
    return [z, w1, b1, w2, b2]


def pre_activations(z, w1, b1, w2, b2):
    """a1 = z W1^T + b1 and a2 = relu(a1) W2^T + b2, in NumPy: where relu's kinks are."""
    a1 = z @ w1.T + (0 if b1 is None else b1)
    return a1, np.maximum(a1, 0) @ w2.T + (0 if b2 is None else b2)


def cast(arrays, dtype):
    return [None if a is None else a.astype(dtype) for a in arrays]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gate", ["sigmoid", "tanh", "relu"])
@given(case=excite_cases(), seed=seeds)
def test_se_excite_matches_torch(gate, dtype, device, case, seed):
    """se_excite with each gate, with and without biases, matches torch's gate(linear(relu(linear))):
    the gates and the gradients of z, w1, b1, w2, b2."""
    assert_matches_torch(lambda *a: F.se_excite(*a, gate=gate), torch_excite(gate), cast(case, dtype), device, seed)


@pytest.mark.parametrize("gate", ["sigmoid", "tanh", "relu"])
@given(case=excite_cases())
def test_se_excite_gradcheck(gate, case):
    """se_excite's hand-written backward matches finite differences for every input and weight,
    with inputs drawn so that no pre-activation sits within 1e-4 of a relu kink."""
    a1, a2 = pre_activations(*case)
    assume(np.abs(a1).min() > 1e-4)
    assume(gate != "relu" or np.abs(a2).min() > 1e-4)
    # Far in a sigmoid/tanh tail the gradient is so small that finite differences cannot resolve it.
    assume(gate == "relu" or np.abs(a2).max() < 4)
    present = [a is not None for a in case]

    def excite(*given_arrays):  # gradcheck passes only the arrays that are there; the missing biases are None
        arrays = iter(given_arrays)
        return F.se_excite(*(next(arrays) if there else None for there in present), gate=gate)

    assert gradcheck(excite, *[a for a in case if a is not None]) < GRADCHECK_TOLERANCE


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=excite_cases(), scale=st.sampled_from([1.0, 5.0]))
def test_sigmoid_gates_lie_strictly_between_0_and_1(dtype, case, scale):
    """Sigmoid gates are strictly inside (0, 1), and equal 1/(1+e^-a2) computed with NumPy, for pre-activations
    the dtype can tell from 0 and 1: |a2| < 15 (beyond about 17 in float32, 37 in float64, 1 - sigmoid
    rounds to 0, in any library)."""
    z, w1, b1, w2, b2 = cast(case, dtype)
    z = z * dtype(scale)
    _, a2 = pre_activations(*[None if a is None else a.astype(np.float64) for a in (z, w1, b1, w2, b2)])
    assume(np.abs(a2).max() < 15)
    s = F.se_excite(Tensor(z), w1, b1, w2, b2).data
    assert s.dtype == dtype and np.all((s > 0) & (s < 1))
    assert rel_error(s, 1 / (1 + np.exp(-a2))) < TORCH_TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zero_b2", [np.zeros, None], ids=["b2 zero", "no b2"])
@given(case=excite_cases())
def test_sigmoid_gates_are_one_half_with_zero_w2_and_b2(dtype, zero_b2, case):
    """With W2 = 0 and b2 = 0 (or no b2) every sigmoid gate is exactly 0.5: sigmoid(0) = 1/2,
    the neutral start that leaves the block half-scaling every channel."""
    z, w1, b1, w2, _ = cast(case, dtype)
    b2 = None if zero_b2 is None else np.zeros(z.shape[1], dtype)
    s = F.se_excite(z, w1, b1, np.zeros_like(w2), b2).data
    assert s.dtype == dtype and np.all(s == 0.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gate", ["sigmoid", "tanh", "relu"])
def test_se_excite_batch_of_one(gate, device):
    """A single sample (N = 1) gives one row of gates equal to torch's."""
    rng = np.random.default_rng(11)
    arrays = [rng.standard_normal(s) for s in [(1, 8), (2, 8), (2,), (8, 2), (8,)]]
    s, _ = assert_matches_torch(lambda *a: F.se_excite(*a, gate=gate), torch_excite(gate), arrays, device)
    assert s.shape == (1, 8)


def test_se_excite_mismatched_weights():
    """w1 and w2 that do not fit z (N, C) and each other are an error naming all three shapes; so are bad biases."""
    z, w1 = Tensor(np.ones((2, 8))), Tensor(np.ones((2, 8)))
    with pytest.raises(
        ValueError, match=r"for z \(2, 8\) expected w1 \(hidden, 8\) and w2 \(8, hidden\), got w1 \(2, 8\), w2 \(8, 3\)"
    ):
        F.se_excite(z, w1, None, Tensor(np.ones((8, 3))), None)
    with pytest.raises(ValueError, match=r"got w1 \(2, 7\), w2 \(8, 2\)"):
        F.se_excite(z, Tensor(np.ones((2, 7))), None, Tensor(np.ones((8, 2))), None)
    with pytest.raises(ValueError, match=r"b1 must have shape \(2,\), got \(8,\)"):
        F.se_excite(z, w1, Tensor(np.ones(8)), Tensor(np.ones((8, 2))), None)
    with pytest.raises(ValueError, match=r"z of shape \(N, C\), got \(2, 8, 1, 1\)"):
        F.se_excite(Tensor(np.ones((2, 8, 1, 1))), w1, None, Tensor(np.ones((8, 2))), None)


def test_se_excite_unknown_gate():
    """An unknown gate name is an error listing the choices."""
    with pytest.raises(ValueError, match=r"unknown SE gate 'softmax'.*sigmoid"):
        F.se_excite(np.ones((1, 2)), np.ones((1, 2)), None, np.ones((2, 1)), None, gate="softmax")


# --- scale ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=nchw, seed=seeds)
@example(shape=(1, 3, 2, 2), seed=0)  # batch of 1
def test_se_scale_matches_torch(dtype, device, shape, seed):
    """se_scale matches torch's u * s[:, :, None, None] in value and in the gradients of U and s."""
    rng = np.random.default_rng(seed)
    u, s = rng.standard_normal(shape).astype(dtype), rng.uniform(0, 1, shape[:2]).astype(dtype)
    assert_matches_torch(F.se_scale, lambda u, s: u * s[:, :, None, None], [u, s], device, seed)


@given(shape=nchw, seed=seeds)
def test_se_scale_gradcheck(shape, seed):
    """se_scale's backward (dL/ds sums over H, W) matches finite differences."""
    assume(np.prod(shape) <= 300)
    rng = np.random.default_rng(seed)
    assert gradcheck(F.se_scale, rng.standard_normal(shape), rng.standard_normal(shape[:2])) < GRADCHECK_TOLERANCE


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=nchw, seed=seeds)
def test_se_scale_with_gates_of_one_returns_u(dtype, shape, seed):
    """Gates of 1 leave the feature map exactly as it was (same values, same dtype)."""
    u = random(shape, seed, dtype)
    out = F.se_scale(Tensor(u), Tensor(np.ones(shape[:2], dtype))).data
    assert out.dtype == dtype and np.array_equal(out, u)


@pytest.mark.parametrize("s_shape", [(2, 4), (3,), (2, 3, 1, 1), (3, 2)])
def test_se_scale_gates_of_wrong_shape(s_shape):
    """Gates that are not (N, C) for U (N, C, H, W) are an error naming both shapes."""
    u = Tensor(np.ones((2, 3, 4, 4)))
    with pytest.raises(
        ValueError,
        match=r"u \(N, C, H, W\) and s \(N, C\), got u \(2, 3, 4, 4\), s "
        + str(s_shape).replace("(", r"\(").replace(")", r"\)"),
    ):
        F.se_scale(u, Tensor(np.ones(s_shape)))


# --- the whole block: U is used twice, by the squeeze and by the scale ------------------------------------
@st.composite
def block_cases(draw):
    """U (N, C, H, W) and the excitation's w1, b1, w2, b2 (weights scaled by 1/sqrt(fan_in))."""
    n, c, h, w, hidden = draw(batch), draw(channels), draw(spatial), draw(spatial), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(seeds))
    u, b1, b2 = rng.standard_normal((n, c, h, w)), rng.standard_normal(hidden) * 0.5, rng.standard_normal(c) * 0.5
    w1, w2 = rng.standard_normal((hidden, c)) / np.sqrt(c), rng.standard_normal((c, hidden)) / np.sqrt(hidden)
    return [u, w1, b1, w2, b2]


def tinyse_block(u, w1, b1, w2, b2):
    return F.se_scale(u, F.se_excite(F.se_squeeze(u), w1, b1, w2, b2))


def torch_block(u, w1, b1, w2, b2):
    return u * torch_excite("sigmoid")(u.mean(dim=(2, 3)), w1, b1, w2, b2)[:, :, None, None]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@given(case=block_cases(), seed=seeds)
def test_se_block_matches_torch(dtype, device, case, seed):
    """squeeze -> excite -> scale matches torch; U reaches the output by two paths (through the gates and
    directly), and its gradient is the sum of both."""
    assert_matches_torch(tinyse_block, torch_block, cast(case, dtype), device, seed)


@given(case=block_cases())
def test_se_block_gradcheck(case):
    """The composed block's gradients of U, W1, b1, W2, b2 match finite differences."""
    assume(case[0].size <= 150)
    a1, a2 = pre_activations(case[0].mean(axis=(2, 3)), *case[1:])
    assume(np.abs(a1).min() > 1e-4 and np.abs(a2).max() < 4)  # off the relu kink, out of the sigmoid's tails
    assert gradcheck(tinyse_block, *case) < GRADCHECK_TOLERANCE


@pytest.mark.parametrize("dtype", DTYPES)
def test_se_ops_keep_float32(dtype):
    """float32 U and weights, with a Python number in the graph, give float32 squeeze, gates, output and
    gradients (and float64 stays float64), for every gate."""
    shapes = [(2, 4, 3, 3), (2, 4), (2,), (4, 2), (4,)]
    for gate in ["sigmoid", "tanh", "relu"]:
        u, w1, b1, w2, b2 = [Tensor(random(shape, i, dtype), requires_grad=True) for i, shape in enumerate(shapes)]
        z = F.se_squeeze(u)
        s = F.se_excite(z * 1.5, w1, b1, w2, b2, gate=gate)
        out = F.se_scale(u, s) * 2.0 + 1
        out.sum().backward()
        assert z.dtype == s.dtype == out.dtype == dtype
        assert all(t.grad.dtype == dtype for t in (u, w1, b1, w2, b2))
