"""Softmax cross-entropy, computed through a stable log-sum-exp, with optional label smoothing."""
import numpy as np

from tinyse.backend import elementwise_kernel, get_array_module, reduction_kernel
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

    On the GPU (CuPy arrays) ``forward_on_gpu`` and ``backward_on_gpu`` compute the same in 3 kernel
    launches and 1 (17 as the NumPy lines below).
    """

    def __init__(self, labels, label_smoothing=0.0):
        self.labels = labels
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits):
        xp = get_array_module(logits, self.labels)
        self.check(logits, self.labels, self.label_smoothing)
        if xp is not np:
            return self.forward_on_gpu(logits)
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
        if get_array_module(grad_out) is not np:
            return self.backward_on_gpu(grad_out)
        eps, k = self.label_smoothing, self.probs.shape[1]
        # p - q, each entry minus its target in one subtraction: q = eps / K off the label, (1 - eps) + eps / K on it
        grad = self.probs - eps / k if eps else self.probs.copy()
        grad[self.rows, self.labels] = self.probs[self.rows, self.labels] - ((1 - eps) + eps / k)
        return grad * (grad_out / len(grad))

    # --- on the GPU: the same math in 3 kernel launches forward and 1 backward
    def forward_on_gpu(self, logits):
        """Per row, the largest logit m, log sum_k exp(x_k - m) and sum_k x_k in one pass (a ReductionKernel whose
        running value keeps the largest logit so far, so that exp never overflows: LOGSUMEXP_CUDA); then each
        row's loss, -log p_t = (m - x_t) + log sum_k exp(x_k - m), mixed with the mean over k of -log p_k
        for label smoothing (a kernel that reads the label's logit); then their mean. (m - x_t) is kept
        apart from the log: at a confident row the loss is tiny next to m, and m + log(...) - x_t would round
        it away.) Kept for the backward: the logits and each row's m and log-sum."""
        k = logits.shape[1]
        row_max, log_sum, row_sum = reduction_kernel(
            "T x", "T row_max, T log_sum, T row_sum", "tinyse_lse_of(x)", "tinyse_lse_add(a, b)",
            "row_max = a.max, log_sum = log(a.sum), row_sum = a.total", "tinyse_lse()", "tinyse_logsumexp",
            reduce_type="tinyse_lse", preamble=LOGSUMEXP_CUDA)(logits, axis=1)
        row_loss = elementwise_kernel(
            "raw T logits, T row_max, T log_sum, T row_sum, I label, int32 k, T eps", "T loss",
            "loss = log_sum + (1 - eps) * (row_max - logits[i * k + label]) + eps * (row_max - row_sum / k)",
            "tinyse_cross_entropy_rows")(logits, row_max, log_sum, row_sum, self.labels, k, self.label_smoothing)
        self.logits, self.row_max, self.log_sum = logits, row_max[:, None], log_sum[:, None]
        return row_loss.mean()

    def backward_on_gpu(self, grad_out):
        """dL/dx = (p - q) / N * dL/dL in one kernel, p = exp(x - m - log-sum), q = (1 - eps) on the label + eps / K."""
        n, k = self.logits.shape
        return elementwise_kernel(
            "T x, T row_max, T log_sum, I label, int32 k, T eps, T grad_loss, int32 n", "T grad",
            "const T q = (i % k == label ? (T)1 - eps : (T)0) + eps / k;\n"
            "grad = (exp(x - row_max - log_sum) - q) * grad_loss / n",
            "tinyse_cross_entropy_grad")(self.logits, self.row_max, self.log_sum, self.labels[:, None], k,
                                         self.label_smoothing, grad_out, n)

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


# The CUDA source of the GPU's log-sum-exp (a CuPy ReductionKernel over each row): the running value is
# (max, sum, total): the largest value seen, the sum of exp(x - max) over them, and their plain sum; two running
# values combine by rescaling the one with the smaller max (the "online softmax" of Milakov and
# Gimelshein 2018), so no exp ever sees a positive argument.
LOGSUMEXP_CUDA = """
struct tinyse_lse {  // sum = 0: nothing seen yet (max is then unused)
    double max, sum, total;
    __device__ tinyse_lse(double max = 0, double sum = 0, double total = 0) : max(max), sum(sum), total(total) {}
};
__device__ tinyse_lse tinyse_lse_of(double x) { return tinyse_lse(x, 1, x); }
__device__ tinyse_lse tinyse_lse_add(const tinyse_lse& a, const tinyse_lse& b) {
    if (a.sum == 0) return tinyse_lse(b.max, b.sum, a.total + b.total);  // nothing seen yet on one side
    if (b.sum == 0) return tinyse_lse(a.max, a.sum, a.total + b.total);
    const double top = a.max > b.max ? a.max : b.max;
    return tinyse_lse(top, a.sum * exp(a.max - top) + b.sum * exp(b.max - top), a.total + b.total);
}
"""
