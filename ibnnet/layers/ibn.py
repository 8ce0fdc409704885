"""Instance-Batch Normalization (Pan et al., ECCV 2018)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .batch_norm import (
    GhostBatchNorm2d,
    InstanceNorm2d,
    affine_from_moments,
    bn_moments,
)
from .kernels import use_fused
from .moments import moment_normalize


class IBN(nn.Module):
    """The first ``int(channels * ratio)`` channels through affine InstanceNorm, the rest through ``bn_layer``.

    state_dict keys are ``IN.*`` and ``BN.*`` as in the official checkpoints.  Any ratio in [0, 1] works
    (the official ``torch.split`` version fails below 0.5); at 0 there is no ``IN`` and the layer is the
    BN, at 1 there is no ``BN`` and the layer is the IN.

    ``in_first=False`` is the official DenseNet-IBN's layer (``densenet_ibn.py``): the first
    ``int(channels * (1 - ratio))`` channels through BN, the remaining ones through IN.

    With the default BatchNorm2d (or ghost BN) the layer runs as one fused pass over the tensor: the
    BN half's statistics are pooled from the same per-instance moments the IN half uses, so there is
    no split/copy/concatenate.  Any other ``bn_layer`` (SyncBN, GroupNorm, ...) runs split-and-concat.
    """

    def __init__(self, channels: int, ratio: float = 0.5, bn_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 in_first: bool = True):
        super().__init__()
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"IBN ratio must be in [0, 1], got {ratio}")
        self.channels = channels
        self.ratio = ratio
        self.in_first = in_first
        # not `half` (the official name): that would shadow nn.Module.half(), so IBN(c).half() failed.
        # Each order rounds as its official code does: the first part gets the floor of its share.
        self.in_channels = int(channels * ratio) if in_first else channels - int(channels * (1 - ratio))
        self.IN = InstanceNorm2d(self.in_channels, affine=True) if self.in_channels > 0 else None
        self.BN = bn_layer(channels - self.in_channels) if self.in_channels < channels else None

    def extra_repr(self) -> str:
        order = "" if self.in_first else ", in_first=False"
        return f"channels={self.channels}, in_channels={self.in_channels}{order}"

    def _fusable(self) -> bool:
        if self.IN is None or self.BN is None:
            return False
        bn_ok = type(self.BN) in (nn.BatchNorm2d, GhostBatchNorm2d) and self.BN.affine and self.BN.track_running_stats
        in_ok = isinstance(self.IN, nn.InstanceNorm2d) and self.IN.affine and not self.IN.track_running_stats
        return bn_ok and in_ok

    def forward(self, x: Tensor) -> Tensor:
        return self.normalize(x)

    def normalize(self, x: Tensor) -> Tensor:
        """The layer's output; a named method so that subclasses (IBN + activation) can call it in TorchScript."""
        if self.IN is None:
            return self.BN(x)
        if self.BN is None:
            return self.IN(x)
        if not torch.jit.is_scripting():
            if self._fusable() and use_fused("IBN", x, self.training):
                return self._fused_forward(x)
        # No .contiguous(): each half keeps x's memory format (channels-last stays channels-last).
        k_bn = self.channels - self.in_channels
        if self.in_first:
            a, b = torch.split(x, [self.in_channels, k_bn], dim=1)
            return torch.cat([self.IN(a), self.BN(b)], 1)
        a, b = torch.split(x, [k_bn, self.in_channels], dim=1)
        return torch.cat([self.BN(a), self.IN(b)], 1)

    @torch.jit.unused
    def _fused_forward(self, x: Tensor) -> Tensor:
        hw = x.shape[2] * x.shape[3]
        group = getattr(self.BN, "ghost_batch_size", 0)
        in_part = slice(0, self.in_channels) if self.in_first else slice(self.channels - self.in_channels, None)
        bn_part = slice(self.in_channels, None) if self.in_first else slice(0, self.channels - self.in_channels)

        def stats(mean, var, w_in, b_in, w_bn, b_bn):
            s_in, t_in = affine_from_moments(mean[:, in_part], var[:, in_part], self.IN.eps, w_in, b_in)
            m_bn, v_bn = bn_moments(self.BN, mean[:, bn_part], var[:, bn_part], hw, group)
            s_bn, t_bn = affine_from_moments(m_bn, v_bn, self.BN.eps, w_bn, b_bn)
            n = mean.shape[0]
            s_bn, t_bn = s_bn.expand(n, -1), t_bn.expand(n, -1)
            if self.in_first:
                return torch.cat((s_in, s_bn), 1), torch.cat((t_in, t_bn), 1)
            return torch.cat((s_bn, s_in), 1), torch.cat((t_bn, t_in), 1)

        params = (self.IN.weight, self.IN.bias, self.BN.weight, self.BN.bias)
        return moment_normalize(x, stats, params, correction=0)


class IBNConcat(nn.Module):
    """IBN-c: the whole feature through IN *and* through BN, outputs concatenated (2x channels).

    Our reading of the paper's section 3.2 ("feeds the feature to both IN and BN and concatenates"):
    the following convolution sees twice the channels, hence IBN-c's extra parameters (docs/variants.md).
    """

    def __init__(self, channels: int, bn_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.channels = channels
        self.IN = InstanceNorm2d(channels, affine=True)
        self.BN = bn_layer(channels)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.IN(x), self.BN(x)), 1)


class PartialInstanceNorm2d(InstanceNorm2d):
    """Affine IN on the first ``int(channels * ratio)`` channels; the rest pass through unchanged (IBN-d).

    Parameters are those of an ``InstanceNorm2d`` over the normalized channels, so an IBN-b
    checkpoint's ``IN`` keys keep their meaning at ratio 1.
    """

    def __init__(self, channels: int, ratio: float = 0.5):
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"PartialInstanceNorm2d ratio must be in (0, 1], got {ratio}")
        super().__init__(max(1, int(channels * ratio)), affine=True)
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        k = self.num_features
        if k == self.channels:
            return self._normalize(x)
        head, tail = torch.split(x, [k, self.channels - k], dim=1)
        return torch.cat([self._normalize(head), tail], 1)
