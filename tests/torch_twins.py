"""PyTorch twins shared by the tests: written from the paper, with tinyse's attribute names."""
import torch
import torch.nn as tnn


class TorchSE(tnn.Module):
    """The paper's SE block in PyTorch: U * gate(fc2(relu(fc1(squeeze(U))))), hidden width max(1, C // r)."""

    def __init__(self, channels, reduction=16, squeeze="avg", excitation="sigmoid"):
        super().__init__()
        self.squeeze, self.excitation = squeeze, excitation
        hidden = max(1, channels // reduction)
        self.fc1 = tnn.Linear(channels, hidden)
        self.fc2 = tnn.Linear(hidden, channels)

    def gates(self, u):
        z = u.mean(dim=(2, 3)) if self.squeeze == "avg" else u.amax(dim=(2, 3))
        a = self.fc2(torch.relu(self.fc1(z)))
        return {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}[self.excitation](a)

    def forward(self, u):
        return u * self.gates(u)[:, :, None, None]
