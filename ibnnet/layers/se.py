"""Squeeze-and-excitation as in the official SE-ResNet-IBN (bias-free Linear layers, keys ``fc.0``/``fc.2``)."""
from torch import Tensor, nn


class SELayer(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = int(channels / reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        w = self.fc(x.mean((2, 3)))
        return x * w[:, :, None, None]
