"""2-D convolution, NCHW, as torch.nn.functional.conv2d (a cross-correlation).

Notation
    N        batch size
    C, H, W  input channels, height, width
    O        output channels (number of filters)
    G        groups: input and output channels split into G independent convolutions
    Cg, Og   C / G and O / G, the channels of one group
    KH, KW   kernel height and width
    S, P     stride and zero padding (the same on both spatial axes; the pools in
             ``pool.py`` also take a stride (SH, SW) per axis)
    OH, OW   output height and width: OH = (H + 2P - KH) // S + 1
    K        Cg * KH * KW, the values one filter sees at one output pixel

The file, in reading order
    1. Sizes and checks: ``output_size``, ``pair``, ``window``, ``pad_hw``, ``check_window``,
       ``check_conv2d`` (the pools in ``pool.py`` use them too).
    2. The obvious version: ``conv2d_naive`` and ``conv2d_naive_backward``, a loop over output
       pixels with one small product per pixel and group. Slow; they state the definition.
    3. The same as matrix products: ``im2col`` copies every receptive field into a column,
       cols (K, OH*OW) per image and group; ``col2im`` is its adjoint, adding columns back onto
       the pixels they came from. ``conv2d_im2col`` / ``conv2d_im2col_backward``:
           y = W (Og, K) @ cols (K, OH*OW)
           dL/dW = dL/dy (Og, OH*OW) @ cols^T (OH*OW, K), summed over images
           dL/dx = col2im(W^T (K, Og) @ dL/dy (Og, OH*OW))
    4. The fast version, ``Conv2d``: the same products on a chunk of a few images at a time,
       whose work arrays fit in a core's cache, on every core (``tinyse.parallel``), one function
       per algorithm, chosen by the dispatchers ``conv_forward``, ``conv_backward`` (which hands
       on to ``conv_weight_grad`` and ``conv_input_grad`` unless it can do both at once):
       - stride 1, on the CPU, at least 8 input channels per group (``uses_shifted_rows``): no
         im2col. ``image_rows`` lays each image
         out in rows RW = W + P wide (P zeros after each row pad both it and the next), flattened;
         the pixels that kernel offset (i, j) meets, for all output pixels at once, are then one
         contiguous run of it, a view (``shifted``). So
             y = sum over (i, j) of W[:, :, i, j] (Og, Cg) @ shifted(i, j) (Cg, OH*RW)
             dL/dW[:, :, i, j] = sum over images of (shifted(i, j) @ dL/dy^T)^T
         and the RW - OW junk entries at the end of each output row are cropped.
         Measured in ``python -m tinyse.bench``: copying im2col's 9 columns took longer than the
         products, and memory-bound copies do not get faster on a second core, while the products do.
       - other strides, fewer channels (a 3-channel stem): im2col and the products of part 3,
         per chunk.
       - dL/dx at stride 1 (square kernels): the same convolution of dL/dy with the kernel flipped
         in space and transposed in channels, padding KH - 1 - P (equal to col2im(W^T dL/dy));
         otherwise col2im(W^T dL/dy) per chunk. With shifted rows, one layout of dL/dy serves
         this convolution and dL/dW alike (``conv_backward_shifted_rows``).
    5. The GPU: part 3's products over the whole batch at once, one matrix product per group
       (``conv_forward_gpu``, ``conv_backward_gpu``): im2col writes cols (K, N*OH*OW), the batch
       folded into the columns, so that y = W (Og, K) @ cols is one GEMM, not a GEMM per image
       or a batched GEMM with W broadcast over the images (CuPy builds arrays of pointers for
       that). Then the CUDA sources of im2col and col2im, one thread per value written.
"""
import itertools

import numpy as np

from tinyse.backend import elementwise_kernel, get_array_module
from tinyse.parallel import for_each_chunk, workspace
from tinyse.tensor import Function


# --- 1. sizes and checks -------------------------------------------------------------------------
def output_size(size, kernel, stride, padding):
    """Output length along one axis: (size + 2 padding - kernel) // stride + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def pair(value):
    """One number for both spatial axes -> (value, value); a pair (tuple or list) stays a pair."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def window(i, j, stride, oh, ow):
    """Index of the (OH, OW) input pixels that kernel offset (i, j) meets, in a padded NCHW array.

    ``stride`` is S, or (SH, SW) per axis. Output pixel (r, s) meets padded pixel (SH r + i, SW s + j).
    """
    sh, sw = pair(stride)
    return (slice(None), slice(None), slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))


def pad_hw(x, padding, value=0):
    """x (N, C, H, W) -> (N, C, H + 2P, W + 2P): ``padding`` values ``value`` on every side of the spatial axes.

    Filled, then x copied in: the same as np.pad(x, ..., constant_values=value), which took 2.4x as long
    (11x16x32x32 float32, 2-core Intel Xeon, 2026-12-02; im2col pads every chunk it copies).
    """
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = get_array_module(x).full((n, c, h + 2 * padding, w + 2 * padding), value, dtype=x.dtype)
    padded[:, :, padding : padding + h, padding : padding + w] = x
    return padded


def check_window(name, x_shape, kernel, stride, padding):
    """Errors for a 4-D input that a (KH, KW) window with this stride (S or (SH, SW)) and padding cannot slide over."""
    if len(x_shape) != 4:
        raise ValueError(f"{name} expects input of shape (N, C, H, W), got {x_shape}")
    if min(pair(stride)) < 1 or padding < 0:
        raise ValueError(f"{name} needs stride >= 1 and padding >= 0, got stride={stride}, padding={padding}")
    kh, kw = kernel
    h, w = x_shape[2] + 2 * padding, x_shape[3] + 2 * padding
    if kh > h or kw > w:
        raise ValueError(
            f"{name}: kernel {kh}x{kw} is larger than the padded input {h}x{w} "
            f"(input {x_shape}, padding={padding})"
        )


def check_conv2d(x_shape, weight_shape, bias_shape, stride, padding, groups):
    """Clear errors, naming the shapes, for every way conv2d's arguments can disagree.

    Expects x (N, C, H, W), W (O, C/G, KH, KW), b (O,) or None (``bias_shape`` None).
    """
    if len(weight_shape) != 4:
        raise ValueError(f"conv2d expects weight of shape (O, C/groups, KH, KW), got {weight_shape}")
    check_window("conv2d", x_shape, weight_shape[2:], stride, padding)
    c, o, cg = x_shape[1], weight_shape[0], weight_shape[1]
    if groups < 1 or c % groups or o % groups:
        raise ValueError(f"conv2d: groups={groups} must divide both input channels {c} and output channels {o}")
    if cg * groups != c:
        raise ValueError(
            f"conv2d: input {x_shape} has {c} channels but weight {weight_shape} with groups={groups} "
            f"expects {cg * groups}"
        )
    if bias_shape is not None and bias_shape != (o,):
        raise ValueError(f"conv2d: bias must have shape ({o},), got {bias_shape}")


# --- 2. the obvious version: a loop over output pixels ---------------------------------------------
def conv2d_naive(x, weight, bias=None, stride=1, padding=0, groups=1):
    """The obvious convolution on raw arrays: one small product per output pixel and group.

        y[n, o, r, s] = b[o] + sum over (c in o's group, i, j) of W[o, c, i, j] * x_pad[n, c, S r + i, S s + j]

    Inputs: x (N, C, H, W), weight W (O, C/G, KH, KW), bias b (O,) or None.
    Returns: y (N, O, OH, OW). Slow; it states the definition that ``Conv2d`` computes fast.
    """
    xp = get_array_module(x, weight)
    check_conv2d(x.shape, weight.shape, None if bias is None else bias.shape, stride, padding, groups)
    n, _, h, w = x.shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    x_pad = pad_hw(x, padding)  # (N, C, H + 2P, W + 2P)
    y = xp.zeros((n, o, oh, ow), dtype=x.dtype)
    for row in range(oh):
        for col in range(ow):
            top, left = row * stride, col * stride
            field = x_pad[:, :, top : top + kh, left : left + kw]  # (N, C, KH, KW), what pixel (row, col) sees
            for group in range(groups):
                inputs = field[:, group * cg : (group + 1) * cg]  # (N, Cg, KH, KW)
                filters = weight[group * og : (group + 1) * og]  # (Og, Cg, KH, KW)
                # y[n, o] = sum over (c, i, j) of inputs[n, c, i, j] * filters[o, c, i, j]
                products = xp.tensordot(inputs, filters, axes=([1, 2, 3], [1, 2, 3]))  # (N, Og)
                y[:, group * og : (group + 1) * og, row, col] = products
    if bias is not None:
        y += bias.reshape(1, o, 1, 1)
    return y


def conv2d_naive_backward(x, weight, grad_out, stride=1, padding=0, groups=1):
    """The obvious backward of ``conv2d_naive``: the same loop, each output pixel handing its gradient back.

    Each y[n, o, r, s] is a sum of products, so its gradient dL/dy[n, o, r, s] goes to each factor,
    times the other one (c in o's group):
        dL/dW[o, c, i, j]                   += dL/dy[n, o, r, s] * x_pad[n, c, S r + i, S s + j]
        dL/dx_pad[n, c, S r + i, S s + j]  += dL/dy[n, o, r, s] * W[o, c, i, j]
        dL/db[o]                            = sum over (n, r, s) of dL/dy[n, o, r, s]
    and dL/dx is dL/dx_pad without its P-wide border (the padding is not an input).

    Inputs: x (N, C, H, W), weight W (O, C/G, KH, KW), grad_out dL/dy (N, O, OH, OW).
    Returns: (grad_x (N, C, H, W), grad_weight (O, C/G, KH, KW), grad_bias (O,)).
    """
    xp = get_array_module(x, weight, grad_out)
    check_conv2d(x.shape, weight.shape, None, stride, padding, groups)
    _, _, h, w = x.shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    _, _, oh, ow = grad_out.shape
    x_pad = pad_hw(x, padding)  # (N, C, H + 2P, W + 2P)
    grad_x_pad = xp.zeros(x_pad.shape, dtype=x.dtype)
    grad_weight = xp.zeros(weight.shape, dtype=weight.dtype)
    for row in range(oh):
        for col in range(ow):
            top, left = row * stride, col * stride
            for group in range(groups):
                ins, outs = slice(group * cg, (group + 1) * cg), slice(group * og, (group + 1) * og)
                grad_y = grad_out[:, outs, row, col]  # (N, Og)
                inputs = x_pad[:, ins, top : top + kh, left : left + kw]  # (N, Cg, KH, KW)
                # dL/dW[o, c, i, j] += sum over n of grad_y[n, o] * inputs[n, c, i, j]
                grad_weight[outs] += xp.tensordot(grad_y, inputs, axes=([0], [0]))  # (Og, Cg, KH, KW)
                # dL/dx_pad[n, c, i, j] += sum over o of grad_y[n, o] * W[o, c, i, j]
                grad_x_pad[:, ins, top : top + kh, left : left + kw] += xp.tensordot(
                    grad_y, weight[outs], axes=([1], [0])
                )  # (N, Cg, KH, KW)
    grad_x = grad_x_pad[:, :, padding : padding + h, padding : padding + w]  # crop the padding
    grad_bias = grad_out.sum(axis=(0, 2, 3))
    return grad_x, grad_weight, grad_bias


# --- 3. the same as matrix products: im2col and col2im ----------------------------------------------
def im2col(x, kh, kw, stride, padding):
    """Copy every (KH, KW) receptive field of x into a column.

        cols[n, c, i, j, r, s] = x_pad[n, c, S r + i, S s + j]

    Inputs: x (N, C, H, W). Returns: cols (N, C, KH, KW, OH, OW); read as (N, C*KH*KW, OH*OW), column
    (r, s) holds what output pixel (r, s) sees. On NumPy, one slice copy per kernel offset (i, j).
    """
    n, c, h, w = x.shape
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    xp = get_array_module(x)
    cols = xp.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    if xp is not np:  # the GPU: one CUDA thread per value of cols (IM2COL_CUDA, at the end of this file)
        kernel = elementwise_kernel(f"raw T x, {SIZES}", "T cols", IM2COL_CUDA, "tinyse_im2col")
        return kernel(xp.ascontiguousarray(x).ravel(), h, w, kh, kw, oh, ow, *pair(stride), padding, cols)
    x = pad_hw(x, padding)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[window(i, j, stride, oh, ow)]  # (N, C, OH, OW)
    return cols


def col2im(cols, x_shape, stride, padding):
    """Adjoint of im2col: add each column back onto the pixels it came from.

        x_pad[n, c, S r + i, S s + j] += cols[n, c, i, j, r, s], then x = x_pad without its P-wide border

    Inputs: cols (N, C, KH, KW, OH, OW), x_shape (N, C, H, W). Returns: x (N, C, H, W).
    On NumPy, one slice addition per kernel offset (i, j), never ``np.add.at``.
    """
    n, c, h, w = x_shape
    _, _, kh, kw, oh, ow = cols.shape
    xp = get_array_module(cols)
    if xp is not np:  # the GPU: one CUDA thread per pixel, gathering its columns (COL2IM_CUDA, at the end)
        kernel = elementwise_kernel(f"raw T cols, {SIZES}", "T x", COL2IM_CUDA, "tinyse_col2im")
        x = xp.empty((n, c, h, w), dtype=cols.dtype)
        return kernel(xp.ascontiguousarray(cols).ravel(), h, w, kh, kw, oh, ow, *pair(stride), padding, x)
    x = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            x[window(i, j, stride, oh, ow)] += cols[:, :, i, j]  # (N, C, OH, OW)
    return x[:, :, padding : padding + h, padding : padding + w]


def columns(x, kh, kw, stride, padding, groups):
    """im2col as the matrices of the products: x (N, C, H, W) -> cols (N, G, K, OH*OW)."""
    n, c = x.shape[:2]
    cols = im2col(x, kh, kw, stride, padding)  # (N, C, KH, KW, OH, OW)
    return cols.reshape(n, groups, c // groups * kh * kw, -1)


def conv2d_im2col(x, weight, bias=None, stride=1, padding=0, groups=1):
    """The convolution as one matrix product per image and group, on the whole batch at once.

        y[n] = W (Og, K) @ cols[n] (K, OH*OW) + b, per group

    Inputs: x (N, C, H, W), weight W (O, C/G, KH, KW), bias b (O,) or None.
    Returns: y (N, O, OH, OW), the same as ``conv2d_naive``.
    """
    check_conv2d(x.shape, weight.shape, None if bias is None else bias.shape, stride, padding, groups)
    n, _, h, w = x.shape
    o, cg, kh, kw = weight.shape
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    cols = columns(x, kh, kw, stride, padding, groups)  # (N, G, K, OH*OW)
    weight_rows = weight.reshape(groups, o // groups, cg * kh * kw)  # (G, Og, K)
    y = (weight_rows @ cols).reshape(n, o, oh, ow)  # (N, G, Og, OH*OW) -> (N, O, OH, OW)
    if bias is not None:
        y += bias.reshape(1, o, 1, 1)
    return y


def conv2d_im2col_backward(x, weight, grad_out, stride=1, padding=0, groups=1):
    """The backward of ``conv2d_im2col``: the two gradients of a matrix product y = W @ cols, per group.

        dL/dW = sum over images n of dL/dy[n] (Og, OH*OW) @ cols[n]^T (OH*OW, K)
        dL/dcols[n] = W^T (K, Og) @ dL/dy[n] (Og, OH*OW), and dL/dx = col2im(dL/dcols)
        dL/db = dL/dy summed over images and pixels

    Inputs: x (N, C, H, W), weight W (O, C/G, KH, KW), grad_out dL/dy (N, O, OH, OW).
    Returns: (grad_x (N, C, H, W), grad_weight (O, C/G, KH, KW), grad_bias (O,)).
    """
    check_conv2d(x.shape, weight.shape, None, stride, padding, groups)
    n, c = x.shape[:2]
    o, cg, kh, kw = weight.shape
    _, _, oh, ow = grad_out.shape
    cols = columns(x, kh, kw, stride, padding, groups)  # (N, G, K, OH*OW)
    weight_rows = weight.reshape(groups, o // groups, cg * kh * kw)  # (G, Og, K)
    grad_y = grad_out.reshape(n, groups, o // groups, oh * ow)  # (N, G, Og, OH*OW)
    grad_weight = (grad_y @ cols.transpose(0, 1, 3, 2)).sum(axis=0)  # (N, G, Og, K) summed over N -> (G, Og, K)
    grad_cols = weight_rows.transpose(0, 2, 1) @ grad_y  # (G, K, Og) @ (N, G, Og, OH*OW) -> (N, G, K, OH*OW)
    grad_x = col2im(grad_cols.reshape(n, c, kh, kw, oh, ow), x.shape, stride, padding)
    grad_bias = grad_out.sum(axis=(0, 2, 3))
    return grad_x, grad_weight.reshape(weight.shape), grad_bias


# --- 4. the fast version: chunks on every core; shifted rows at stride 1 on the CPU ------------------
MIN_SHIFTED_CHANNELS = 8  # Cg below this: im2col, even at stride 1 on the CPU (the 3-channel stem of a CIFAR ResNet)


def uses_shifted_rows(xp, stride, channels_per_group):
    """Which fast version runs: the shifted row views on the CPU at stride 1; im2col everywhere else.

    On the GPU, im2col is one CUDA kernel and the product one batched call, where the shifted
    views would take 9 products, each on a copy (cuBLAS wants contiguous operands), and 8 additions.
    On the CPU, with few input channels per group (Cg < ``MIN_SHIFTED_CHANNELS``), im2col wins too:
    each of the 8 additions of the shifted products passes over the whole output (O rows), while
    the products, with their inner dimension Cg, are short, so the additions cost more than
    im2col's copies (9 Cg rows) and its one product (inner dimension 9 Cg). Measured for the
    SE-ResNet-20 stem (3 -> 16 channels, 32x32, batch 128, float32, one thread), A/B in one process,
    2026-12-02, 2-core Intel Xeon: im2col took 0.48 of the forward's time and 0.85 of the weight
    gradient's; at 6 -> 16 channels the two were even, at 8 -> 16 the shifted rows won (0.80).
    """
    return stride == 1 and xp is np and channels_per_group >= MIN_SHIFTED_CHANNELS


def row_width(width, kw, stride, padding):
    """RW, the width of an output row in the products: max(W + P, OW) for stride 1 (``image_rows``), else OW."""
    ow = output_size(width, kw, stride, padding)
    return max(width + padding, ow) if stride == 1 else ow


def image_rows(x, kh, kw, padding, key="image_rows"):
    """x (N, C, H, W) as flat rows for the stride-1 shifted products: (N, C, (H + 2P + 2) * RW).

    Each image row is laid out RW = max(W + P, OW) wide: its W pixels, then at
    least P zeros. Those zeros serve as the right padding of one row and, read
    past the row's end, as the left padding of the next, so no other padding
    columns are needed; P + 1 rows of zeros above and below pad the top and
    bottom. Then the OH*RW pixels that kernel offset (i, j) meets, for all
    output pixels, are ONE contiguous run starting at ``row_start(i, j, RW, P)``:
    a view, not a copy. The last RW - OW entries of each output row (one, for
    a 3x3 kernel with P = 1) are junk read across a row boundary, to be cropped.
    The array is this thread's workspace under ``key`` (a second name for a second array of one
    chunk: the backward lays out dL/dy and x at once): its zeros are never written.
    """
    n, c, h, w = x.shape
    rw = row_width(w, kw, 1, padding)
    rows = workspace(get_array_module(x), (key, h, w, padding), (n, c, h + 2 * padding + 2, rw), x.dtype)
    rows[:, :, padding + 1 : padding + 1 + h, :w] = x
    return rows.reshape(n, c, -1)


def row_start(i, j, rw, padding):
    """Where padded pixel (i, j), the first that kernel offset (i, j) meets, sits in ``image_rows``."""
    return (i + 1) * rw + j - padding


def shifted(x_rows, i, j, oh, rw, padding, groups):
    """The view of x_rows (N, C, (H + 2P + 2) * RW) that kernel offset (i, j) meets: (N, G, Cg, OH*RW)."""
    n, c, _ = x_rows.shape
    start = row_start(i, j, rw, padding)
    return x_rows[:, :, start : start + oh * rw].reshape(n, groups, c // groups, oh * rw)


def bytes_per_image(rows, oh, rw, itemsize):
    """Bytes of one image's work arrays, to size the chunks: ``rows`` rows of OH*RW values each."""
    return rows * oh * rw * itemsize


def sum_of_shifted_products(x_rows, weight_offsets, oh, rw, padding, out):
    """out = sum over kernel offsets (i, j) of W[:, :, i, j] (Og, Cg) @ shifted(x_rows, i, j) (Cg, OH*RW), per group.

    The stride-1 convolution of one chunk, with the RW - OW junk entries of each row still in.
    Inputs: x_rows (B, C, (H + 2P + 2) * RW) from ``image_rows``, weight_offsets W as (KH, KW, G, Og, Cg).
    Writes out (B, G, Og, OH*RW); each product after the first goes to a work array and is added.
    """
    xp = get_array_module(x_rows)
    kh, kw, groups = weight_offsets.shape[:3]
    term = workspace(xp, "conv_forward_term", out.shape, out.dtype)
    # each term: (G, Og, Cg) @ (B, G, Cg, OH*RW) -> (B, G, Og, OH*RW); offset (0, 0) starts the sum
    xp.matmul(weight_offsets[0, 0], shifted(x_rows, 0, 0, oh, rw, padding, groups), out=out)
    for i, j in list(itertools.product(range(kh), range(kw)))[1:]:
        xp.matmul(weight_offsets[i, j], shifted(x_rows, i, j, oh, rw, padding, groups), out=term)
        out += term


def conv_forward_shifted_rows(x, weight, padding, groups):
    """Stride 1 on the CPU: y = sum over kernel offsets (i, j) of W[:, :, i, j] (Og, Cg) @ shifted(i, j) (Cg, OH*RW).

    Per group and image of a chunk, then the RW - OW junk entries of each row are cropped.
    Inputs: x (N, C, H, W), weight W (O, C/G, KH, KW). Returns: y (N, O, OH, OW), without bias.
    """
    xp = get_array_module(x, weight)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    oh, ow = output_size(h, kh, 1, padding), output_size(w, kw, 1, padding)
    rw = row_width(w, kw, 1, padding)
    y = xp.empty((n, o, oh, ow), dtype=x.dtype)
    weight_offsets = xp.ascontiguousarray(weight.transpose(2, 3, 0, 1)).reshape(kh, kw, groups, o // groups, cg)

    def run(start, stop):
        y_rows = workspace(xp, "conv_forward", (stop - start, groups, o // groups, oh * rw), y.dtype)
        x_rows = image_rows(x[start:stop], kh, kw, padding)  # (B, C, (H + 2P + 2) * RW)
        sum_of_shifted_products(x_rows, weight_offsets, oh, rw, padding, out=y_rows)  # (B, G, Og, OH*RW)
        y[start:stop] = y_rows.reshape(stop - start, o, oh, rw)[..., :ow]  # crop the junk entries

    rows_per_image = c + o + o  # rows of about OH*RW values: x_rows (C), y_rows (O), term (O)
    for_each_chunk(xp, n, bytes_per_image(rows_per_image, oh, rw, x.itemsize), run)
    return y


def conv_forward_im2col(x, weight, stride, padding, groups):
    """Any stride, and on the GPU: y = W (Og, K) @ cols (K, OH*OW), per image and group, written straight into y.

    Inputs: x (N, C, H, W), weight W (O, C/G, KH, KW). Returns: y (N, O, OH, OW), without bias.
    """
    xp = get_array_module(x, weight)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    y = xp.empty((n, o, oh, ow), dtype=x.dtype)
    weight_rows = weight.reshape(groups, og, cg * kh * kw)  # (G, Og, K)

    def run(start, stop):
        cols = columns(x[start:stop], kh, kw, stride, padding, groups)  # (B, G, K, OH*OW)
        # (G, Og, K) @ (B, G, K, OH*OW) -> (B, G, Og, OH*OW)
        xp.matmul(weight_rows, cols, out=y[start:stop].reshape(stop - start, groups, og, oh * ow))

    rows_per_image = c * kh * kw + o  # rows of OH*OW values: cols (G*K = C*KH*KW), y (O)
    for_each_chunk(xp, n, bytes_per_image(rows_per_image, oh, ow, x.itemsize), run)
    return y


def conv_forward(x, weight, stride, padding, groups):
    """y (N, O, OH, OW) from x (N, C, H, W) and W (O, C/G, KH, KW), no bias: shifted rows or im2col."""
    xp = get_array_module(x, weight)
    if xp is not np:
        return conv_forward_gpu(x, weight, stride, padding, groups)
    if uses_shifted_rows(xp, stride, weight.shape[1]):
        return conv_forward_shifted_rows(x, weight, padding, groups)
    return conv_forward_im2col(x, weight, stride, padding, groups)


# The weight gradients take the product with Cg (or K) rows, cols @ dL/dy^T, rather than its transpose
# dL/dy @ cols^T with Og rows: the same numbers. For the im2col form, whose K = Cg*KH*KW rows are many
# more than Og, BLAS ran it about 1.5x faster: measured once, when this form replaced dL/dy @ cols^T
# (commit c065eb6; README.md's speed section quotes it); not a row of ``python -m tinyse.bench``, whose
# ``conv3x3 fwd+bwd`` times the whole backward. The shifted-rows form (Cg rows) was not measured apart.
def weight_grad_products(x_rows, grad_t, kh, kw, oh, rw, padding):
    """sum over the images of a chunk of shifted(x_rows, i, j) (Cg, OH*RW) @ dL/dy^T (OH*RW, Og), per group and (i, j).

    Inputs: x_rows (B, C, (H + 2P + 2) * RW) from ``image_rows``; grad_t dL/dy (B, G, OH*RW, Og), zero at the
    RW - OW junk entries of each row, so that they add nothing. Returns (G, Cg, KH, KW, Og), a new array.
    The work array of the products, (B, KH, KW, G, Cg, Og), is as large as x_rows for 64 channels at 8x8,
    so the chunk sizes count it: with it, the chunks shrink to what fits the cache, and the weight gradient
    took 0.96 / 0.96 / 0.91 of its time at SE-ResNet-20's three stage shapes (process CPU time, one
    thread, A/B in one process, 2026-12-02, 2-core Intel Xeon).
    """
    xp = get_array_module(x_rows, grad_t)
    n, groups, _, og = grad_t.shape
    cg = x_rows.shape[1] // groups
    products = workspace(xp, "conv_weight_products", (n, kh, kw, groups, cg, og), grad_t.dtype)
    for i in range(kh):
        for j in range(kw):
            # (B, G, Cg, OH*RW) @ (B, G, OH*RW, Og) -> (B, G, Cg, Og)
            xp.matmul(shifted(x_rows, i, j, oh, rw, padding, groups), grad_t, out=products[:, i, j])
    return products.sum(axis=0).transpose(2, 3, 0, 1, 4)  # (G, Cg, KH, KW, Og)


MIN_PRODUCT_PIXELS = 128  # OH*RW below this: the weight gradient runs the images of a chunk one after another


def weight_grad_images_in_a_row(x, grad_out, k, padding, groups):
    """``weight_grad_products`` for small images (OH*RW < ``MIN_PRODUCT_PIXELS``, such as 8x8): one product per
    kernel offset for the whole chunk, shifted(i, j) (Cg, B*S*RW) @ dL/dy^T (B*S*RW, Og), instead of one per image.

    Each product per image sums over only OH*RW pixels (72 at 8x8), too few for BLAS to run fast. So here the
    images of a chunk go one after another in each channel's rows: rows RW wide as in ``image_rows``, and
    images S = H + P rows apart, so that the P zero rows after one image pad both it and the next, as the
    zeros after each row pad the next row. The view that kernel offset (i, j) meets is again one contiguous
    run, now through every image of the chunk, and dL/dy is laid out the same way, with zeros at the junk
    entries (the RW - OW after each row, and the S - OH rows after each image), so that BLAS adds up the
    whole chunk. Measured for 64 channels at 8x8 (batch 128, float32, 2 threads, A/B in one process,
    2026-12-02, 2-core Intel Xeon): the weight gradient in 0.79 of the time; at 16x16 it took 1.43x as
    long (272 pixels per image are enough), at 32x32 3.2x.
    Inputs: x (B, C, H, W), grad_out dL/dy (B, O, OH, OW), stride 1, P <= K - 1 (``input_grad_is_a_conv``).
    Returns the chunk's (G, Cg, K, K, Og), a new array.
    """
    xp = get_array_module(x, grad_out)
    b, c, h, w = x.shape
    o, oh, ow = grad_out.shape[1:]
    rw, rows_per_image = row_width(w, k, 1, padding), h + padding  # S = H + P >= OH, since P <= K - 1
    length = b * rows_per_image * rw  # of each product's inner dimension
    # P + 1 zero rows above the first image, as in image_rows, and room below the last for the largest offset
    all_rows = b * rows_per_image + padding + k + 2
    x_rows = workspace(xp, ("images_in_a_row", b, h, w, padding), (c, all_rows, rw), x.dtype)
    images = x_rows[:, padding + 1 : padding + 1 + b * rows_per_image].reshape(c, b, rows_per_image, rw)
    images[:, :, :h, :w] = x.transpose(1, 0, 2, 3)
    grad_rows = workspace(xp, ("images_in_a_row_grad", b, oh, ow), (o, b, rows_per_image, rw), x.dtype)
    grad_rows[:, :, :oh, :ow] = grad_out.transpose(1, 0, 2, 3)
    x_flat = x_rows.reshape(groups, c // groups, -1)
    grad_t = grad_rows.reshape(groups, o // groups, length).transpose(0, 2, 1)  # (G, B*S*RW, Og)
    products = xp.empty((k, k, groups, c // groups, o // groups), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            start = row_start(i, j, rw, padding)
            # (G, Cg, B*S*RW) @ (G, B*S*RW, Og) -> (G, Cg, Og)
            xp.matmul(x_flat[:, :, start : start + length], grad_t, out=products[i, j])
    return products.transpose(2, 3, 0, 1, 4)  # (G, Cg, KH, KW, Og)


def conv_weight_grad_shifted_rows(x, grad_out, weight_shape, padding, groups):
    """Stride 1 on the CPU: dL/dW[:, :, i, j] = (shifted(i, j) (Cg, OH*RW) @ dL/dy^T (OH*RW, Og))^T.

    Per group, summed over the images of a chunk, then over chunks: the input as kernel offset (i, j)
    met it, against the gradient of the outputs it made. dL/dy gets zeros at the RW - OW junk entries
    of each row, so they add nothing. (``conv_backward_shifted_rows`` does the same, with dL/dy laid
    out once for both gradients; this one serves the kernels that it cannot take.)
    Arguments and result as ``conv_weight_grad``.
    """
    xp = get_array_module(x, grad_out)
    n, o, oh, ow = grad_out.shape
    kh, kw = weight_shape[2:]
    og = o // groups
    rw = row_width(x.shape[3], kw, 1, padding)

    def run(start, stop):
        grad_rows = grad_out[start:stop]
        if rw != ow:  # zeros at the junk entries of each row, so they add nothing
            grad_rows = workspace(xp, ("conv_weight_grad", ow), (stop - start, o, oh, rw), grad_out.dtype)
            grad_rows[..., :ow] = grad_out[start:stop]
        grad_t = grad_rows.reshape(stop - start, groups, og, oh * rw).transpose(0, 1, 3, 2)  # (B, G, OH*RW, Og)
        x_rows = image_rows(x[start:stop], kh, kw, padding)  # (B, C, (H + 2P + 2) * RW)
        return weight_grad_products(x_rows, grad_t, kh, kw, oh, rw, padding)  # (G, Cg, KH, KW, Og)

    rows_per_image = x.shape[1] + o  # rows of about OH*RW values: x_rows (C), dL/dy with junk entries (O)
    products_bytes = kh * kw * weight_shape[1] * o * x.itemsize  # weight_grad_products' work array, per image
    partial_sums = for_each_chunk(xp, n, bytes_per_image(rows_per_image, oh, rw, x.itemsize) + products_bytes, run)
    return sum(partial_sums).transpose(0, 4, 1, 2, 3).reshape(weight_shape)  # (G, Og, Cg, KH, KW) -> (O, Cg, KH, KW)


def conv_weight_grad_im2col(x, grad_out, weight_shape, stride, padding, groups):
    """Any stride, and on the GPU: dL/dW = (cols (K, OH*OW) @ dL/dy^T (OH*OW, Og))^T.

    Per group, summed over the images of a chunk, then over chunks.
    Arguments and result as ``conv_weight_grad``.
    """
    xp = get_array_module(x, grad_out)
    n, o, oh, ow = grad_out.shape
    cg, kh, kw = weight_shape[1:]
    og = o // groups

    def run(start, stop):
        grad_y = grad_out[start:stop].reshape(stop - start, groups, og, oh * ow)  # (B, G, Og, OH*OW)
        grad_t = grad_y.transpose(0, 1, 3, 2)  # (B, G, OH*OW, Og)
        cols = columns(x[start:stop], kh, kw, stride, padding, groups)  # (B, G, K, OH*OW)
        return (cols @ grad_t).sum(axis=0).reshape(groups, cg, kh, kw, og)  # (G, Cg, KH, KW, Og)

    rows_per_image = x.shape[1] * kh * kw + o  # rows of OH*OW values: cols (C*KH*KW), dL/dy (O)
    partial_sums = for_each_chunk(xp, n, bytes_per_image(rows_per_image, oh, ow, x.itemsize), run)
    return sum(partial_sums).transpose(0, 4, 1, 2, 3).reshape(weight_shape)  # (G, Og, Cg, KH, KW) -> (O, Cg, KH, KW)


def conv_weight_grad(x, grad_out, weight_shape, stride, padding, groups):
    """dL/dW, by shifted rows or im2col (``uses_shifted_rows``).

    Inputs: x (N, C, H, W), grad_out dL/dy (N, O, OH, OW), weight_shape (O, C/G, KH, KW).
    Returns: dL/dW (O, C/G, KH, KW), summed over the batch.
    """
    if uses_shifted_rows(get_array_module(x, grad_out), stride, weight_shape[1]):
        return conv_weight_grad_shifted_rows(x, grad_out, weight_shape, padding, groups)
    return conv_weight_grad_im2col(x, grad_out, weight_shape, stride, padding, groups)


def flipped_transposed(weight, groups):
    """W (O, C/G, KH, KW) -> W' (C, O/G, KH, KW), W'[c, o, i, j] = W[o, c, KH-1-i, KW-1-j] within each group."""
    o, cg, kh, kw = weight.shape
    per_group = weight.reshape(groups, o // groups, cg, kh, kw).transpose(0, 2, 1, 3, 4)  # (G, Cg, Og, KH, KW)
    flipped = get_array_module(weight).ascontiguousarray(per_group[..., ::-1, ::-1])
    return flipped.reshape(groups * cg, o // groups, kh, kw)


def conv_input_grad_flipped(grad_out, weight, padding, groups):
    """Stride 1, square kernel: dL/dx = conv(dL/dy, flipped_transposed(W)), padding KH - 1 - P.

    Pixel x[c, r, s] met output pixel (r + P - i, s + P - j) through W[o, c, i, j], so
    dL/dx[c, r, s] = sum over (o, i, j) of W[o, c, i, j] * dL/dy[o, r + P - i, s + P - j]:
    a convolution of dL/dy, padded by KH - 1 - P, with W' = W flipped in space and transposed in
    channels; its output is (H + 2P - KH + 1) + 2(KH - 1 - P) - KH + 1 = H high. The same numbers
    as col2im(W^T dL/dy), without col2im; on the CPU it runs as shifted rows.
    Inputs: grad_out dL/dy (N, O, OH, OW), weight W (O, C/G, K, K). Returns: dL/dx (N, C, H, W).
    """
    kh = weight.shape[2]
    return conv_forward(grad_out, flipped_transposed(weight, groups), 1, kh - 1 - padding, groups)


def conv_input_grad_col2im(grad_out, weight, x_shape, stride, padding, groups):
    """Any stride and kernel: dL/dx = col2im(W^T (K, Og) @ dL/dy (Og, OH*OW)), per image and group, in chunks.

    Inputs: grad_out dL/dy (N, O, OH, OW), weight W (O, C/G, KH, KW), x_shape (N, C, H, W).
    Returns: dL/dx (N, C, H, W).
    """
    o, cg, kh, kw = weight.shape
    xp = get_array_module(grad_out, weight)
    n, _, oh, ow = grad_out.shape
    weight_cols = weight.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)  # (G, K, Og)
    grad_x = xp.empty(x_shape, dtype=grad_out.dtype)

    def run(start, stop):
        grad_y = grad_out[start:stop].reshape(stop - start, groups, o // groups, oh * ow)  # (B, G, Og, OH*OW)
        # (G, K, Og) @ (B, G, Og, OH*OW) -> (B, G, K, OH*OW), read as (B, C, KH, KW, OH, OW)
        grad_cols = (weight_cols @ grad_y).reshape(stop - start, x_shape[1], kh, kw, oh, ow)
        grad_x[start:stop] = col2im(grad_cols, (stop - start, *x_shape[1:]), stride, padding)

    rows_per_image = x_shape[1] * kh * kw + o  # rows of OH*OW values: grad_cols (C*KH*KW), dL/dy (O)
    for_each_chunk(xp, n, bytes_per_image(rows_per_image, oh, ow, grad_out.itemsize), run)
    return grad_x


def input_grad_is_a_conv(kernel, stride, padding):
    """Whether dL/dx can be the flipped convolution of ``conv_input_grad_flipped``, for a (KH, KW) kernel.

    It needs: stride 1 (at stride S, dL/dy would need S - 1 zeros between its pixels); padding
    KH - 1 - P >= 0 (conv_forward pads, it cannot crop); and KH == KW, because it needs KH - 1 - P
    rows of zeros above and below dL/dy but KW - 1 - P columns left and right, while conv_forward
    (pad_hw, image_rows) takes ONE padding for both axes. With KH - 1 - P on both, a non-square
    kernel would give an output W + 2(KH - KW) wide, its columns misplaced.
    """
    kh, kw = kernel
    return stride == 1 and kh == kw and padding <= kh - 1


def conv_input_grad(grad_out, weight, x_shape, stride, padding, groups):
    """dL/dx (N, C, H, W) from dL/dy (N, O, OH, OW) and W (O, C/G, KH, KW): a flipped conv or col2im."""
    if input_grad_is_a_conv(weight.shape[2:], stride, padding):
        return conv_input_grad_flipped(grad_out, weight, padding, groups)
    return conv_input_grad_col2im(grad_out, weight, x_shape, stride, padding, groups)


def conv_backward_shifted_rows(x, weight, grad_out, padding, groups, needs_x=True, needs_weight=True):
    """Stride 1 on the CPU, where dL/dx is a conv (``input_grad_is_a_conv``): both gradients, chunk by chunk.

    One layout of dL/dy serves both. ``image_rows`` of dL/dy with padding P' = K - 1 - P is what the
    flipped convolution (``conv_input_grad_flipped``) reads its shifted views from; and its rows
    P' + 1 to P' + OH hold each row of dL/dy followed by zeros, RW = W + P wide in all (the rows of x
    are as wide), which is dL/dy with zeros at the junk entries, as ``weight_grad_products`` needs.
    So dL/dy is copied once, not once for each gradient, and its chunk is still in the cache when
    the second gradient reads it. Conv fwd+bwd (the op, as the bench row ``conv3x3 fwd+bwd``), A/B in
    one process against the two gradients apart (``conv_input_grad``, then ``conv_weight_grad``),
    2026-12-02, 2-core Intel Xeon, at SE-ResNet-20's three stage shapes: 0.97 / 0.92 / 0.95 of the
    time on one thread; about even on two (1.04 / 0.98 / 0.99), where larger chunks would win (0.93 /
    0.97 / 0.87 of the backward with CACHE_BYTES 4 MB), but the whole SE-ResNet-20 step took 0.98 of
    its time with 3 MB and 1.00 with 4 MB: too little to leave the 2 MB that README.md's machine
    measured best.
    Inputs: x (N, C, H, W), weight W (O, C/G, K, K), grad_out dL/dy (N, O, OH, OW).
    Returns: (dL/dx (N, C, H, W) or None, dL/dW (O, C/G, K, K) or None), as ``needs_x`` and ``needs_weight`` ask.
    """
    xp = get_array_module(x, weight, grad_out)
    n, c, h, w = x.shape
    o, cg, k, _ = weight.shape
    og = o // groups
    oh = grad_out.shape[2]
    grad_padding = k - 1 - padding  # P'
    rw = row_width(w, k, 1, padding)  # = W + P = OW + P', the rows of x and of dL/dy alike
    flipped_offsets = xp.ascontiguousarray(flipped_transposed(weight, groups).transpose(2, 3, 0, 1))
    flipped_offsets = flipped_offsets.reshape(k, k, groups, cg, og)  # W' as (K, K, G, Cg, Og)
    grad_x = xp.empty(x.shape, dtype=x.dtype) if needs_x else None

    def run(start, stop):
        grad_rows = image_rows(grad_out[start:stop], k, k, grad_padding, key="grad_rows")  # (B, O, (OH+2P'+2)*RW)
        if needs_x:  # the flipped convolution, as conv_forward_shifted_rows computes it
            grad_x_rows = workspace(xp, "conv_forward", (stop - start, groups, cg, h * rw), x.dtype)
            sum_of_shifted_products(grad_rows, flipped_offsets, h, rw, grad_padding, out=grad_x_rows)
            grad_x[start:stop] = grad_x_rows.reshape(stop - start, c, h, rw)[..., :w]  # crop the junk entries
        if needs_weight and oh * rw < MIN_PRODUCT_PIXELS:  # small images
            return weight_grad_images_in_a_row(x[start:stop], grad_out[start:stop], k, padding, groups)
        if needs_weight:
            first = (grad_padding + 1) * rw  # rows P' + 1 ... P' + OH: dL/dy, zeros at the junk entries
            grad_y = grad_rows[:, :, first : first + oh * rw].reshape(stop - start, groups, og, oh * rw)
            x_rows = image_rows(x[start:stop], k, k, padding)  # (B, C, (H + 2P + 2) * RW)
            return weight_grad_products(x_rows, grad_y.transpose(0, 1, 3, 2), k, k, oh, rw, padding)

    # rows of about OH*RW values: dL/dy's (O); for dL/dx its rows and the work array of the sum (2C); x's (C)
    rows_per_image = o + (2 * c if needs_x else 0) + (c if needs_weight else 0)
    image_bytes = bytes_per_image(rows_per_image, oh, rw, x.itemsize)
    if needs_weight:  # and weight_grad_products' (KH, KW, G, Cg, Og) per image
        image_bytes += k * k * cg * o * x.itemsize
    partial_sums = for_each_chunk(xp, n, image_bytes, run)
    grad_weight = None
    if needs_weight:  # (G, Cg, KH, KW, Og) summed over chunks -> (G, Og, Cg, KH, KW) -> (O, Cg, KH, KW)
        grad_weight = sum(partial_sums).transpose(0, 4, 1, 2, 3).reshape(weight.shape)
    return grad_x, grad_weight


def conv_backward(x, weight, grad_out, stride, padding, groups, needs_x=True, needs_weight=True):
    """(dL/dx, dL/dW), each None unless asked for: both from one layout of dL/dy where the CPU's shifted
    rows can (``conv_backward_shifted_rows``), else ``conv_input_grad`` and ``conv_weight_grad`` apart.

    Inputs: x (N, C, H, W), weight W (O, C/G, KH, KW), grad_out dL/dy (N, O, OH, OW).
    """
    xp = get_array_module(x, weight, grad_out)
    if xp is not np:
        return conv_backward_gpu(x, weight, grad_out, stride, padding, groups, needs_x, needs_weight)
    if uses_shifted_rows(xp, stride, weight.shape[1]) and input_grad_is_a_conv(weight.shape[2:], stride, padding):
        return conv_backward_shifted_rows(x, weight, grad_out, padding, groups, needs_x, needs_weight)
    grad_x = conv_input_grad(grad_out, weight, x.shape, stride, padding, groups) if needs_x else None
    grad_weight = conv_weight_grad(x, grad_out, weight.shape, stride, padding, groups) if needs_weight else None
    return grad_x, grad_weight


class Conv2d(Function):
    """y[n, o] = b[o] + sum over c in o's group, i, j of W[o, c, i, j] * x_pad[n, c, S*oh + i, S*ow + j].

    The gradients are those of ``conv2d_naive_backward``:
        dL/dW[o, c, i, j] = sum over (n, r, s) of dL/dy[n, o, r, s] * x_pad[n, c, S r + i, S s + j]
        dL/dx = col2im(W^T dL/dy)                dL/db[o] = sum over (n, r, s) of dL/dy[n, o, r, s]
    Shapes: x (N, C, H, W), W (O, C/G, KH, KW), b (O,) or None -> y (N, O, OH, OW).
    """

    fresh_input_grads = True  # each gradient is a new array (the flipped conv's output, col2im's, a sum)

    def __init__(self, stride=1, padding=0, groups=1):
        self.stride, self.padding, self.groups = stride, padding, groups

    def forward(self, x, weight, bias=None):
        bias_shape = None if bias is None else bias.shape
        check_conv2d(x.shape, weight.shape, bias_shape, self.stride, self.padding, self.groups)
        self.x, self.weight = x, weight
        y = conv_forward(x, weight, self.stride, self.padding, self.groups)
        if bias is not None:
            y += bias.reshape(1, -1, 1, 1)
        return y

    def backward(self, grad_out):
        needs = self.needs_input_grad  # (x, weight, bias), or (x, weight) when called without a bias
        grad_x, grad_weight = conv_backward(
            self.x, self.weight, grad_out, self.stride, self.padding, self.groups, needs[0], needs[1]
        )
        grad_bias = grad_out.sum(axis=(0, 2, 3)) if len(needs) > 2 and needs[2] else None
        return grad_x, grad_weight, grad_bias


# --- 5. the GPU: one product over the batch, and the CUDA im2col and col2im --------------------------------
def im2col_batch_folded(x, kh, kw, stride, padding):
    """im2col with the batch folded into the columns: x (N, C, H, W) -> cols (C, KH, KW, N, OH, OW), GPU only.

        cols[c, i, j, n, r, s] = x_pad[n, c, S r + i, S s + j]

    Read as (C*KH*KW, N*OH*OW): column (n, r, s) holds what output pixel (r, s) of image n sees.
    """
    n, c, h, w = x.shape
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    xp = get_array_module(x)
    cols = xp.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
    kernel = elementwise_kernel(f"raw T x, int32 n, int32 c, {SIZES}", "T cols", IM2COL_BATCH_CUDA,
                                "tinyse_im2col_batch")
    return kernel(xp.ascontiguousarray(x).ravel(), n, c, h, w, kh, kw, oh, ow, *pair(stride), padding, cols)


def col2im_batch_folded(cols, x_shape, stride, padding):
    """Adjoint of ``im2col_batch_folded``: cols (C, KH, KW, N, OH, OW) -> x (N, C, H, W), GPU only."""
    n, c, h, w = x_shape
    _, kh, kw, _, oh, ow = cols.shape
    xp = get_array_module(cols)
    kernel = elementwise_kernel(f"raw T cols, int32 n, int32 c, {SIZES}", "T x", COL2IM_BATCH_CUDA,
                                "tinyse_col2im_batch")
    x = xp.empty((n, c, h, w), dtype=cols.dtype)
    return kernel(xp.ascontiguousarray(cols).ravel(), n, c, h, w, kh, kw, oh, ow, *pair(stride), padding, x)


def conv_forward_gpu(x, weight, stride, padding, groups):
    """y = W (G, Og, K) @ cols (G, K, N*OH*OW): one GEMM per group for the whole batch.

    2 kernel launches: im2col, the product. The product is y in (O, N, OH, OW) order; it is returned as
    the (N, O, OH, OW) view of that memory, not copied into NCHW order: the batch norm after it reads any
    layout, and hands back dL/dy in the same one, which is the layout the backward's products want.
    """
    xp = get_array_module(x, weight)
    n = x.shape[0]
    o, cg, kh, kw = weight.shape
    cols = im2col_batch_folded(x, kh, kw, stride, padding)  # (C, KH, KW, N, OH, OW)
    oh, ow = cols.shape[4:]
    y = xp.matmul(weight.reshape(groups, o // groups, cg * kh * kw), cols.reshape(groups, cg * kh * kw, -1))
    return y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3)


def conv_backward_gpu(x, weight, grad_out, stride, padding, groups, needs_x=True, needs_weight=True):
    """(dL/dx, dL/dW), each None unless asked for, as ``conv_backward``: over the whole batch at once,

        dL/dW = dL/dy (G, Og, N*OH*OW) @ cols^T (G, N*OH*OW, K)        one GEMM per group
        dL/dx = col2im(W^T (G, K, Og) @ dL/dy (G, Og, N*OH*OW))         one GEMM per group

    4 kernel launches for both: im2col again (cols are not kept: at batch 128 the first stage's would
    take 75 MB a layer), the two products, col2im; and a fifth, dL/dy copied into (O, N, OH, OW) order,
    unless it is laid out so already (as batch norm's backward hands it over, see ``conv_forward_gpu``).
    """
    xp = get_array_module(x, weight, grad_out)
    o, cg, kh, kw = weight.shape
    grad_rows = xp.ascontiguousarray(grad_out.transpose(1, 0, 2, 3)).reshape(groups, o // groups, -1)
    grad_weight = grad_x = None
    if needs_weight:
        cols = im2col_batch_folded(x, kh, kw, stride, padding).reshape(groups, cg * kh * kw, -1)
        grad_weight = xp.matmul(grad_rows, cols.transpose(0, 2, 1)).reshape(weight.shape)
    if needs_x:
        weight_t = weight.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)  # (G, K, Og)
        oh, ow = grad_out.shape[2:]
        grad_cols = xp.matmul(weight_t, grad_rows).reshape(x.shape[1], kh, kw, x.shape[0], oh, ow)
        grad_x = col2im_batch_folded(grad_cols, x.shape, stride, padding)
    return grad_x, grad_weight


# --- 5. the CUDA im2col and col2im ---------------------------------------------------------------------
# im2col and col2im above call these on CuPy arrays (Python looks the names up when they run, so they
# may come last): one CUDA thread per value written (CuPy ElementwiseKernels; ``i`` is the thread's index
# into the output). im2col: entry i of cols (N, C, KH, KW, OH, OW) reads the input pixel it copies, or
# writes 0 in the padding. col2im: pixel i of dL/dx (N, C, H, W) gathers the columns that copied it, so no
# two threads write to one place.
IM2COL_CUDA = """
    ptrdiff_t t = i;
    const int ox = t % ow; t /= ow;
    const int oy = t % oh; t /= oh;
    const int j = t % kw; t /= kw;
    const int k = t % kh; t /= kh;                      // t = n * C + c; the kernel offset is (k, j)
    const int row = oy * sh + k - p, col = ox * sw + j - p;
    cols = (row >= 0 && row < h && col >= 0 && col < w) ? x[(t * h + row) * w + col] : (T)0;
"""
COL2IM_CUDA = """
    ptrdiff_t t = i;
    const int col = t % w; t /= w;
    const int row = t % h; t /= h;                      // t = n * C + c
    T total = 0;
    for (int k = 0; k < kh; ++k) {
        const int dy = row + p - k;                     // = oy * sh for the output row oy that met it
        if (dy < 0 || dy % sh != 0 || dy / sh >= oh) continue;
        for (int j = 0; j < kw; ++j) {
            const int dx = col + p - j;
            if (dx < 0 || dx % sw != 0 || dx / sw >= ow) continue;
            total += cols[(((t * kh + k) * kw + j) * oh + dy / sh) * ow + dx / sw];
        }
    }
    x = total;
"""
SIZES = "int32 h, int32 w, int32 kh, int32 kw, int32 oh, int32 ow, int32 sh, int32 sw, int32 p"
# The same with the batch folded into the columns: cols (C, KH, KW, N, OH, OW) (the parameters add n and c).
IM2COL_BATCH_CUDA = """
    ptrdiff_t t = i;
    const int ox = t % ow; t /= ow;
    const int oy = t % oh; t /= oh;
    const int image = t % n; t /= n;
    const int j = t % kw; t /= kw;
    const int k = t % kh; t /= kh;                      // t = the channel
    const int row = oy * sh + k - p, col = ox * sw + j - p;
    cols = (row >= 0 && row < h && col >= 0 && col < w) ? x[(((ptrdiff_t)image * c + t) * h + row) * w + col] : (T)0;
"""
COL2IM_BATCH_CUDA = """
    ptrdiff_t t = i;
    const int col = t % w; t /= w;
    const int row = t % h; t /= h;
    const int channel = t % c, image = t / c;
    T total = 0;
    for (int k = 0; k < kh; ++k) {
        const int dy = row + p - k;
        if (dy < 0 || dy % sh != 0 || dy / sh >= oh) continue;
        for (int j = 0; j < kw; ++j) {
            const int dx = col + p - j;
            if (dx < 0 || dx % sw != 0 || dx / sw >= ow) continue;
            const ptrdiff_t column = ((ptrdiff_t)image * oh + dy / sh) * ow + dx / sw;   // (n, r, s)
            total += cols[((channel * kh + k) * kw + j) * ((ptrdiff_t)n * oh * ow) + column];
        }
    }
    x = total;
"""
