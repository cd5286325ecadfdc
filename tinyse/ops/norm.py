"""Batch normalisation, as torch.nn.functional.batch_norm."""

from tinyse.backend import get_array_module
from tinyse.tensor import Function


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
    """

    def __init__(self, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps

    def forward(self, x, gamma=None, beta=None):
        self.check(x, gamma, beta)
        xp = get_array_module(x)
        self.x_shape = x.shape
        n, c = x.shape[:2]
        x = x.reshape(n, c, -1)  # (N, C, H*W): one row of values per image and channel
        m = n * x.shape[2]
        if self.training:
            mu = xp.einsum("nci->c", x) / m
            x_centered = x - mu[:, None]
            var = xp.einsum("nci,nci->c", x_centered, x_centered) / m
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
            self.x_centered = x_centered  # x - mu (N, C, H*W)
            y = self.scale_shift(x_centered, scale, beta)
        else:  # mu is a constant: y = scale x + (beta - scale mu), one pass less; x - mu waits for a backward
            self.x, self.mu, self.x_centered = x, mu.copy(), None  # a copy: the running mean may change
            y = self.scale_shift(x, scale, (0 if beta is None else beta) - scale * mu)
        return y.reshape(self.x_shape)

    def scale_shift(self, values, scale, shift):
        """y = scale values + shift, per channel: values (N, C, H*W), scale (C,), shift (C,) or None -> a new array."""
        y = values * scale[:, None]
        if shift is not None:
            y += shift[:, None]
        return y

    def backward(self, grad_out):
        n, c = grad_out.shape[:2]
        grad_out = grad_out.reshape(n, c, -1)
        m = n * grad_out.shape[2]
        xp = get_array_module(grad_out)
        inv_std = self.inv_std
        x_centered = self.x_centered if self.x_centered is not None else self.x - self.mu[:, None]
        sum_grad = xp.einsum("nci->c", grad_out)  # = dL/dbeta
        sum_grad_xhat = xp.einsum("nci,nci->c", grad_out, x_centered) * inv_std  # = dL/dgamma
        scale = self.scale  # gamma / sqrt(var + eps), (C,)
        grad_x = None
        if self.needs_input_grad[0]:
            # training: (g - mean(g) - x_hat mean(g x_hat)) / sqrt(var + eps) with g = grad_out gamma,
            # written as grad_out scale + (x - mu) a + b with per-channel a, b: three passes over the batch
            grad_x = grad_out * scale[:, None]
            if self.training:
                grad_x += x_centered * (-scale * inv_std * sum_grad_xhat / m)[:, None]
                grad_x -= (scale * sum_grad / m)[:, None]
            grad_x = grad_x.reshape(self.x_shape)
        grad_gamma = sum_grad_xhat if self.needs_input_grad[1] else None
        grad_beta = sum_grad if self.needs_input_grad[2] else None
        return grad_x, grad_gamma, grad_beta

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
