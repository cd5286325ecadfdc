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
    Backward, with g = dL/dy * gamma:
        dL/dbeta = sum dL/dy,   dL/dgamma = sum dL/dy x_hat
        training:  dL/dx = (g - mean(g) - x_hat mean(g x_hat)) / sqrt(var + eps)
                   (mu and var depend on x: the two means are their share)
        eval:      dL/dx = g / sqrt(var + eps)
    """

    def __init__(self, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps

    def forward(self, x, gamma=None, beta=None):
        self.check(x, gamma, beta)
        xp = get_array_module(x)
        c = x.shape[1]
        self.axes = (0,) if x.ndim == 2 else (0, 2, 3)
        self.param_shape = (1, c) if x.ndim == 2 else (1, c, 1, 1)
        if self.training:
            mu = x.mean(axis=self.axes)
            var = x.var(axis=self.axes)
            m = x.size // c
            if self.running_mean is not None:
                self.running_mean *= 1 - self.momentum
                self.running_mean += self.momentum * mu
            if self.running_var is not None:
                self.running_var *= 1 - self.momentum
                self.running_var += self.momentum * var * (m / (m - 1))
        else:
            mu, var = self.running_mean, self.running_var
        self.inv_std = (1 / xp.sqrt(var + self.eps)).reshape(self.param_shape)
        self.x_hat = (x - mu.reshape(self.param_shape)) * self.inv_std
        self.gamma = gamma
        y = self.x_hat if gamma is None else self.x_hat * gamma.reshape(self.param_shape)
        return y if beta is None else y + beta.reshape(self.param_shape)

    def backward(self, grad_out):
        g = grad_out if self.gamma is None else grad_out * self.gamma.reshape(self.param_shape)
        grad_x = grad_gamma = grad_beta = None
        if self.needs_input_grad[0]:
            if self.training:
                mean_g = g.mean(axis=self.axes, keepdims=True)
                mean_g_xhat = (g * self.x_hat).mean(axis=self.axes, keepdims=True)
                grad_x = (g - mean_g - self.x_hat * mean_g_xhat) * self.inv_std
            else:
                grad_x = g * self.inv_std
        if self.needs_input_grad[1]:
            grad_gamma = (grad_out * self.x_hat).sum(axis=self.axes)
        if self.needs_input_grad[2]:
            grad_beta = grad_out.sum(axis=self.axes)
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
