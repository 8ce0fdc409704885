"""Batch normalization expressed through instance moments: ghost batches, and the BN half of IBN.

Semantics of ghost-batch BN (also in ``docs/normalization.md``): in training, the per-GPU batch of N
images is cut into consecutive sub-batches of ``ghost_batch_size`` images (a smaller last one keeps its
own statistics), and each sub-batch is normalized with its own mean and biased variance, exactly as if
it were alone on its own GPU with unsynchronised BN.  Running statistics are updated once per forward
with the average over sub-batches of their mean and unbiased variance.  Eval mode is plain BN.
So (1 GPU, 16 images, ghost 2) trains with the statistics of the SN paper's (8 GPUs, 2 images/GPU);
the gradient averaging over the 16 images is the same as DDP's average over 8 GPUs.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import native
from .kernels import use_fused
from .moments import moment_normalize, pool_over_samples


@torch.no_grad()
def update_running_stats(bn: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor, count: int) -> None:
    """PyTorch's BN running-statistics update from (C,) batch moments (biased ``var`` over ``count`` values)."""
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    unbiased = var * (count / (count - 1)) if count > 1 else var
    bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
    bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)


def bn_moments(bn: nn.modules.batchnorm._BatchNorm, mean_in: Tensor, var_in: Tensor, hw: int,
               group_size: int = 0) -> tuple[Tensor, Tensor]:
    """The moments ``bn`` normalizes with, given (N, C) instance moments; updates running stats in training."""
    if bn.training or not bn.track_running_stats:
        mean, var = pool_over_samples(mean_in, var_in, group_size)
        if bn.training and bn.track_running_stats:
            n = mean_in.shape[0]
            g = n if group_size <= 0 or group_size >= n else group_size
            # Average of the per-(ghost)-batch moments; one update per forward, like plain BN.
            update_running_stats(bn, mean.detach().mean(0), var.detach().mean(0), g * hw)
        return mean, var
    return bn.running_mean[None], bn.running_var[None]


# (scale, shift) of a normalisation from its moments: one definition, in native.py's scriptable form.
affine_from_moments = native.affine


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (same parameters and state_dict) computed by the fused moment kernel where
    :mod:`ibnnet.layers.kernels` chooses it, else by PyTorch's ``F.instance_norm``.

    PyTorch normalizes instances by reshaping to a (1, N*C, H, W) batch norm, which costs extra copies
    (and a copy to NCHW for channels-last input); the fused kernel is one statistics pass and one
    affine pass. Running statistics are PyTorch's implementation on every path.
    """

    def forward(self, x: Tensor) -> Tensor:
        return self._normalize(x)

    def _normalize(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            if use_fused("InstanceNorm2d", x, self.training) and not self.track_running_stats and x.dim() == 4:
                return self._fused_forward(x)
        momentum = self.momentum if self.momentum is not None else 0.0
        return native.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                    self.training or not self.track_running_stats, momentum, self.eps)

    @torch.jit.unused
    def _fused_forward(self, x: Tensor) -> Tensor:
        def stats(mean, var, *params):
            return affine_from_moments(mean, var, self.eps, *(params or (None, None)))

        return moment_normalize(x, stats, (self.weight, self.bias) if self.affine else (), correction=0)


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from sub-batches of ``ghost_batch_size`` images.

    Same parameters and state_dict as :class:`torch.nn.BatchNorm2d`, so checkpoints move freely
    between the two.  ``ghost_batch_size=0`` (or >= the batch) is ordinary BN.
    """

    def __init__(self, num_features: int, ghost_batch_size: int = 0, **kwargs):
        super().__init__(num_features, **kwargs)
        if ghost_batch_size < 0:
            raise ValueError(f"ghost_batch_size must be >= 0, got {ghost_batch_size}")
        self.ghost_batch_size = ghost_batch_size

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ghost_batch_size={self.ghost_batch_size}"

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            if use_fused("GhostBatchNorm2d", x, self.training):
                return self._fused_forward(x)
        return native.batch_norm(x, self.running_mean, self.running_var, self.num_batches_tracked, self.weight,
                                 self.bias, self.training, self.momentum, self.eps,
                                 self.ghost_batch_size if self.training else 0)

    @torch.jit.unused
    def _fused_forward(self, x: Tensor) -> Tensor:
        g = self.ghost_batch_size
        if not self.training or g <= 0 or g >= x.shape[0]:
            return super().forward(x)
        hw = x.shape[2] * x.shape[3]

        def stats(mean_in, var_in, *params):
            mean, var = bn_moments(self, mean_in, var_in, hw, g)
            return affine_from_moments(mean, var, self.eps, *(params or (None, None)))

        params = (self.weight, self.bias) if self.affine else ()
        return moment_normalize(x, stats, params, correction=0)
