"""Batch normalisation, against torch.nn.functional.batch_norm.

Training and eval mode, with and without weight/bias, (N, C) and (N, C, H, W)
inputs: the output, the x/weight/bias gradients, and (in training) the running
statistics that both libraries update in place. Plus finite differences,
dtype discipline (float32 running stats stay float32), and clear errors.
"""

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

import tinyse.functional as F
from tinyse import Tensor, gradcheck
from tinyse.backend import to_device

from conftest import DEVICES, DTYPES, GRADCHECK_TOLERANCE, TORCH_TOLERANCE, assert_matches_torch, rel_error

seeds = st.integers(0, 2**32 - 1)


@st.composite
def bn_cases(draw):
    """An input shape, (N, C) or (N, C, H, W), with at least 2 values per channel (training needs them),
    and whether weight and bias are given."""
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    shape = (n, c) if draw(st.booleans()) else (n, c, draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    assume(np.prod(shape) // c >= 2)
    return shape, draw(st.booleans()), draw(st.booleans())


def at_least_3_per_channel(case):
    """With 2 values per channel, training normalises them to -1 and +1 whatever x is: dL/dx is O(eps) and
    computed by cancellation, rounding noise in any library. test_batch_norm_two_values_per_channel covers it."""
    shape = case[0]
    return np.prod(shape) // shape[1] >= 3


def bn_arrays(case, seed, dtype=np.float64):
    """x shifted and scaled away from the standard normal (so normalising really does something),
    weight, bias (or None), and running stats: mean normal, var in [0.5, 2]."""
    shape, with_weight, with_bias = case
    c = shape[1]
    # Not default_rng(seed): for seed 2017 that is gradcheck's stream for its output weights, which would
    # then be an affine function of x, a direction training-mode batch norm's gradient is blind to.
    rng = np.random.default_rng([seed, 2])
    x = rng.standard_normal(shape) * 3 + 1.5
    weight = rng.standard_normal(c) if with_weight else None
    bias = rng.standard_normal(c) if with_bias else None
    running_mean, running_var = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    x, weight, bias, running_mean, running_var = (
        None if a is None else a.astype(dtype) for a in (x, weight, bias, running_mean, running_var)
    )
    return [x, weight, bias], running_mean, running_var


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@given(case=bn_cases(), seed=seeds, momentum=st.sampled_from([0.1, 0.3]), eps=st.sampled_from([1e-5, 1e-3]))
@example(case=((4, 3), True, True), seed=0, momentum=0.1, eps=1e-5)
@example(case=((2, 3, 4, 5), False, False), seed=0, momentum=0.1, eps=1e-5)
@example(case=((1, 3, 1, 3), True, False), seed=0, momentum=0.1, eps=1e-5)  # batch of 1, 3 pixels
def test_batch_norm_matches_torch(training, dtype, device, case, seed, momentum, eps):
    """batch_norm, training and eval, with and without weight/bias, (N, C) and (N, C, H, W):
    the output and every gradient match torch, and so do the running stats, updated in place
    (and left alone in eval mode); float32 running stats stay float32."""
    assume(not training or at_least_3_per_channel(case))
    arrays, running_mean, running_var = bn_arrays(case, seed, dtype)
    ours_mean, ours_var = to_device(running_mean.copy(), device), to_device(running_var.copy(), device)
    torch_stats = {}  # torch dtype -> the running stats that torch call updated (the helper may call twice)

    def torch_batch_norm(x, w, b):
        stats = torch_stats[x.dtype] = (
            torch.tensor(running_mean, dtype=x.dtype),
            torch.tensor(running_var, dtype=x.dtype),
        )
        return torch.nn.functional.batch_norm(x, *stats, w, b, training, momentum, eps)

    assert_matches_torch(
        lambda x, w, b: F.batch_norm(x, w, b, ours_mean, ours_var, training, momentum, eps),
        torch_batch_norm,
        arrays,
        device,
        seed,
    )
    tolerance = TORCH_TOLERANCE[dtype]
    theirs_mean, theirs_var = torch_stats[torch.from_numpy(running_mean).dtype]
    for ours, theirs, before in [(ours_mean, theirs_mean, running_mean), (ours_var, theirs_var, running_var)]:
        assert ours.dtype == dtype
        assert rel_error(ours, theirs) < tolerance
        assert training or rel_error(ours, before) == 0
    if training:
        assert rel_error(ours_mean, running_mean) > 0, "training must update the running mean"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@given(case=bn_cases(), seed=seeds)
def test_batch_norm_training_without_running_stats(dtype, device, case, seed):
    """In training mode the running stats may be left out: normalising with batch statistics alone matches torch."""
    assume(at_least_3_per_channel(case))
    arrays, _, _ = bn_arrays(case, seed, dtype)
    assert_matches_torch(
        lambda x, w, b: F.batch_norm(x, w, b, training=True),
        lambda x, w, b: torch.nn.functional.batch_norm(x, None, None, w, b, training=True),
        arrays,
        device,
        seed,
    )


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@given(case=bn_cases(), seed=seeds)
def test_batch_norm_gradcheck(training, case, seed):
    """batch_norm's backward (x also through the batch mean and variance in training) matches finite differences."""
    assume(np.prod(case[0]) <= 200)
    assume(not training or at_least_3_per_channel(case))
    arrays, running_mean, running_var = bn_arrays(case, seed)
    given_arrays = [a for a in arrays if a is not None]
    _, with_weight, with_bias = case

    def fn(x, *params):
        params = list(params)
        weight = params.pop(0) if with_weight else None
        bias = params.pop(0) if with_bias else None
        return F.batch_norm(x, weight, bias, running_mean.copy(), running_var.copy(), training)

    assert gradcheck(fn, *given_arrays) < GRADCHECK_TOLERANCE


@pytest.mark.parametrize("shape", [(2, 3), (1, 3, 1, 2)])
def test_batch_norm_two_values_per_channel(shape):
    """The smallest batch training accepts, 2 values per channel, matches torch: output, weight and bias
    gradients, running stats; the x gradient (round-off sized, see at_least_3_per_channel) to 1e-10 in
    absolute terms, relative to the size of the upstream gradient."""
    arrays, running_mean, running_var = bn_arrays((shape, True, True), seed=3)
    ours = [Tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    ours_stats, theirs_stats = (
        (running_mean.copy(), running_var.copy()),
        (torch.tensor(running_mean), torch.tensor(running_var)),
    )
    out = F.batch_norm(*ours, *ours_stats, training=True)
    ref = torch.nn.functional.batch_norm(theirs[0], *theirs_stats, *theirs[1:], training=True)
    upstream = np.random.default_rng(4).standard_normal(shape)
    out.backward(upstream)
    ref.backward(torch.from_numpy(upstream))
    for actual, expected in [
        (out.data, ref),
        (ours[1].grad, theirs[1].grad),
        (ours[2].grad, theirs[2].grad),
        *zip(ours_stats, theirs_stats),
    ]:
        assert rel_error(actual, expected) < 1e-10
    assert np.abs(ours[0].grad - theirs[0].grad.numpy()).max() < 1e-10 * np.abs(upstream).max()


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
def test_batch_norm_training_math(shape):
    """In training mode each channel of the output (no weight/bias) has mean 0 and variance 1/(1 + eps/var),
    computed with NumPy from the definition."""
    x = np.random.default_rng(1).standard_normal(shape) * 2 + 1
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    y = F.batch_norm(Tensor(x), training=True, eps=1e-5).data
    assert np.abs(y.mean(axis=axes)).max() < 1e-12
    assert rel_error(y.var(axis=axes), x.var(axis=axes) / (x.var(axis=axes) + 1e-5)) < 1e-12


def test_batch_norm_wrong_rank():
    """Input that is neither (N, C) nor (N, C, H, W) is an error naming its shape."""
    with pytest.raises(ValueError, match=r"\(N, C\) or \(N, C, H, W\), got \(2, 3, 4\)"):
        F.batch_norm(Tensor(np.ones((2, 3, 4))))
    with pytest.raises(ValueError, match=r"got \(3,\)"):
        F.batch_norm(Tensor(np.ones(3)))


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1)])
def test_batch_norm_one_value_per_channel_in_training(shape):
    """Training with one value per channel (no variance to estimate) is an error naming the input shape, as in torch;
    eval mode accepts it."""
    x = Tensor(np.ones(shape))
    with pytest.raises(ValueError, match=r"more than 1 value per channel, got input \(1, 3"):
        F.batch_norm(x, running_mean=np.zeros(3), running_var=np.ones(3), training=True)
    assert F.batch_norm(x, running_mean=np.zeros(3), running_var=np.ones(3), training=False).shape == shape


def test_batch_norm_parameter_of_wrong_shape():
    """weight, bias or running stats not of shape (C,) are an error naming which one and the shapes."""
    x = Tensor(np.ones((4, 3, 2, 2)))
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\) for input \(4, 3, 2, 2\), got \(4,\)"):
        F.batch_norm(x, weight=Tensor(np.ones(4)))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\).*got \(1, 3\)"):
        F.batch_norm(x, bias=Tensor(np.ones((1, 3))))
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\).*got \(2,\)"):
        F.batch_norm(x, running_mean=np.zeros(3), running_var=np.ones(2))


def test_batch_norm_eval_needs_running_stats():
    """Eval mode without running statistics is an error that says so."""
    with pytest.raises(ValueError, match="eval mode needs running_mean and running_var"):
        F.batch_norm(Tensor(np.ones((4, 3))), training=False)


def test_batch_norm_backward_uses_up_its_saved_x_minus_mu():
    """The training backward writes dL/dx into the x - mu its forward kept (no new array): a second backward of
    the same op, which autograd never makes (it frees the graph), is a clear error instead of wrong numbers."""
    from tinyse.ops.norm import BatchNorm

    op = BatchNorm()
    op.needs_input_grad = (True, False, False)
    x = np.random.default_rng(7).standard_normal((4, 3, 2, 2))
    op.forward(x)
    grad_out = np.ones_like(x)
    first = op.backward(grad_out)[0]
    assert np.abs(first).max() < 1e-12  # dL/dy constant per channel: nothing reaches x through the normalisation
    with pytest.raises(RuntimeError, match="backward ran twice"):
        op.backward(grad_out)
