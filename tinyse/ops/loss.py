"""Softmax cross-entropy, computed through a stable log-sum-exp, with optional label smoothing."""
import numpy as np

from tinyse.backend import get_array_module
from tinyse.tensor import Function


class CrossEntropy(Function):
    """L = 1/N sum_n sum_k q[n, k] * (-log p[n, k]),  p = softmax(x) row by row, t the integer labels,

    q the target distribution of each row: with label smoothing eps (Szegedy et al. 2016, "Rethinking the
    Inception Architecture", sec. 7), q[n, k] = (1 - eps) * onehot(t_n)[k] + eps / K, so that

        L = (1 - eps) * 1/N sum_n -log p[n, t_n]  +  eps * 1/N sum_n 1/K sum_k -log p[n, k]

    (torch.nn.functional.cross_entropy's ``label_smoothing``); eps = 0 is the plain loss -1/N sum_n log p[n, t_n].

    log p = x - max(x) - log(sum(exp(x - max(x))))   (subtracting the row max keeps exp <= 1)
    dL/dx = (p - q) / N * dL/dL                      (q sums to 1, so each row's gradient sums to 0:
                                                      d(-log p_k)/dx_j = p_j - [j = k], averaged over k with q)
    Shapes: logits x (N, K), labels t (N,) integers in [0, K) -> L a scalar.
    """

    def __init__(self, labels, label_smoothing=0.0):
        self.labels = labels
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits):
        xp = get_array_module(logits, self.labels)
        self.check(logits, self.labels, self.label_smoothing)
        eps = self.label_smoothing
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))  # (N, K)
        self.probs = xp.exp(log_probs)
        self.rows = xp.arange(len(logits))
        nll = -log_probs[self.rows, self.labels].mean()
        if eps == 0:
            return nll
        uniform = -log_probs.mean()  # 1/N sum_n 1/K sum_k -log p[n, k]
        return (1 - eps) * nll + eps * uniform

    def backward(self, grad_out):
        eps, k = self.label_smoothing, self.probs.shape[1]
        # p - q, each entry minus its target in one subtraction: q = eps / K off the label, (1 - eps) + eps / K on it
        grad = self.probs - eps / k if eps else self.probs.copy()
        grad[self.rows, self.labels] = self.probs[self.rows, self.labels] - ((1 - eps) + eps / k)
        return grad * (grad_out / len(grad))

    @staticmethod
    def check(logits, labels, label_smoothing=0.0):
        if logits.ndim != 2:
            raise ValueError(f"cross_entropy expects logits of shape (N, classes), got {logits.shape}")
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"cross_entropy: labels of shape {labels.shape} do not match logits {logits.shape}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"cross_entropy: labels must be integers, got dtype {labels.dtype}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
        # The range check reads two numbers back from the device: on the GPU it would cost a host round
        # trip in every step, so it runs on host (NumPy) labels only. (The CIFAR loader checks its labels.)
        on_host = isinstance(labels, np.ndarray)
        if on_host and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
            raise ValueError(
                f"cross_entropy: labels must lie in [0, {logits.shape[1]}) for logits {logits.shape}, "
                f"got values from {int(labels.min())} to {int(labels.max())}"
            )
