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

Fast version (``Conv2d``): im2col copies each receptive field into one column,
    cols (G, K, N*OH*OW), and the convolution is one matrix product per group,
    y = W (G, Og, K) @ cols.
    Backward: dL/dW = dL/dy @ cols^T and dL/dcols = W^T @ dL/dy; col2im adds each
    column back onto the input pixels it was copied from.
Obvious version (``conv2d_naive``): a loop over output pixels, kept for the
    lessons and for a test that holds the two equal.
"""
from tinyse.backend import get_array_module
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


def im2col(x, kh, kw, stride, padding):
    """Copy every (KH, KW) receptive field of x (N, C, H, W) into cols (C, KH, KW, N, OH, OW)."""
    n, c, h, w = x.shape
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    x = pad_hw(x, padding)
    cols = get_array_module(x).empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = x[window(i, j, stride, oh, ow)].transpose(1, 0, 2, 3)
    return cols


def col2im(cols, x_shape, stride, padding):
    """Adjoint of im2col: add each column of cols (C, KH, KW, N, OH, OW) back onto the pixels it came from."""
    n, c, h, w = x_shape
    _, kh, kw, _, oh, ow = cols.shape
    x = get_array_module(cols).zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            x[window(i, j, stride, oh, ow)] += cols[:, i, j].transpose(1, 0, 2, 3)
    return x[:, :, padding : padding + h, padding : padding + w]


class Conv2d(Function):
    """y[n, o] = b[o] + sum over c in o's group, i, j of W[o, c, i, j] * x_pad[n, c, S*oh + i, S*ow + j].

    Shapes: x (N, C, H, W), W (O, C/G, KH, KW), b (O,) or None -> y (N, O, OH, OW).
    """

    def __init__(self, stride=1, padding=0, groups=1):
        self.stride, self.padding, self.groups = stride, padding, groups

    def forward(self, x, weight, bias=None):
        bias_shape = None if bias is None else bias.shape
        check_conv2d(x.shape, weight.shape, bias_shape, self.stride, self.padding, self.groups)
        n, g = x.shape[0], self.groups
        o, cg, kh, kw = weight.shape
        cols = im2col(x, kh, kw, self.stride, self.padding)  # (C, KH, KW, N, OH, OW)
        oh, ow = cols.shape[-2:]
        self.cols = cols.reshape(g, cg * kh * kw, n * oh * ow)  # (G, K, N*OH*OW)
        self.x_shape, self.weight = x.shape, weight
        y = weight.reshape(g, o // g, cg * kh * kw) @ self.cols  # (G, Og, N*OH*OW)
        y = y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3)  # (N, O, OH, OW)
        if bias is not None:
            return y + bias.reshape(1, o, 1, 1)
        return get_array_module(y).ascontiguousarray(y)

    def backward(self, grad_out):
        n, o, oh, ow = grad_out.shape
        g, k = self.cols.shape[:2]
        grad_y = grad_out.transpose(1, 0, 2, 3).reshape(g, o // g, n * oh * ow)  # (G, Og, N*OH*OW)
        grad_x = grad_weight = grad_bias = None
        if self.needs_input_grad[0]:
            weight = self.weight.reshape(g, o // g, k)
            grad_cols = weight.transpose(0, 2, 1) @ grad_y  # (G, K, N*OH*OW)
            kh, kw = self.weight.shape[2:]
            grad_cols = grad_cols.reshape(self.x_shape[1], kh, kw, n, oh, ow)
            grad_x = col2im(grad_cols, self.x_shape, self.stride, self.padding)
        if self.needs_input_grad[1]:
            grad_weight = (grad_y @ self.cols.transpose(0, 2, 1)).reshape(self.weight.shape)  # (G, Og, K)
        if self.needs_input_grad[2]:
            grad_bias = grad_out.sum(axis=(0, 2, 3))
        return grad_x, grad_weight, grad_bias


def conv2d_naive(x, weight, bias=None, stride=1, padding=0, groups=1):
    """The obvious convolution on raw arrays: one small product per output pixel and group.

    Slow; it states the definition that ``Conv2d`` computes fast.
    """
    xp = get_array_module(x, weight)
    check_conv2d(x.shape, weight.shape, None if bias is None else bias.shape, stride, padding, groups)
    n, c, h, w = x.shape
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
