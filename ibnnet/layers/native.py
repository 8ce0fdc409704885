"""The layers' math in PyTorch's own ops: scriptable, exportable, compilable and fx-traceable.

These functions are what the normalization layers run wherever the fused moment kernel is not chosen
(:mod:`ibnnet.layers.kernels`): on CUDA, in half precision, and under ``torch.jit.script``,
``torch.fx``, ``torch.export`` and ``torch.compile``. They are TorchScript-compatible (type
annotations, no closures) and registered with ``torch.fx.wrap``, so fx symbolic tracing records each
as one call instead of tracing shape-dependent Python inside it; callers must reach them as attributes
of this module (``native.switch_norm(...)``), which is the name ``torch.fx.wrap`` patches.

Half precision: the plain-op paths (SN, ghost BN, channels-last IN) compute in float32 copies of the
activation, like the fused kernel did before it learned to work in the input's dtype: exact, but the
copies cost time and saved memory. That is why, in eager mode, the layers without a native PyTorch op
run the fused kernel in half precision (:mod:`ibnnet.layers.kernels`); these paths then serve graph
capture (where Inductor fuses the copies away) and channels-last IN on CUDA.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.fx
from torch import Tensor
from torch.nn import functional as F


def _stats_dtype(x: Tensor) -> torch.dtype:
    if x.dtype == torch.float16 or x.dtype == torch.bfloat16:
        return torch.float32
    return x.dtype


def moments(x: Tensor, correction: int) -> Tuple[Tensor, Tensor]:
    """(N, C) mean and variance over H*W, float32 for half inputs; a single pixel has zero spread, not NaN."""
    hw = x.shape[2] * x.shape[3]
    corr = correction if hw > correction else 0
    var, mean = torch.var_mean(x.to(_stats_dtype(x)), dim=[2, 3], correction=corr)
    return mean, var


def affine(mean: Tensor, var: Tensor, eps: float, weight: Optional[Tensor],
           bias: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """(scale, shift) with ``x * scale + shift == weight * (x - mean) / sqrt(var + eps) + bias``."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def apply_affine(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``x * scale + shift`` with (N, C) or (1, C) statistics, in float32 for half inputs (no cancellation
    when |mean| >> std); keeps x's dtype and memory format."""
    xs = x.to(_stats_dtype(x))
    return (xs * scale[:, :, None, None] + shift[:, :, None, None]).to(x.dtype)


def group_mean(t: Tensor, group_size: int) -> Tensor:
    """(N, C) statistics averaged over consecutive groups of ``group_size`` samples, broadcast back to (N, C).

    ``group_size <= 0`` or ``>= N`` averages the whole batch; a smaller last group keeps its own statistics.
    """
    n = t.shape[0]
    if group_size <= 0 or group_size >= n:
        return t.mean(0, keepdim=True).expand_as(t)
    full = (n // group_size) * group_size
    head = t[:full].reshape(n // group_size, group_size, -1).mean(1, keepdim=True)
    head = head.expand(-1, group_size, -1).reshape(full, -1)
    if full == n:
        return head
    tail = t[full:].mean(0, keepdim=True).expand(n - full, -1)
    return torch.cat([head, tail], 0)


def pool_over_samples(mean: Tensor, var: Tensor, group_size: int = 0) -> Tuple[Tensor, Tensor]:
    """BN moments from IN moments (SN paper eq. 4) per (ghost) batch, broadcast to (N, C): mean of variances
    + variance of means, the same number as E[x^2] - mean^2 without its cancellation when |mean| >> std."""
    m = group_mean(mean, group_size)
    return m, group_mean(var, group_size) + group_mean((mean - m).square(), group_size)


def update_running(running_mean: Tensor, running_var: Tensor, num_batches_tracked: Optional[Tensor],
                   momentum: Optional[float], mean: Tensor, var: Tensor, count: int) -> None:
    """PyTorch's BN running-statistics update from (C,) batch moments (biased ``var`` over ``count`` values)."""
    with torch.no_grad():
        factor = 0.0 if momentum is None else momentum
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
            if momentum is None:
                factor = 1.0 / float(num_batches_tracked.item())
        unbiased = var * (count / (count - 1)) if count > 1 else var
        running_mean.lerp_(mean.detach().to(running_mean.dtype), factor)
        running_var.lerp_(unbiased.detach().to(running_var.dtype), factor)


@torch.fx.wrap
def instance_norm(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                  weight: Optional[Tensor], bias: Optional[Tensor], use_input_stats: bool,
                  momentum: float, eps: float) -> Tensor:
    """``F.instance_norm``; channels-last 4D input without running statistics stays channels-last
    (PyTorch's instance norm reshapes it through a contiguous NCHW copy and returns NCHW)."""
    if x.dim() == 3:  # unbatched (C, H, W), as nn.InstanceNorm2d accepts
        return F.instance_norm(x[None], running_mean, running_var, weight, bias, use_input_stats, momentum, eps)[0]
    # Channels innermost (channels-last, or a channel slice of it, as in IBN): plain ops keep the layout.
    if x.dim() == 4 and running_mean is None and x.stride(1) == 1 and x.shape[1] > 1:
        mean, var = moments(x, 0)
        scale, shift = affine(mean, var, eps, weight, bias)
        return apply_affine(x, scale, shift)
    return F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)


@torch.fx.wrap
def batch_norm(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               num_batches_tracked: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor],
               training: bool, momentum: Optional[float], eps: float, ghost_batch_size: int) -> Tensor:
    """``nn.BatchNorm2d.forward`` with the training statistics taken per ghost batch of ``ghost_batch_size``
    images (one group, i.e. ``F.batch_norm``, when it is 0 or covers the batch)."""
    n = x.shape[0]
    one_group = ghost_batch_size <= 0 or ghost_batch_size >= n
    if not training or one_group:
        factor = 0.0 if momentum is None else momentum
        if training and num_batches_tracked is not None:
            num_batches_tracked.add_(1)
            if momentum is None:
                factor = 1.0 / float(num_batches_tracked.item())
        use_batch_stats = training or running_mean is None
        return F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, factor, eps)
    mean_in, var_in = moments(x, 0)
    mean, var = pool_over_samples(mean_in, var_in, ghost_batch_size)
    if running_mean is not None and running_var is not None:
        hw = x.shape[2] * x.shape[3]
        update_running(running_mean, running_var, num_batches_tracked, momentum,
                       mean.mean(0), var.mean(0), ghost_batch_size * hw)
    scale, shift = affine(mean, var, eps, weight, bias)
    return apply_affine(x, scale, shift)


@torch.fx.wrap
def switch_norm(x: Tensor, weight: Tensor, bias: Tensor, mean_weight: Tensor, var_weight: Tensor,
                running_mean: Optional[Tensor], running_var: Optional[Tensor], training: bool, eps: float,
                ghost_batch_size: int) -> List[Tensor]:
    """SN (paper eq. 3-4, unbiased IN variance as the official layer): ``[y, mean_bn, var_bn]``, the
    last two the (N, C) batch moments used in training (empty when there is no BN branch or in eval)."""
    mean_in, var_in = moments(x, 1)
    m_ln = mean_in.mean(1, keepdim=True)
    v_ln = var_in.mean(1, keepdim=True) + (mean_in - m_ln).square().mean(1, keepdim=True)
    mw = torch.softmax(mean_weight, 0)
    vw = torch.softmax(var_weight, 0)
    mean = mw[0] * mean_in + mw[1] * m_ln
    var = vw[0] * var_in + vw[1] * v_ln
    empty = mean_in.new_empty(0)
    batch = [empty, empty]
    if running_mean is not None and running_var is not None:
        if training:
            m_bn, v_bn = pool_over_samples(mean_in, var_in, ghost_batch_size)
            batch = [m_bn.detach(), v_bn.detach()]
        else:
            m_bn, v_bn = running_mean[None].to(mean.dtype), running_var[None].to(var.dtype)
        mean = mean + mw[2] * m_bn
        var = var + vw[2] * v_bn
    scale = weight * torch.rsqrt(var + eps)
    return [apply_affine(x, scale, bias - mean * scale), batch[0], batch[1]]
