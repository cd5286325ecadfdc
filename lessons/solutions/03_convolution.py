"""Worked solutions to the exercises of lesson 3 (03_convolution.ipynb): convolution, im2col, col2im.

Run from anywhere: ``python lessons/solutions/03_convolution.py``. Each ``exercise_<k>`` works one
exercise and asserts its result. The file starts with the lesson's pieces (the loop, im2col and col2im
in the lesson's layout (C, KH, KW, N, OH, OW)), copied so that it runs without the notebook having
written ``mine/conv.py``.

Notation: N batch, C, H, W input channels, height, width, O filters, KH, KW kernel, S stride,
P padding, OH, OW output size.
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # lessons/, for checks.py
from checks import check_backward, relative_error

import tinyse
import tinyse.functional as F
from tinyse.ops import conv as tinyse_conv


# --- the lesson's pieces ----------------------------------------------------------------------------
def output_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def pad_hw(x, padding):
    return np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))


def offset_window(i, j, stride, oh, ow):
    return (slice(None), slice(None), slice(i, i + stride * (oh - 1) + 1, stride),
            slice(j, j + stride * (ow - 1) + 1, stride))


def im2col(x, kh, kw, stride, padding):
    """x (N, C, H, W) -> cols (C, KH, KW, N, OH, OW), cols[c, i, j, n, r, s] = x_padded[n, c, S r + i, S s + j]."""
    n, c, h, w = x.shape
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    x_padded = pad_hw(x, padding)
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = x_padded[offset_window(i, j, stride, oh, ow)].transpose(1, 0, 2, 3)
    return cols


def col2im(cols, x_shape, stride, padding):
    """Adjoint of im2col: cols (C, KH, KW, N, OH, OW) -> (N, C, H, W), one slice addition per kernel offset."""
    n, c, h, w = x_shape
    _, kh, kw, _, oh, ow = cols.shape
    x_padded = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            x_padded[offset_window(i, j, stride, oh, ow)] += cols[:, i, j].transpose(1, 0, 2, 3)
    return x_padded[:, :, padding : padding + h, padding : padding + w]


def conv2d_loop(x, weight, bias, stride=1, padding=0):
    """The definition, one output element at a time: x (N, C, H, W), weight (O, C, KH, KW), bias (O,)."""
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    x_padded = pad_hw(x, padding)
    y = np.zeros((n, o, oh, ow), dtype=x.dtype)
    for image in range(n):
        for filter_index in range(o):
            for row in range(oh):
                for col in range(ow):
                    top, left = row * stride, col * stride
                    field = x_padded[image, :, top : top + kh, left : left + kw]
                    y[image, filter_index, row, col] = np.sum(field * weight[filter_index]) + bias[filter_index]
    return y


# --- the exercises ----------------------------------------------------------------------------------
def conv2d_loop_forward(x, weight, bias, stride=1, padding=0):
    return conv2d_loop(x, weight, bias, stride, padding), (x, weight, stride, padding)


def conv2d_loop_backward(grad_y, cache):
    """grad_y (N, O, OH, OW) -> grad_x (N, C, H, W), grad_weight (O, C, KH, KW), grad_bias (O,), by loops.

    Each y[n, o, r, s] = b[o] + sum of W[o, c, i, j] * x_pad[n, c, S r + i, S s + j] hands its gradient to
    each factor times the other one; the padding is not an input, so grad_x is grad_x_pad cropped.
    """
    x, weight, stride, padding = cache
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    _, _, oh, ow = grad_y.shape
    x_padded = pad_hw(x, padding)
    grad_x_padded = np.zeros_like(x_padded)
    grad_weight = np.zeros_like(weight)
    for image in range(n):
        for filter_index in range(o):
            for row in range(oh):
                for col in range(ow):
                    top, left = row * stride, col * stride
                    g = grad_y[image, filter_index, row, col]
                    grad_weight[filter_index] += g * x_padded[image, :, top : top + kh, left : left + kw]
                    grad_x_padded[image, :, top : top + kh, left : left + kw] += g * weight[filter_index]
    grad_x = grad_x_padded[:, :, padding : padding + h, padding : padding + w]
    return grad_x, grad_weight, grad_y.sum(axis=(0, 2, 3))


def exercise_1():
    """Write this backward: the convolution's backward as loops, straight from the definition."""
    import torch

    rng = np.random.default_rng(1)
    x, weight, bias = rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    errors = check_backward(
        lambda x, weight, bias: conv2d_loop_forward(x, weight, bias, 2, 1), conv2d_loop_backward, [x, weight, bias],
        torch_fn=lambda x, weight, bias: torch.nn.functional.conv2d(x, weight, bias, stride=2, padding=1),
    )
    assert errors["finite differences"] < 1e-7
    grad_y = rng.standard_normal((2, 3, 3, 3))
    ours = conv2d_loop_backward(grad_y, (x, weight, 2, 1))
    theirs = tinyse_conv.conv2d_naive_backward(x, weight, grad_y, 2, 1)
    error = max(relative_error(a, b) for a, b in zip(ours, theirs))
    print(f"vs tinyse.ops.conv.conv2d_naive_backward: {error:.1e}")
    assert error < 1e-12


def col2im_add_at(cols, x_shape, stride, padding):
    """col2im with one np.add.at: every entry of cols (C, KH, KW, N, OH, OW) names its padded pixel."""
    n, c, h, w = x_shape
    _, kh, kw, _, oh, ow = cols.shape
    c_index = np.arange(c).reshape(c, 1, 1, 1, 1, 1)  # each index broadcasts to the six axes of cols
    i_index = np.arange(kh).reshape(1, kh, 1, 1, 1, 1)
    j_index = np.arange(kw).reshape(1, 1, kw, 1, 1, 1)
    n_index = np.arange(n).reshape(1, 1, 1, n, 1, 1)
    r_index = np.arange(oh).reshape(1, 1, 1, 1, oh, 1)
    s_index = np.arange(ow).reshape(1, 1, 1, 1, 1, ow)
    x_padded = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    np.add.at(x_padded, (n_index, c_index, stride * r_index + i_index, stride * s_index + j_index), cols)
    return x_padded[:, :, padding : padding + h, padding : padding + w]


def seconds(f, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def exercise_2():
    """col2im with one np.add.at gives the same numbers, far more slowly than one slice addition per offset."""
    rng = np.random.default_rng(2)
    for x_shape, k, stride, padding in (((2, 3, 7, 6), 3, 2, 1), ((1, 2, 5, 5), 2, 1, 0)):
        cols = rng.standard_normal(im2col(np.zeros(x_shape), k, k, stride, padding).shape)
        error = relative_error(col2im_add_at(cols, x_shape, stride, padding), col2im(cols, x_shape, stride, padding))
        assert error < 1e-14
    x_shape = (8, 32, 32, 32)  # section 6's largest size: 3x3, padding 1
    cols = rng.standard_normal(im2col(np.zeros(x_shape, dtype=np.float32), 3, 3, 1, 1).shape).astype(np.float32)
    slices = seconds(lambda: col2im(cols, x_shape, 1, 1))
    add_at = seconds(lambda: col2im_add_at(cols, x_shape, 1, 1))
    print(f"col2im on cols {cols.shape}: slices {slices * 1e3:.1f} ms, np.add.at {add_at * 1e3:.1f} ms "
          f"({add_at / slices:.0f}x slower)")
    assert add_at > slices


def dilated_output_size(size, kernel, stride, padding, dilation):
    """The kernel spans dilation * (kernel - 1) + 1 pixels."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def dilated_window(i, j, stride, dilation, oh, ow):
    top, left = dilation * i, dilation * j  # only the start of each offset's slice changes
    return (slice(None), slice(None), slice(top, top + stride * (oh - 1) + 1, stride),
            slice(left, left + stride * (ow - 1) + 1, stride))


def im2col_dilated(x, kh, kw, stride, padding, dilation):
    """cols[c, i, j, n, r, s] = x_padded[n, c, S r + d i, S s + d j]."""
    n, c, h, w = x.shape
    oh = dilated_output_size(h, kh, stride, padding, dilation)
    ow = dilated_output_size(w, kw, stride, padding, dilation)
    x_padded = pad_hw(x, padding)
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = x_padded[dilated_window(i, j, stride, dilation, oh, ow)].transpose(1, 0, 2, 3)
    return cols


def col2im_dilated(cols, x_shape, stride, padding, dilation):
    n, c, h, w = x_shape
    _, kh, kw, _, oh, ow = cols.shape
    x_padded = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            x_padded[dilated_window(i, j, stride, dilation, oh, ow)] += cols[:, i, j].transpose(1, 0, 2, 3)
    return x_padded[:, :, padding : padding + h, padding : padding + w]


def exercise_3():
    """Dilation: im2col/col2im with taps d apart; forward and input gradient against PyTorch."""
    import torch

    rng = np.random.default_rng(3)
    x, weight = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3, 3, 3))
    stride, padding, dilation = 1, 2, 2
    n, c = x.shape[:2]
    o, _, kh, kw = weight.shape
    cols = im2col_dilated(x, kh, kw, stride, padding, dilation)
    oh, ow = cols.shape[-2:]
    y = (weight.reshape(o, -1) @ cols.reshape(c * kh * kw, n * oh * ow)).reshape(o, n, oh, ow).transpose(1, 0, 2, 3)
    grad_y = rng.standard_normal(y.shape)
    grad_cols = weight.reshape(o, -1).T @ grad_y.transpose(1, 0, 2, 3).reshape(o, -1)
    grad_x = col2im_dilated(grad_cols.reshape(cols.shape), x.shape, stride, padding, dilation)

    x_t = torch.tensor(x, requires_grad=True)
    y_t = torch.nn.functional.conv2d(x_t, torch.from_numpy(weight), stride=stride, padding=padding, dilation=dilation)
    y_t.backward(torch.from_numpy(grad_y))
    errors = relative_error(y, y_t.detach().numpy()), relative_error(grad_x, x_t.grad.numpy())
    print(f"dilation {dilation}: OH = (9 + 2*2 - 2*(3 - 1) - 1) // 1 + 1 = {oh}; vs PyTorch: y {errors[0]:.1e}, "
          f"dL/dx {errors[1]:.1e}")
    assert oh == 9 and ow == 8 and max(errors) < 1e-12


def exercise_4():
    """A 1x1 convolution is a linear layer applied to the C numbers at every pixel."""
    rng = np.random.default_rng(4)
    n, c, h, w, o = 2, 5, 4, 3, 6
    x, weight, bias = rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c, 1, 1)), rng.standard_normal(o)
    pixels = x.transpose(0, 2, 3, 1).reshape(-1, c)  # (N*H*W, C): one row per pixel
    as_linear = F.linear(tinyse.Tensor(pixels), tinyse.Tensor(weight[:, :, 0, 0]), tinyse.Tensor(bias)).data
    as_linear = as_linear.reshape(n, h, w, o).transpose(0, 3, 1, 2)  # back to (N, O, H, W)
    error = relative_error(as_linear, conv2d_loop(x, weight, bias))
    print(f"1x1 convolution vs F.linear on the pixels: {error:.1e}")
    assert error < 1e-14


def exercise_5():
    """The memory of cols for ResNet-20's first 3x3 convolution on 128 CIFAR images, float32."""
    n, c, h, w, k = 128, 16, 32, 32, 3
    cols_bytes = (c * k * k) * (n * h * w) * 4  # (C*KH*KW, N*OH*OW), OH = H and OW = W with padding 1
    input_bytes = n * c * h * w * 4
    one_image = im2col(np.zeros((1, c, h, w), dtype=np.float32), k, k, 1, 1)
    assert one_image.nbytes * n == cols_bytes
    print(f"cols: {cols_bytes / 1e6:.1f} MB ({cols_bytes / 2**20:.0f} MiB); the input: {input_bytes / 1e6:.1f} MB; "
          f"KH*KW = {cols_bytes // input_bytes} times as much")
    assert cols_bytes == 75_497_472 and cols_bytes == 9 * input_bytes


def max_pool_forward(x, k):
    """k x k max pooling with stride k through im2col: x (N, C, H, W) -> y (N, C, OH, OW), cache."""
    n, c = x.shape[:2]
    cols = im2col(x, k, k, k, 0)  # (C, k, k, N, OH, OW)
    oh, ow = cols.shape[-2:]
    windows = cols.reshape(c, k * k, n, oh, ow)
    winner = windows.argmax(axis=1)  # (C, N, OH, OW): which entry of each window is the largest
    y = np.take_along_axis(windows, winner[:, None], axis=1)[:, 0]  # (C, N, OH, OW)
    return y.transpose(1, 0, 2, 3), (winner, x.shape, k)


def max_pool_backward(grad_y, cache):
    """Each output's gradient goes to the window entry that won, then col2im puts it on its pixel."""
    winner, x_shape, k = cache
    n, c = x_shape[:2]
    oh, ow = winner.shape[-2:]
    grad_windows = np.zeros((c, k * k, n, oh, ow), dtype=grad_y.dtype)
    np.put_along_axis(grad_windows, winner[:, None], grad_y.transpose(1, 0, 2, 3)[:, None], axis=1)
    return col2im(grad_windows.reshape(c, k, k, n, oh, ow), x_shape, k, 0)


def exercise_6():
    """Max pooling from im2col: the gradient goes back to the largest entry of each window only."""
    import torch

    rng = np.random.default_rng(6)
    x = rng.permutation(2 * 3 * 6 * 6).reshape(2, 3, 6, 6) / 10.0  # distinct values: no ties, gaps >> h
    errors = check_backward(lambda x: max_pool_forward(x, 2), max_pool_backward, [x],
                            torch_fn=lambda x: torch.nn.functional.max_pool2d(x, 2))
    assert errors["finite differences"] < 1e-7
    error = relative_error(max_pool_forward(x, 2)[0], F.max_pool2d(tinyse.Tensor(x), 2).data)
    assert error == 0.0


def exercise_7():
    """Depthwise separable: a depthwise 3x3 and a 1x1 cost 1/O + 1/9 of a full 3x3 convolution."""
    c = o = 64
    h = w = 32  # padding 1: OH = H, OW = W
    full = o * h * w * c * 3 * 3  # each output value: C*KH*KW multiply-adds
    depthwise = c * h * w * 1 * 3 * 3  # groups = C: each output value sees one channel
    pointwise = o * h * w * c * 1 * 1
    saving = full / (depthwise + pointwise)
    print(f"3x3: {full:,} multiply-adds; depthwise 3x3 + 1x1: {depthwise:,} + {pointwise:,} = "
          f"{depthwise + pointwise:,}; {saving:.1f}x fewer")
    assert np.isclose(saving, 1 / (1 / o + 1 / 9)) and 7.8 < saving < 8


if __name__ == "__main__":
    for number in range(1, 8):
        print(f"--- exercise {number}")
        globals()[f"exercise_{number}"]()
    print("all exercises of lesson 3 check out")
