"""The Squeeze-and-Excitation block as a layer, with the paper's ablation options."""
import tinyse.functional as F
from tinyse.nn.layers import Linear
from tinyse.nn.module import Module
from tinyse.ops.se import GATES

SQUEEZES = ("avg", "max")


class SEBlock(Module):
    """Recalibrate the channels of U (N, C, H, W): SE(U) = U * s, with gates s = gate(W2 relu(W1 squeeze(U))).

    channels     C, the channels of the feature map it rescales
    reduction    r: the hidden layer has max(1, C // r) units (the paper's default r = 16)
    squeeze      "avg" (global average pooling, the paper's choice) or "max" (its ablation)
    excitation   "sigmoid" (the paper's gate) or "tanh" / "relu" (its ablations)
    The parameters are ``fc1`` (C -> C/r) and ``fc2`` (C/r -> C), each with a bias.
    After a forward pass, ``gates`` holds the last gates (N, C) as a raw array,
    for studying what the excitations learn.
    """

    def __init__(self, channels, reduction=16, squeeze="avg", excitation="sigmoid"):
        super().__init__()
        if squeeze not in SQUEEZES:
            raise ValueError(f"unknown SE squeeze {squeeze!r}: choose one of {SQUEEZES}")
        if reduction < 1:
            raise ValueError(f"SE reduction ratio must be at least 1, got {reduction}")
        if excitation not in GATES:
            raise ValueError(f"unknown SE excitation {excitation!r}: choose one of {GATES}")
        self.channels, self.reduction = channels, reduction
        self.squeeze, self.excitation = squeeze, excitation
        self.hidden = max(1, channels // reduction)
        # fc1 and fc2 only hold W1, b1 and W2, b2, under PyTorch's names (se.fc1.weight, ...), so that a state_dict
        # moves to and from PyTorch; their own forward never runs: the excitation is one op, F.se_excite, which
        # takes both layers' weights and has its own backward (tinyse.ops.se.SEExcite).
        self.fc1 = Linear(channels, self.hidden)
        self.fc2 = Linear(self.hidden, channels)
        self.gates = None

    def forward(self, u, shortcut=None):
        """SE(U) = U * s; given a residual unit's ``shortcut``, relu(SE(U) + shortcut) (see ``scale_add_relu``)."""
        s = self.excite(u)
        if shortcut is None:
            return F.se_scale(u, s)
        return F.se_scale_add_relu(u, s, shortcut)

    def scale_add_relu(self, u, shortcut):
        """relu(SE(U) + shortcut) = relu(U * s + shortcut): the end of a residual unit with SE on its residual
        branch, the scale, the addition and the ReLU in one fused op (``F.se_scale_add_relu``).

        It calls the block (``self(u, shortcut)``), so that it counts as a call of the module (``tinyse.summary``).
        """
        return self(u, shortcut)

    def excite(self, u):
        """The gates s = gate(fc2(relu(fc1(squeeze(U))))) (N, C) of U (N, C, H, W); kept in ``self.gates``."""
        z = F.se_squeeze(u) if self.squeeze == "avg" else F.global_max_pool2d(u)  # (N, C)
        s = F.se_excite(z, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, gate=self.excitation)
        self.gates = s.data
        return s

    def extra_repr(self):
        reduction = f"reduction={self.reduction} (hidden {self.hidden})"
        return f"{self.channels}, {reduction}, squeeze={self.squeeze}, excitation={self.excitation}"


def set_gate_bias(model, bias):
    """Set fc2's bias in every SE block of ``model`` to ``bias``, in place; returns the number of blocks.

    With the sigmoid gate a block's gates start near sigmoid(bias) for every channel. As initialised, fc2's bias
    is uniform in +-1/sqrt(C/r) and the gates sit near sigmoid(0) = 0.5: a residual branch with SE starts at about
    half its size. ``bias`` 2 starts the gates near 0.88, the branch near its full size.
    """
    blocks = [module for module in model.modules() if isinstance(module, SEBlock)]
    for block in blocks:
        block.fc2.bias.data[...] = bias
    return len(blocks)
