"""Switchable Normalization (Luo et al., ICLR 2019).

Numerically the official layer by default: IN statistics with the UNBIASED variance over H*W, LN and
BN statistics derived from them (paper eq. 4), two independent softmaxes over [IN, LN, BN] for means
and variances, and in eval mode only the BN branch switches to running statistics.

Differences from the official code, all deliberate:
- ``momentum`` follows PyTorch's convention (``running = (1 - m) * running + m * batch``); the
  official ``momentum=0.9`` is ``0.1`` here and the 2018 model zoo's ``0.997`` is ``0.003``.
- ``weight``/``bias`` are (C,) and running stats (C,); official (1,C,1,1)/(1,C,1) state is reshaped on
  load, so released checkpoints load unchanged.
- H*W == 1 gives a zero IN variance instead of NaN.
- ``ghost_batch_size`` computes the BN branch over fixed-size sub-batches (see ``docs/normalization.md``).
- ``using_moving_average=False`` keeps no running statistics while training; inference then needs
  :func:`ibnnet.layers.batch_stats.estimate_batch_average_stats` (paper appendix A).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import native
from .kernels import use_fused
from .moments import moment_normalize, pool_over_channels, pool_over_samples


class SwitchNorm2d(nn.Module):
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        using_moving_average: bool = True,
        using_bn: bool = True,
        last_gamma: bool = False,
        ghost_batch_size: int = 0,
    ):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"SwitchNorm2d momentum must be in [0, 1] (PyTorch convention), got {momentum}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.using_moving_average = using_moving_average
        self.using_bn = using_bn
        self.last_gamma = last_gamma
        self.ghost_batch_size = ghost_batch_size
        n_branches = 3 if using_bn else 2
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.mean_weight = nn.Parameter(torch.ones(n_branches))
        self.var_weight = nn.Parameter(torch.ones(n_branches))
        if using_bn:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.zeros(num_features))
        else:  # None buffers: not in the state_dict, and TorchScript sees the missing BN branch statically
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
        # Set by ibnnet.layers.batch_stats while re-estimating statistics; None otherwise.
        self.stats_accumulator = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.using_bn:
            self.running_mean.zero_()
            self.running_var.zero_()
        nn.init.constant_(self.weight, 0.0 if self.last_gamma else 1.0)
        nn.init.zeros_(self.bias)
        nn.init.ones_(self.mean_weight)
        nn.init.ones_(self.var_weight)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, using_bn={self.using_bn}, "
            f"using_moving_average={self.using_moving_average}, ghost_batch_size={self.ghost_batch_size}"
        )

    def _stats(self, mean_in: Tensor, var_in: Tensor, weight, bias, mean_weight, var_weight):
        mean_ln, var_ln = pool_over_channels(mean_in, var_in)
        mw = torch.softmax(mean_weight, 0)
        vw = torch.softmax(var_weight, 0)
        mean = mw[0] * mean_in + mw[1] * mean_ln
        var = vw[0] * var_in + vw[1] * var_ln
        if self.using_bn:
            if self.training:
                mean_bn, var_bn = pool_over_samples(mean_in, var_in, self.ghost_batch_size)
                self._track(mean_bn, var_bn)
            else:
                mean_bn, var_bn = self.running_mean[None], self.running_var[None]
            mean = mean + mw[2] * mean_bn
            var = var + vw[2] * var_bn
        scale = weight * torch.rsqrt(var + self.eps)
        return scale, bias - mean * scale

    @torch.jit.unused
    def _track(self, mean_bn: Tensor, var_bn: Tensor) -> None:
        # mean_bn/var_bn are per-sample (N, C) copies of their (ghost) batch's BN moments; running
        # statistics average them, and like the official layer the variance gets no N/(N-1) correction.
        with torch.no_grad():
            dtype = self.running_mean.dtype
            mean_bn, var_bn = mean_bn.detach().to(dtype), var_bn.detach().to(dtype)
            if self.stats_accumulator is not None:
                self.stats_accumulator.add(mean_bn.mean(0), (var_bn + mean_bn.square()).mean(0))
            else:
                self._moving_average(mean_bn, var_bn)

    def _moving_average(self, mean_bn: Tensor, var_bn: Tensor) -> None:
        running_mean, running_var = self.running_mean, self.running_var
        if self.using_moving_average and running_mean is not None and running_var is not None:
            with torch.no_grad():
                running_mean.lerp_(mean_bn.detach().to(running_mean.dtype).mean(0), self.momentum)
                running_var.lerp_(var_bn.detach().to(running_var.dtype).mean(0), self.momentum)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            if use_fused("SwitchNorm2d", x, self.training):
                params = (self.weight, self.bias, self.mean_weight, self.var_weight)
                return moment_normalize(x, self._stats, params, correction=1)
        out = native.switch_norm(x, self.weight, self.bias, self.mean_weight, self.var_weight, self.running_mean,
                                 self.running_var, self.training, self.eps, self.ghost_batch_size)
        if self.training and self.running_mean is not None:
            if torch.jit.is_scripting():
                self._moving_average(out[1], out[2])
            else:
                self._track(out[1], out[2])
        return out[0]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Official checkpoints store (1,C,1,1) affine parameters and (1,C,1) running statistics.
        for name in ("weight", "bias", "running_mean", "running_var"):
            key = prefix + name
            if key in state_dict and state_dict[key].dim() > 1 and state_dict[key].numel() == self.num_features:
                state_dict[key] = state_dict[key].reshape(self.num_features)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
