"""Softmax cross-entropy, computed through a stable log-sum-exp."""
import numpy as np

from tinyse.backend import get_array_module
from tinyse.tensor import Function


class CrossEntropy(Function):
    """L = -1/N sum_n log p[n, t_n],  p = softmax(x) row by row, t the integer labels.

    log p = x - max(x) - log(sum(exp(x - max(x))))   (subtracting the row max keeps exp <= 1)
    dL/dx = (p - onehot(t)) / N * dL/dL.
    Shapes: logits x (N, K), labels t (N,) integers in [0, K) -> L a scalar.
    """

    def __init__(self, labels):
        self.labels = labels

    def forward(self, logits):
        xp = get_array_module(logits, self.labels)
        self.check(logits, self.labels)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        self.probs = xp.exp(log_probs)
        self.rows = xp.arange(len(logits))
        return -log_probs[self.rows, self.labels].mean()

    def backward(self, grad_out):
        grad = self.probs.copy()
        grad[self.rows, self.labels] -= 1
        return grad * (grad_out / len(grad))

    @staticmethod
    def check(logits, labels):
        if logits.ndim != 2:
            raise ValueError(f"cross_entropy expects logits of shape (N, classes), got {logits.shape}")
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"cross_entropy: labels of shape {labels.shape} do not match logits {logits.shape}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"cross_entropy: labels must be integers, got dtype {labels.dtype}")
        # The range check reads two numbers back from the device: on the GPU it would cost a host round
        # trip in every step, so it runs on host (NumPy) labels only. (The CIFAR loader checks its labels.)
        on_host = isinstance(labels, np.ndarray)
        if on_host and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
            raise ValueError(
                f"cross_entropy: labels must lie in [0, {logits.shape[1]}) for logits {logits.shape}, "
                f"got values from {int(labels.min())} to {int(labels.max())}"
            )
