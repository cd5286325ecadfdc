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

Fast version (``Conv2d``), on a chunk of a few images at a time, whose work
    arrays fit in a core's cache, on every core (``tinyse.parallel``):
    - stride 1, on the CPU: no im2col. ``image_rows`` lays each image out in rows RW = W + P wide
      (P zeros after each row pad both it and the next), flattened; the pixels that
      kernel offset (i, j) meets, for all output pixels at once, are then one contiguous
      run of it, a view (``shifted``). So
          y = sum over (i, j) of W[:, :, i, j] (Og, Cg) @ shifted(i, j) (Cg, OH*RW)
          dL/dW[:, :, i, j] = sum over images of (shifted(i, j) @ dL/dy^T)^T
          dL/dx = the same convolution of dL/dy with the kernel flipped in space and
                  transposed in channels, padding KH - 1 - P (equal to col2im(W^T dL/dy))
      and the RW - OW junk entries at the end of each output row are cropped.
      Measured in ``python -m tinyse.bench``: copying im2col's 9 columns took longer than
      the products, and memory-bound copies do not get faster on a second core, while the
      products do.
    - other strides, and on the GPU (``uses_shifted_rows``): im2col copies each receptive
      field into a column, cols (K, OH*OW) per image, y[n] = W (Og, K) @ cols[n],
      dL/dW = sum over n of dL/dy[n] @ cols[n]^T, and col2im adds the columns of
      W^T @ dL/dy back onto the pixels they came from.
Obvious version (``conv2d_naive``): a loop over output pixels, kept for the
    lessons and for a test that holds the two equal.
"""
import numpy as np

from tinyse.backend import elementwise_kernel, get_array_module
from tinyse.parallel import for_each_chunk, workspace
from tinyse.tensor import Function


def output_size(size, kernel, stride, padding):
    """Output length along one axis: (size + 2 padding - kernel) // stride + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def pair(value):
    """One number for both spatial axes -> (value, value); a pair (tuple or list) stays a pair."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def window(i, j, stride, oh, ow):
    """Index of the (OH, OW) input pixels that kernel offset (i, j) meets, in a padded NCHW array.

    ``stride`` is S, or (SH, SW) per axis.
    """
    sh, sw = pair(stride)
    return (slice(None), slice(None), slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))


def pad_hw(x, padding, value=0):
    """Pad the two spatial axes of an NCHW array by ``padding`` on every side."""
    if padding == 0:
        return x
    width = ((0, 0), (0, 0), (padding, padding), (padding, padding))
    return get_array_module(x).pad(x, width, constant_values=value)


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
    """Clear errors, naming the shapes, for every way conv2d's arguments can disagree."""
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


# The same two functions on the GPU, one CUDA thread per value written (CuPy ElementwiseKernels; ``i`` is the
# thread's index into the output). im2col: entry i of cols (N, C, KH, KW, OH, OW) reads the input pixel it
# copies, or writes 0 in the padding. col2im: pixel i of dL/dx (N, C, H, W) gathers the columns that copied it,
# so no two threads write to one place.
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


def im2col(x, kh, kw, stride, padding):
    """Copy every (KH, KW) receptive field of x (N, C, H, W) into cols (N, C, KH, KW, OH, OW)."""
    n, c, h, w = x.shape
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    xp = get_array_module(x)
    cols = xp.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    if xp is not np:
        kernel = elementwise_kernel(f"raw T x, {SIZES}", "T cols", IM2COL_CUDA, "tinyse_im2col")
        return kernel(xp.ascontiguousarray(x).ravel(), h, w, kh, kw, oh, ow, *pair(stride), padding, cols)
    x = pad_hw(x, padding)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[window(i, j, stride, oh, ow)]
    return cols


def col2im(cols, x_shape, stride, padding):
    """Adjoint of im2col: add each column of cols (N, C, KH, KW, OH, OW) back onto the pixels it came from."""
    n, c, h, w = x_shape
    _, _, kh, kw, oh, ow = cols.shape
    xp = get_array_module(cols)
    if xp is not np:
        kernel = elementwise_kernel(f"raw T cols, {SIZES}", "T x", COL2IM_CUDA, "tinyse_col2im")
        x = xp.empty((n, c, h, w), dtype=cols.dtype)
        return kernel(xp.ascontiguousarray(cols).ravel(), h, w, kh, kw, oh, ow, *pair(stride), padding, x)
    x = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            x[window(i, j, stride, oh, ow)] += cols[:, :, i, j]
    return x[:, :, padding : padding + h, padding : padding + w]


def row_width(width, kw, stride, padding):
    """RW, the width of an output row in the products: max(W + P, OW) for stride 1 (``image_rows``), else OW."""
    ow = output_size(width, kw, stride, padding)
    return max(width + padding, ow) if stride == 1 else ow


def uses_shifted_rows(xp, stride):
    """Which fast version runs: the shifted row views on the CPU at stride 1; im2col everywhere else.

    On the GPU, im2col is one CUDA kernel and the product one batched call, where the shifted
    views would take 9 products, each on a copy (cuBLAS wants contiguous operands), and 8 additions.
    """
    return stride == 1 and xp is np


def image_rows(x, kh, kw, padding):
    """x (N, C, H, W) as flat rows for the stride-1 shifted products: (N, C, (H + 2P + 2) * RW).

    Each image row is laid out RW = max(W + P, OW) wide: its W pixels, then at
    least P zeros. Those zeros serve as the right padding of one row and, read
    past the row's end, as the left padding of the next, so no other padding
    columns are needed; P + 1 rows of zeros above and below pad the top and
    bottom. Then the OH*RW pixels that kernel offset (i, j) meets, for all
    output pixels, are ONE contiguous run starting at ``row_start(i, j, RW, P)``:
    a view, not a copy. The last RW - OW entries of each output row (one, for
    a 3x3 kernel with P = 1) are junk read across a row boundary, to be cropped.
    The array is this thread's workspace: its zeros are never written.
    """
    n, c, h, w = x.shape
    rw = row_width(w, kw, 1, padding)
    rows = workspace(get_array_module(x), ("image_rows", h, w, padding), (n, c, h + 2 * padding + 2, rw), x.dtype)
    rows[:, :, padding + 1 : padding + 1 + h, :w] = x
    return rows.reshape(n, c, -1)


def row_start(i, j, rw, padding):
    """Where padded pixel (i, j), the first that kernel offset (i, j) meets, sits in ``image_rows``."""
    return (i + 1) * rw + j - padding


def shifted(x_rows, i, j, oh, rw, padding, groups):
    """The (N, G, Cg, OH*RW) view of ``image_rows`` that kernel offset (i, j) meets."""
    n, c, _ = x_rows.shape
    start = row_start(i, j, rw, padding)
    return x_rows[:, :, start : start + oh * rw].reshape(n, groups, c // groups, oh * rw)


def columns(x, kh, kw, stride, padding, groups):
    """im2col of a chunk as the matrices the strided products need: (N, G, K, OH*OW)."""
    n, c = x.shape[:2]
    cols = im2col(x, kh, kw, stride, padding)
    return cols.reshape(n, groups, c // groups * kh * kw, -1)


def bytes_per_image(rows, oh, rw, itemsize):
    """Work arrays of one image in a chunk: ``rows`` rows of OH*RW values (inputs, columns, products)."""
    return rows * oh * rw * itemsize


def conv_forward(x, weight, stride, padding, groups):
    """y (N, O, OH, OW), in chunks of the batch (no bias).

    Shifted rows (CPU, stride 1): y = sum over offsets (i, j) of W[:, :, i, j] (Og, Cg) @ shifted(i, j)
    (Cg, OH*RW), per group. Otherwise: y = W (Og, K) @ cols (K, OH*OW), per image and group.
    """
    xp = get_array_module(x, weight)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    shifted_rows = uses_shifted_rows(xp, stride)
    rw = row_width(w, kw, stride, padding) if shifted_rows else ow
    y = xp.empty((n, o, oh, ow), dtype=x.dtype)
    if shifted_rows:
        weight_offsets = xp.ascontiguousarray(weight.transpose(2, 3, 0, 1)).reshape(kh, kw, groups, og, cg)
    else:
        weight_rows = weight.reshape(groups, og, cg * kh * kw)  # (G, Og, K)

    def run(start, stop):
        if not shifted_rows:  # straight into y: (G, Og, K) @ (B, G, K, OH*OW) -> (B, G, Og, OH*OW)
            cols = columns(x[start:stop], kh, kw, stride, padding, groups)
            xp.matmul(weight_rows, cols, out=y[start:stop].reshape(stop - start, groups, og, oh * ow))
            return
        y_rows = workspace(xp, "conv_forward", (stop - start, groups, og, oh * rw), y.dtype)
        term = workspace(xp, "conv_forward_term", y_rows.shape, y.dtype)
        x_rows = image_rows(x[start:stop], kh, kw, padding)
        for i in range(kh):
            for j in range(kw):
                # (G, Og, Cg) @ (B, G, Cg, OH*RW) -> (B, G, Og, OH*RW)
                xp.matmul(weight_offsets[i, j], shifted(x_rows, i, j, oh, rw, padding, groups),
                          out=term if i or j else y_rows)
                if i or j:
                    y_rows += term
        y[start:stop] = y_rows.reshape(stop - start, o, oh, rw)[..., :ow]  # crop the junk entries

    work_rows = c + 2 * o if shifted_rows else c * kh * kw + o
    for_each_chunk(xp, n, bytes_per_image(work_rows, oh, rw, x.itemsize), run)
    return y


def conv_weight_grad(x, grad_out, weight_shape, stride, padding, groups):
    """dL/dW (O, C/G, KH, KW), summed over the images of a chunk, then over chunks.

    Shifted rows (CPU, stride 1): dL/dW[:, :, i, j] = shifted(i, j) (Cg, OH*RW) @ dL/dy^T (OH*RW, Og),
    transposed, per group: the input as kernel offset (i, j) met it, against the gradient of the
    outputs it made. Otherwise: dL/dW = (cols (K, OH*OW) @ dL/dy^T (OH*OW, Og))^T.
    Both take the tall product (Cg or K rows) rather than its transpose (Og rows): the same
    numbers, but BLAS runs the tall form about 1.5x faster when Og is small (measured).
    """
    xp = get_array_module(x, grad_out)
    n, o, oh, ow = grad_out.shape
    cg, kh, kw = weight_shape[1:]
    og = o // groups
    shifted_rows = uses_shifted_rows(xp, stride)
    rw = row_width(x.shape[3], kw, stride, padding) if shifted_rows else ow

    def run(start, stop):
        grad_rows = grad_out[start:stop]
        if rw != ow:  # zeros at the junk entries of each row, so they add nothing
            grad_rows = workspace(xp, ("conv_weight_grad", ow), (stop - start, o, oh, rw), grad_out.dtype)
            grad_rows[..., :ow] = grad_out[start:stop]
        grad_t = grad_rows.reshape(stop - start, groups, og, oh * rw).transpose(0, 1, 3, 2)  # (B, G, OH*RW, Og)
        if not shifted_rows:
            cols = columns(x[start:stop], kh, kw, stride, padding, groups)  # (B, G, K, OH*OW)
            return (cols @ grad_t).sum(axis=0).reshape(groups, cg, kh, kw, og)  # (G, Cg, KH, KW, Og)
        x_rows = image_rows(x[start:stop], kh, kw, padding)
        products = workspace(xp, "conv_weight_products", (stop - start, kh, kw, groups, cg, og), grad_out.dtype)
        for i in range(kh):
            for j in range(kw):
                xp.matmul(shifted(x_rows, i, j, oh, rw, padding, groups), grad_t, out=products[:, i, j])
        return products.sum(axis=0).transpose(2, 3, 0, 1, 4)  # (G, Cg, KH, KW, Og)

    work_rows = x.shape[1] + o if shifted_rows else x.shape[1] * kh * kw + o
    partial_sums = for_each_chunk(xp, n, bytes_per_image(work_rows, oh, rw, x.itemsize), run)
    return sum(partial_sums).transpose(0, 4, 1, 2, 3).reshape(weight_shape)  # (G, Og, Cg, KH, KW) -> (O, Cg, KH, KW)


def flipped_transposed(weight, groups):
    """W (O, C/G, KH, KW) -> W' (C, O/G, KH, KW), W'[c, o, i, j] = W[o, c, KH-1-i, KW-1-j] within each group."""
    o, cg, kh, kw = weight.shape
    per_group = weight.reshape(groups, o // groups, cg, kh, kw).transpose(0, 2, 1, 3, 4)  # (G, Cg, Og, KH, KW)
    flipped = get_array_module(weight).ascontiguousarray(per_group[..., ::-1, ::-1])
    return flipped.reshape(groups * cg, o // groups, kh, kw)


def conv_input_grad(grad_out, weight, x_shape, stride, padding, groups):
    """dL/dx (N, C, H, W): col2im(W^T @ dL/dy), or for stride 1 the same as a convolution of dL/dy."""
    o, cg, kh, kw = weight.shape
    if stride == 1 and kh == kw and padding <= kh - 1:
        return conv_forward(grad_out, flipped_transposed(weight, groups), 1, kh - 1 - padding, groups)
    xp = get_array_module(grad_out, weight)
    n, _, oh, ow = grad_out.shape
    weight_cols = weight.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)  # (G, K, Og)
    grad_x = xp.empty(x_shape, dtype=grad_out.dtype)

    def run(start, stop):
        grad_y = grad_out[start:stop].reshape(stop - start, groups, o // groups, oh * ow)
        grad_cols = (weight_cols @ grad_y).reshape(stop - start, x_shape[1], kh, kw, oh, ow)
        grad_x[start:stop] = col2im(grad_cols, (stop - start,) + tuple(x_shape[1:]), stride, padding)

    for_each_chunk(xp, n, bytes_per_image(x_shape[1] * kh * kw + o, oh, ow, grad_out.itemsize), run)
    return grad_x


class Conv2d(Function):
    """y[n, o] = b[o] + sum over c in o's group, i, j of W[o, c, i, j] * x_pad[n, c, S*oh + i, S*ow + j].

    Shapes: x (N, C, H, W), W (O, C/G, KH, KW), b (O,) or None -> y (N, O, OH, OW).
    """

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
        grad_x = grad_weight = grad_bias = None
        if self.needs_input_grad[0]:
            grad_x = conv_input_grad(grad_out, self.weight, self.x.shape, self.stride, self.padding, self.groups)
        if self.needs_input_grad[1]:
            grad_weight = conv_weight_grad(
                self.x, grad_out, self.weight.shape, self.stride, self.padding, self.groups
            )
        if self.needs_input_grad[2]:
            grad_bias = grad_out.sum(axis=(0, 2, 3))
        return grad_x, grad_weight, grad_bias


def conv2d_naive(x, weight, bias=None, stride=1, padding=0, groups=1):
    """The obvious convolution on raw arrays: one small product per output pixel and group.

    Slow; it states the definition that ``Conv2d`` computes fast.
    """
    xp = get_array_module(x, weight)
    check_conv2d(x.shape, weight.shape, None if bias is None else bias.shape, stride, padding, groups)
    n, _, h, w = x.shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    x = pad_hw(x, padding)
    y = xp.zeros((n, o, oh, ow), dtype=x.dtype)
    for row in range(oh):
        for col in range(ow):
            patch = x[:, :, row * stride : row * stride + kh, col * stride : col * stride + kw]  # (N, C, KH, KW)
            for group in range(groups):
                inputs = patch[:, group * cg : (group + 1) * cg]  # (N, Cg, KH, KW)
                filters = weight[group * og : (group + 1) * og]  # (Og, Cg, KH, KW)
                # y[n, o] = sum over (c, i, j) of inputs[n, c, i, j] * filters[o, c, i, j]
                products = xp.tensordot(inputs, filters, axes=([1, 2, 3], [1, 2, 3]))  # (N, Og)
                y[:, group * og : (group + 1) * og, row, col] = products
    if bias is not None:
        y += bias.reshape(1, o, 1, 1)
    return y
