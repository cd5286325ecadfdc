"""Batch normalisation, as torch.nn.functional.batch_norm."""

import numpy as np

from tinyse.backend import elementwise_kernel, get_array_module, reduction_kernel
from tinyse.parallel import for_each_chunk_of
from tinyse.tensor import Function, is_grad_enabled


class BatchNorm(Function):
    """Normalise each channel over the batch (and the spatial axes), then scale and shift.

    Shapes: x (N, C) or (N, C, H, W); gamma, beta (C,) or None; running_mean,
    running_var (C,) arrays, updated in place in training mode (or None).
    Per channel, over its m = N*H*W values:
        training:  mu = mean(x),  var = mean((x - mu)^2)  (biased)
                   running_mean <- (1 - momentum) running_mean + momentum mu
                   running_var  <- (1 - momentum) running_var  + momentum var m / (m - 1)  (unbiased)
        eval:      mu, var = running_mean, running_var
        x_hat = (x - mu) / sqrt(var + eps),   y = gamma x_hat + beta
    Backward, with g = dL/dy * gamma (the sums over the batch are einsums: one pass each):
        dL/dbeta = sum dL/dy,   dL/dgamma = sum dL/dy x_hat
        training:  dL/dx = (g - mean(g) - x_hat mean(g x_hat)) / sqrt(var + eps)
                   (mu and var depend on x: the two means are their share)
        eval:      dL/dx = g / sqrt(var + eps)
    Kept for the backward: x - mu (not x_hat = (x - mu) / sqrt(var + eps), which costs one more
    pass over the batch to make), and 1 / sqrt(var + eps) per channel. In eval mode, where mu is
    a constant, the forward is y = scale x + (beta - scale mu) with scale = gamma / sqrt(var + eps),
    and x - mu is made only if a backward asks for it.

    On the GPU (CuPy arrays) ``forward_on_gpu`` and ``backward_on_gpu`` compute the same in 3 and 2
    kernel launches, keeping x instead of x - mu: see there. The rest of this docstring is the CPU's.

    Passes over the activation (N*C*H*W values; R reads it, W writes it), training mode:
        forward   mu: R;  x - mu: R + W, a new array (kept);  var: R;  y = (x - mu) scale: R + W,
                  a new array (the output);  y += beta: R + W in place.  5 passes, 2 arrays.
        backward  dL/dbeta: R;  dL/dgamma: 2R;  dL/dx = scale ((x - mu) a + dL/dy + b) in four in-place
                  passes over the kept x - mu, its last use (so a second backward is an error).
                  6 passes, no array.
    The passes run over the batch in chunks of a few images, on every core (``for_each_chunk_of``),
    and the passes between two sums go through a chunk one after another while it is in the cache
    (var right after x - mu; + beta (and the ReLU) right after the scale; dL/dgamma right after
    dL/dbeta; the four passes of dL/dx), so that memory is read 3 times in the forward (x twice,
    x - mu once) and 4 times in the backward (dL/dy and x - mu twice each).
    Measured, batch norm fwd+bwd, A/B in one process, 2026-12-02, 2-core Intel Xeon (AVX-512),
    batch 128, float32, at the three SE-ResNet-20 stage shapes (16x32x32, 32x16x16, 64x8x8):
    - dL/dx in place (4 passes and no new array, from 4 passes and 2 new arrays: dL/dy scale, then
      the temporary (x - mu) a): 0.78 / 0.85 / 0.94 of the old time; an in-place pass reads and
      writes memory the cache already holds, while a new array's first write must fetch its lines.
    - then the chunks on 2 threads: 0.57 / 0.82 / 0.86 of the old time in all (0.57 / 0.68 / 0.82
      with the ReLU, ``BatchNormReLU``).
        """

    fresh_input_grads = True  # dL/dx overwrites x - mu, the forward's own array; the other two are new

    def __init__(self, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps

    relu = False  # BatchNormReLU: y = relu(gamma x_hat + beta), the ReLU in the same pass

    def forward(self, x, gamma=None, beta=None):
        self.check(x, gamma, beta)
        xp = get_array_module(x)
        self.x_shape = x.shape
        n, c = x.shape[:2]
        x = x.reshape(n, c, -1)  # (N, C, H*W): one row of values per image and channel
        if xp is not np:
            return self.forward_on_gpu(x, gamma, beta).reshape(self.x_shape)
        m = n * x.shape[2]
        # Each pass runs over the batch in chunks, on every core (for_each_chunk_of): a pass that sums
        # returns one partial sum per chunk.
        if self.training:
            mu = sum(for_each_chunk_of([x], lambda a, b: xp.einsum("nci->c", x[a:b]))) / m
            x_centered = xp.empty_like(x)

            def center(a, b):  # x - mu, then its sum of squares while the chunk is in the cache
                xp.subtract(x[a:b], mu[:, None], out=x_centered[a:b])
                return xp.einsum("nci,nci->c", x_centered[a:b], x_centered[a:b])

            var = sum(for_each_chunk_of([x, x_centered], center)) / m
            if self.running_mean is not None:
                self.running_mean *= 1 - self.momentum
                self.running_mean += self.momentum * mu
            if self.running_var is not None:
                self.running_var *= 1 - self.momentum
                self.running_var += self.momentum * var * (m / (m - 1))
        else:
            mu, var = self.running_mean, self.running_var
        self.inv_std = 1 / xp.sqrt(var + self.eps)  # (C,)
        self.scale = scale = self.inv_std if gamma is None else gamma * self.inv_std  # y = scale (x - mu) + beta
        if self.training:
            self.x_centered = values = x_centered  # x - mu (N, C, H*W), this op's own array
            shift = beta
        else:  # mu is a constant: y = scale x + (beta - scale mu), one pass less; x - mu waits for a backward
            self.x, self.mu, self.x_centered = x, mu.copy(), None  # a copy: the running mean may change
            values, shift = x, (0 if beta is None else beta) - scale * mu
        y = xp.empty_like(x)
        for_each_chunk_of([values, y], lambda a, b: self.scale_shift(values[a:b], scale, shift, out=y[a:b]))
        return y.reshape(self.x_shape)

    def scale_shift(self, values, scale, shift, out):
        """out = scale values + shift (then the ReLU, if ``relu``), per channel: values and out (B, C, H*W),
        scale (C,), shift (C,) or None. On the GPU one kernel."""
        if get_array_module(values) is np:
            np.multiply(values, scale[:, None], out=out)
            if shift is not None:
                out += shift[:, None]
            if self.relu:
                np.maximum(out, 0, out=out)
            return
        # on the GPU forward_on_gpu always hands a shift (beta - scale mu)
        scale, shift = (a[:, None].astype(values.dtype, copy=False) for a in (scale, shift))
        if self.relu:
            elementwise_kernel("T values, T scale, T shift", "T y",
                               "const T v = values * scale + shift; y = v > 0 ? v : (T)0", "tinyse_bn_relu")(
                values, scale, shift, out)
        else:
            elementwise_kernel("T values, T scale, T shift", "T y", "y = values * scale + shift", "tinyse_bn")(
                values, scale, shift, out)

    def backward(self, grad_out):
        n, c = grad_out.shape[:2]
        grad_out = grad_out.reshape(n, c, -1)
        m = n * grad_out.shape[2]
        xp = get_array_module(grad_out)
        if xp is not np:
            return self.backward_on_gpu(grad_out, m)
        inv_std, scale = self.inv_std, self.scale  # (C,); scale = gamma / sqrt(var + eps)
        need = self.needs_input_grad
        x_centered = None
        if self.training:
            x_centered = self.take_x_centered()
        elif need[1]:  # eval: x - mu only for dL/dgamma, and a new array, so also ours to overwrite
            x_centered = self.x - self.mu[:, None]

        def sums(a, b):  # dL/dbeta and dL/dgamma * sqrt(var + eps) of a chunk
            grad = grad_out[a:b]
            with_x = None if x_centered is None else xp.einsum("nci,nci->c", grad, x_centered[a:b])
            return xp.einsum("nci->c", grad), with_x

        parts = for_each_chunk_of([grad_out] if x_centered is None else [grad_out, x_centered], sums)
        sum_grad = sum(part[0] for part in parts)  # = dL/dbeta
        sum_grad_xhat = None if x_centered is None else sum(part[1] for part in parts) * inv_std  # = dL/dgamma
        grad_x = None
        if need[0] and self.training:
            # (g - mean(g) - x_hat mean(g x_hat)) / sqrt(var + eps), with g = dL/dy gamma, is
            # scale ((x - mu) a + dL/dy + b) with per-channel a = -mean(dL/dy x_hat) / sqrt(var + eps)
            # and b = -mean(dL/dy): four passes in place over x - mu, which nothing else holds.
            a_coef, b_coef = (-inv_std * sum_grad_xhat / m)[:, None], (sum_grad / m)[:, None]

            def grad_x_in_place(a, b):
                part = x_centered[a:b]
                part *= a_coef
                part += grad_out[a:b]
                part -= b_coef
                part *= scale[:, None]

            for_each_chunk_of([x_centered, grad_out], grad_x_in_place)
            grad_x = x_centered.reshape(self.x_shape)
        elif need[0]:  # eval: mu and var are constants
            grad_x = (grad_out * scale[:, None]).reshape(self.x_shape)
        grad_gamma = sum_grad_xhat if need[1] else None
        grad_beta = sum_grad if need[2] else None
        return grad_x, grad_gamma, grad_beta

    # --- on the GPU: the same math in 3 kernel launches forward and 2 backward (cf. 18-20 and 12-14 as NumPy calls)
    def forward_on_gpu(self, x, gamma, beta):
        """The forward on CuPy arrays, x (N, C, H*W): mu and var from the sums of x and x^2, both taken in one
        pass (a ReductionKernel, in double precision: BN_SUMS_CUDA), the per-channel numbers and the running
        statistics (one kernel over C, BN_STATISTICS_CUDA), then y = scale x + shift (one kernel,
        ``scale_shift``). Kept for the backward: x itself (the conv's output, which nothing else keeps),
        mu and 1 / sqrt(var + eps)."""
        xp = get_array_module(x)
        m = x.shape[0] * x.shape[2]
        if self.training:
            mu, var = reduction_kernel("T x", "T mean, T var", "tinyse_sums(x, (double)x * x)", "a + b",
                                       "tinyse_mean_var(a, _in_ind.size() / _out_ind.size(), mean, var)", "0",
                                       "tinyse_bn_mean_var", reduce_type="tinyse_sums", preamble=BN_SUMS_CUDA)(
                x, axis=(0, 2))
        else:
            mu, var = self.running_mean, self.running_var
        update = self.training and self.running_mean is not None and self.running_var is not None
        # momentum 0 leaves the running statistics as they are (eval mode, or none kept: scratch arrays)
        running = (self.running_mean, self.running_var) if update else (xp.empty_like(mu), xp.empty_like(mu))
        inv_std, scale, shift = (xp.empty_like(mu) for _ in range(3))
        statistics = elementwise_kernel("T mu, T var, T gamma, T beta, T eps, T momentum, T unbias",
                                        "T inv_std, T scale, T shift, T running_mean, T running_var",
                                        BN_STATISTICS_CUDA, "tinyse_bn_statistics")
        statistics(mu, var, 1.0 if gamma is None else gamma.astype(mu.dtype, copy=False),
                   0.0 if beta is None else beta.astype(mu.dtype, copy=False), self.eps,
                   self.momentum if update else 0.0, m / max(m - 1, 1), inv_std, scale, shift, *running)
        if not self.training and is_grad_enabled():
            mu = mu.copy()  # the running mean may change before a backward
        self.x, self.mu, self.inv_std, self.scale = x, mu, inv_std, scale
        y = xp.empty(x.shape, dtype=x.dtype)  # C-ordered, whatever x's layout (the next conv reads it as such)
        self.scale_shift(x, scale, shift, y)
        return y

    def backward_on_gpu(self, grad_out, m):
        """The backward on CuPy arrays, dL/dy (N, C, H*W): dL/dbeta and dL/dgamma, the sums of g and g x_hat,
        in one pass (a ReductionKernel), then dL/dx in one kernel: scale (g - (dL/dbeta + x_hat dL/dgamma) / m)
        in training (BN_GRAD_X_CUDA), scale g in eval (mu and var constants: the two sums drop out). g is
        dL/dy, or with the ReLU (``BatchNormReLU``) dL/dy where y > 0, else 0: both kernels apply the mask.
        dL/dx is laid out in memory as x is, so that the conv before reads its (C, N, H, W) output's
        gradient without a copy (``conv_backward_gpu``)."""
        if self.x is None:
            raise RuntimeError("batch_norm's backward ran twice: the first one used up its saved x")
        xp = get_array_module(grad_out)
        need, x, mu, inv_std = self.needs_input_grad, self.x, self.mu[:, None], self.inv_std[:, None]
        relu_out = self.y.reshape(grad_out.shape) if self.relu else 1  # the ReLU's mask is y > 0; 1: no ReLU
        sum_grad = sum_grad_xhat = None
        if self.training or need[1] or need[2]:
            sum_grad, sum_grad_xhat = reduction_kernel(
                "T grad, T y, T x, T mu, T inv_std", "T sum_grad, T sum_grad_xhat",
                "tinyse_grad_sums(grad, y, (x - mu) * inv_std)", "a + b",
                "sum_grad = a.first, sum_grad_xhat = a.second", "0", "tinyse_bn_grad_sums",
                reduce_type="tinyse_sums", preamble=BN_SUMS_CUDA)(grad_out, relu_out, x, mu, inv_std, axis=(0, 2))
        grad_x = None
        if need[0]:
            coupled = (sum_grad[:, None], sum_grad_xhat[:, None]) if self.training else (0.0, 0.0)
            grad_x = elementwise_kernel(
                "T grad, T y, T x, T mu, T inv_std, T scale, T sum_grad, T sum_grad_xhat, T m", "T grad_x",
                BN_GRAD_X_CUDA, "tinyse_bn_grad_x")(
                grad_out, relu_out, x, mu, inv_std, self.scale[:, None], *coupled, m, xp.empty_like(x))
            grad_x = grad_x.reshape(self.x_shape)
        if self.training:
            self.x = None  # one backward per forward, as on the CPU
        return grad_x, sum_grad_xhat if need[1] else None, sum_grad if need[2] else None

    def take_x_centered(self):
        """x - mu, kept by the training forward, handed to the backward, which overwrites it with dL/dx."""
        x_centered, self.x_centered = self.x_centered, None
        if x_centered is None:
            raise RuntimeError("batch_norm's backward ran twice: the first one used up its saved x - mu")
        return x_centered

    def check(self, x, gamma, beta):
        if x.ndim not in (2, 4):
            raise ValueError(f"batch_norm expects input of shape (N, C) or (N, C, H, W), got {x.shape}")
        c = x.shape[1]
        arrays = {"weight": gamma, "bias": beta, "running_mean": self.running_mean, "running_var": self.running_var}
        for name, array in arrays.items():
            if array is not None and array.shape != (c,):
                raise ValueError(f"batch_norm: {name} must have shape ({c},) for input {x.shape}, got {array.shape}")
        if self.training and x.size // c < 2:
            raise ValueError(f"batch_norm in training mode needs more than 1 value per channel, got input {x.shape}")
        if not self.training and (self.running_mean is None or self.running_var is None):
            raise ValueError("batch_norm in eval mode needs running_mean and running_var")


# --- the CUDA sources of the GPU kernels (CuPy ElementwiseKernels; one thread per value written) --------------
# Per channel: 1 / sqrt(var + eps), y = scale x + shift's scale and shift, and the running statistics
# (unbias = m / (m - 1): the running variance is the unbiased one, as PyTorch keeps it).
BN_STATISTICS_CUDA = """
    inv_std = (T)1 / sqrt(var + eps);
    scale = gamma * inv_std;
    shift = beta - scale * mu;
    running_mean = ((T)1 - momentum) * running_mean + momentum * mu;
    running_var = ((T)1 - momentum) * running_var + momentum * var * unbias;
"""
# dL/dx: (g - mean(g) - x_hat mean(g x_hat)) gamma / sqrt(var + eps) in training, with the two means from
# the sums dL/dbeta and dL/dgamma (0 in eval); g = dL/dy where the ReLU let it through (y > 0).
BN_GRAD_X_CUDA = """
    const T g = y > 0 ? grad : (T)0;
    grad_x = scale * (g - (sum_grad + (x - mu) * inv_std * sum_grad_xhat) / m);
"""
# Two sums per channel in one pass over the batch (a ReductionKernel whose values are pairs), in double:
# sum x and sum x^2 in the forward (mean and variance), sum g and sum g x_hat in the backward.
BN_SUMS_CUDA = """
struct tinyse_sums {
    double first, second;
    __device__ tinyse_sums(double first = 0, double second = 0) : first(first), second(second) {}
};
__device__ tinyse_sums operator+(const tinyse_sums& a, const tinyse_sums& b) {
    return tinyse_sums(a.first + b.first, a.second + b.second);
}
// mean and biased variance of n values from their sum and sum of squares (clamped at 0 against rounding)
template <typename T> __device__ void tinyse_mean_var(const tinyse_sums& sums, double n, T& mean, T& var) {
    const double mu = sums.first / n;
    mean = (T)mu;
    var = (T)max(sums.second / n - mu * mu, 0.0);
}
// g = dL/dy where the ReLU after batch norm let it through (y > 0), and g x_hat
template <typename T> __device__ tinyse_sums tinyse_grad_sums(T grad, T y, T x_hat) {
    const double g = y > 0 ? grad : (T)0;
    return tinyse_sums(g, g * x_hat);
}
"""
