"""Softmax cross-entropy, against torch.nn.functional.cross_entropy, plain and with label smoothing.

Labels as an integer NumPy array and as a tinyse Tensor holding integers;
finite differences; float32 stays float32; huge logits (1e4) stay finite;
clear errors for bad labels, logits and smoothing.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, currently_in_test_context, example, given
from hypothesis import strategies as st

import tinyse.functional as F
from tinyse import Tensor, gradcheck
from tinyse.backend import to_device

from conftest import DEVICES, DTYPES, GRADCHECK_TOLERANCE, TORCH_TOLERANCE, rel_error

seeds = st.integers(0, 2**32 - 1)


def labels_as(kind, labels, device):
    """The same integer labels as a NumPy (or, on the GPU, CuPy) array, or as a tinyse Tensor."""
    labels = to_device(labels, device)
    return Tensor(labels) if kind == "tensor" else labels


def torch_cross_entropy(logits, labels, upstream, label_smoothing=0.0):
    """torch's loss and logits gradient (as NumPy arrays) after backward from ``upstream``."""
    tensor = torch.tensor(logits, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(tensor, torch.from_numpy(labels.astype(np.int64)),
                                             label_smoothing=label_smoothing)
    loss.backward(torch.from_numpy(upstream))
    return loss.detach().numpy(), tensor.grad.numpy()


def assert_cross_entropy_matches_torch(logits, labels, label_kind="array", device="cpu", seed=0, label_smoothing=0.0):
    """tinyse's and torch's mean cross-entropy (with ``label_smoothing``), and the logits gradient scaled by a
    random upstream number (not 1), agree to TORCH_TOLERANCE; the loss and gradient keep the logits' dtype.

    A float32 example drawn by hypothesis is skipped (``assume``) when torch's own float32 result is off its
    float64 result by more than a tenth of the tolerance: very confident rows make every gradient entry
    tiny, and p - 1 at the label then loses more to float32 rounding than any float32 code can avoid.
    """
    dtype = logits.dtype
    tolerance = TORCH_TOLERANCE[dtype.type]
    upstream = np.random.default_rng([seed, 1]).standard_normal(()).astype(dtype)  # a stream of its own
    expected = torch_cross_entropy(logits, labels, upstream, label_smoothing)
    if dtype == np.float32:
        exact = torch_cross_entropy(logits.astype(np.float64), labels, upstream.astype(np.float64), label_smoothing)
        well_conditioned = all(rel_error(e, x) < tolerance / 10 for e, x in zip(expected, exact))
        if currently_in_test_context():
            assume(well_conditioned)
        else:  # a fixed example must be chosen well-conditioned
            assert well_conditioned, "this float32 example is ill-conditioned (torch float32 != float64)"
    ours = Tensor(to_device(logits, device), requires_grad=True)
    loss = F.cross_entropy(ours, labels_as(label_kind, labels, device), label_smoothing=label_smoothing)
    assert loss.shape == () and loss.dtype == dtype and loss.device == device
    assert rel_error(loss.data, expected[0]) < tolerance, "loss differs from torch"
    loss.backward(to_device(upstream, device))
    assert ours.grad.dtype == dtype
    assert rel_error(ours.grad, expected[1]) < tolerance, "logits gradient differs from torch"
    return loss, ours.grad


@st.composite
def problems(draw, scales=(1.0, 10.0)):
    """A batch of 1-4 rows of 1-8 classes: logits (normal times a scale) and integer labels, from a drawn seed."""
    n, k, seed = draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(seeds)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, k)) * draw(st.sampled_from(scales)), rng.integers(0, k, n), seed


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_kind", ["array", "tensor"])
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8])
@given(problem=problems())
def test_cross_entropy_matches_torch(label_dtype, label_kind, dtype, device, problem):
    """Loss and logits gradient match torch, with labels as an integer array (int64, int32, uint8)
    or a Tensor holding integers; float32 logits give a float32 loss and gradient."""
    logits, labels, seed = problem
    assert_cross_entropy_matches_torch(logits.astype(dtype), labels.astype(label_dtype), label_kind, device, seed)


@given(problem=problems(scales=[1.0]))  # at scale 10 the gradient can be too small for finite differences
@example(problem=(np.array([[0.5, -1.0, 2.0]]), np.array([2]), 0))  # batch of 1
def test_cross_entropy_gradcheck(problem):
    """The logits gradient (softmax minus one-hot, over N) matches finite differences; labels pass through untouched."""
    logits, labels, _ = problem
    assert gradcheck(F.cross_entropy, logits, labels) < GRADCHECK_TOLERANCE


SMOOTHINGS = [0.1, 0.5, 1.0]  # the fast recipe's 0.1, half, and all of the target spread evenly


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_smoothing", SMOOTHINGS)
@given(problem=problems())
def test_cross_entropy_with_label_smoothing_matches_torch(label_smoothing, dtype, device, problem):
    """Loss and logits gradient with label smoothing match torch's ``label_smoothing``, float64 and float32."""
    logits, labels, seed = problem
    assert_cross_entropy_matches_torch(logits.astype(dtype), labels, device=device, seed=seed,
                                       label_smoothing=label_smoothing)


@pytest.mark.parametrize("label_smoothing", SMOOTHINGS)
@given(problem=problems(scales=[1.0]))
@example(problem=(np.array([[0.5, -1.0, 2.0]]), np.array([2]), 0))
def test_cross_entropy_with_label_smoothing_gradcheck(label_smoothing, problem):
    """With smoothing the gradient, (p - q) / N for the smoothed target q, matches finite differences."""
    logits, labels, _ = problem
    error = gradcheck(lambda x, t: F.cross_entropy(x, t, label_smoothing=label_smoothing), logits, labels)
    assert error < GRADCHECK_TOLERANCE


def test_label_smoothing_is_a_mix_of_the_label_loss_and_the_uniform_loss():
    """eps = 0 is the plain loss to the bit; eps = 1 is the mean of -log p over every class; in between,
    (1 - eps) * plain + eps * uniform, computed here with Python's math."""
    logits, labels = np.array([[0.3, -1.2, 2.5, 0.0], [1.0, 0.5, -0.5, 2.0]]), np.array([1, 3])
    log_p = [[v - math.log(sum(math.exp(u) for u in row)) for v in row] for row in logits]
    plain = -sum(row[t] for row, t in zip(log_p, labels)) / 2
    uniform = -sum(sum(row) / 4 for row in log_p) / 2
    assert F.cross_entropy(logits, labels, label_smoothing=0.0).item() == F.cross_entropy(logits, labels).item()
    assert math.isclose(F.cross_entropy(logits, labels).item(), plain, rel_tol=1e-12)
    assert math.isclose(F.cross_entropy(logits, labels, label_smoothing=1.0).item(), uniform, rel_tol=1e-12)
    mixed = F.cross_entropy(logits, labels, label_smoothing=0.1).item()
    assert math.isclose(mixed, 0.9 * plain + 0.1 * uniform, rel_tol=1e-12)
    x = Tensor(logits, requires_grad=True)
    F.cross_entropy(x, labels, label_smoothing=0.1).backward()
    assert np.allclose(x.grad.sum(axis=1), 0.0, atol=1e-15)  # q sums to 1 like p: each row's gradient sums to 0


@pytest.mark.parametrize("label_smoothing", [-0.1, 1.5])
def test_label_smoothing_outside_0_1_is_an_error(label_smoothing):
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got " + str(label_smoothing)):
        F.cross_entropy(LOGITS, np.array([0, 1, 2]), label_smoothing=label_smoothing)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_batch_of_one_is_minus_log_softmax(dtype, device):
    """One sample: the loss is -log softmax(x)[t], computed here from the definition with Python's math."""
    logits, label = [0.3, -1.2, 2.5, 0.0], 1
    loss, _ = assert_cross_entropy_matches_torch(np.array([logits], dtype=dtype), np.array([label]), device=device)
    expected = -(logits[label] - math.log(sum(math.exp(v) for v in logits)))
    assert abs(loss.item() - expected) < TORCH_TOLERANCE[dtype] * abs(expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_kind", ["array", "tensor"])
def test_cross_entropy_is_stable_for_huge_logits(label_kind, dtype, device):
    """Logits of size 1e4 (exp would overflow) give a finite loss and gradient with no warning,
    equal to torch's; the loss is then the gap to the row maximum (here checked in closed form)."""
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4 - 1.0, 1e4], [5e3, 1e4, -3e3]], dtype=dtype)
    labels = np.array([0, 1, 0])
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        loss, grad = assert_cross_entropy_matches_torch(logits, labels, label_kind, device)
    assert np.isfinite(loss.item()) and np.isfinite(to_device(grad, "cpu")).all()
    # row 0: label is the max, loss ~ 0; row 1: loss = log(1 + e^1) ~ 1.3133; row 2: loss ~ 5e3
    expected = (0.0 + np.log1p(np.exp(1.0)) + 5e3) / 3
    assert abs(loss.item() - expected) < TORCH_TOLERANCE[dtype] * expected


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_keeps_dtype_in_expressions(dtype):
    """A loss in an expression with Python numbers (loss * 0.5 + 1) keeps float32 down to the logits gradient."""
    logits = Tensor(np.random.default_rng(0).standard_normal((3, 4)).astype(dtype), requires_grad=True)
    total = F.cross_entropy(logits, np.array([0, 3, 1])) * 0.5 + 1
    total.backward()
    assert total.dtype == dtype and logits.grad.dtype == dtype


# --- bad input ------------------------------------------------------------------------------------
LOGITS = Tensor(np.zeros((3, 4)))


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([0, 4, 1]), r"labels must lie in \[0, 4\) for logits \(3, 4\), got values from 0 to 4"),
        (np.array([0, -1, 1]), r"labels must lie in \[0, 4\).*got values from -1 to 1"),
        (Tensor(np.array([7, 0, 1])), r"labels must lie in \[0, 4\)"),
    ],
    ids=["too large", "negative", "tensor too large"],
)
def test_cross_entropy_labels_out_of_range(labels, message):
    """Labels outside [0, classes), too large or negative, are an error naming the range and the values."""
    with pytest.raises(ValueError, match=message):
        F.cross_entropy(LOGITS, labels)


@pytest.mark.parametrize("labels", [np.array([0.0, 1.0, 2.0]), Tensor([0.0, 1.0, 2.0])], ids=["array", "tensor"])
def test_cross_entropy_float_labels(labels):
    """Floating-point labels are a TypeError naming their dtype."""
    with pytest.raises(TypeError, match="labels must be integers, got dtype float"):
        F.cross_entropy(LOGITS, labels)


@pytest.mark.parametrize("shape", [(4,), (3, 4, 2)])
def test_cross_entropy_logits_of_wrong_rank(shape):
    """Logits that are not (N, classes) are an error naming their shape."""
    with pytest.raises(
        ValueError, match=r"logits of shape \(N, classes\), got " + str(shape).replace("(", r"\(").replace(")", r"\)")
    ):
        F.cross_entropy(Tensor(np.zeros(shape)), np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize(
    "labels", [np.array([0, 1]), np.array([0, 1, 2, 3]), np.array([[0, 1, 2]])], ids=["short", "long", "2-D"]
)
def test_cross_entropy_labels_length_mismatch(labels):
    """Labels that do not hold one integer per logits row are an error naming both shapes."""
    with pytest.raises(ValueError, match=r"labels of shape .* do not match logits \(3, 4\)"):
        F.cross_entropy(LOGITS, labels)
