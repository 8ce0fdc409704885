"""Normalization from per-instance moments: the math shared by IBN, SN and ghost-batch statistics.

Every normalization in this package can be written as ``y = x * scale[n, c] + shift[n, c]`` where
``scale``/``shift`` are a small function of the per-(sample, channel) mean and variance of ``x``
(IN uses them directly, BN/LN average them over samples/channels, SN mixes all three; paper eq. 4).
:func:`moment_normalize` computes the moments in one pass, lets an arbitrary differentiable
``stats_fn`` turn them into ``scale``/``shift`` on tiny (N, C) tensors, and applies them in a
second pass.  The backward pass is written by hand so that it also touches the big tensor only
a few times (two reductions and one fused elementwise pass) instead of the dozen intermediate
tensors plain autograd would keep alive.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .native import (  # one definition each, in scriptable form
    group_mean,
    pool_over_samples,
)

StatsFn = Callable[..., tuple[Tensor, Tensor]]


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_view(x: Tensor) -> Tensor:
    """Half-precision tensors are processed in float32, like PyTorch's own batch norm kernels do."""
    return x.float() if x.dtype in _LOW_PRECISION else x


def _denominator(hw: int, correction: int) -> int:
    # A single pixel has no unbiased variance; treat it as zero spread instead of NaN.
    return hw - correction if hw > correction else hw


def instance_moments(x: Tensor, correction: int) -> tuple[Tensor, Tensor]:
    """Mean and variance over H*W for every (n, c); low-precision inputs are reduced in float32.

    Exact two-pass (mean, then the norm of the centred tensor): on CPU this is ~10x faster than
    ``torch.var_mean`` and has none of the cancellation of E[x^2] - mean^2.
    """
    xs = _compute_view(x)
    hw = x.shape[2] * x.shape[3]
    mean = xs.mean(dim=(2, 3), keepdim=True)
    var = torch.linalg.vector_norm(xs - mean, dim=(2, 3)).square() / _denominator(hw, correction)
    return mean.view(mean.shape[:2]), var


def centred_moments(x: Tensor, correction: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Half-precision moments without a float32 copy of ``x``: ``(mean, var, m_lp, xc)``.

    ``m_lp`` is the mean rounded to x's dtype (N, C) and ``xc = x - m_lp`` in x's dtype; ``xc`` is
    nearly exact (x and m_lp are close) and O(std), so everything computed from it in half precision
    (the sums below, the affine pass, the backward) keeps float32-like accuracy even when |mean| >> std,
    where ``x * scale + shift`` in half precision would cancel catastrophically. Reductions accumulate
    in float32 inside PyTorch's kernels; ``mean``/``var`` are float32 (N, C).
    """
    hw = x.shape[2] * x.shape[3]
    m_lp = x.mean(dim=(2, 3), keepdim=True)
    xc = x - m_lp
    # float32 results: a float16 sum or norm overflows (65504) on large images before it is converted
    s1 = xc.sum(dim=(2, 3), dtype=torch.float32)
    s2 = torch.linalg.vector_norm(xc, dim=(2, 3), dtype=torch.float32).square()
    d = s1 / hw
    m_lp = m_lp.view(m_lp.shape[:2])
    # sum (x - mean)^2 = sum (xc - d)^2 = s2 - d * s1
    var = (s2 - d * s1).clamp_min(0) / _denominator(hw, correction)
    return m_lp.float() + d, var, m_lp, xc


def _apply_centred(xc: Tensor, m_lp: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``x * scale + shift`` computed as ``xc * scale + (shift + m_lp * scale)`` in xc's dtype.

    Multiply then in-place add: PyTorch's CPU addcmul has no fast half-precision path with a broadcast
    first operand (measured ~2x slower than the two passes)."""
    t = (shift + m_lp.float() * scale).to(xc.dtype)
    return (xc * scale.to(xc.dtype)[:, :, None, None]).add_(t[:, :, None, None])


def _sum_hw(a: Tensor, b: Tensor | None = None) -> Tensor:
    """sum over H, W of a (or of a * b) -> (N, C)."""
    return (a if b is None else a * b).sum(dim=(2, 3))


def _sum_hw_float(a: Tensor) -> Tensor:
    """sum over H, W of a half-precision ``a`` -> float32 (N, C): accumulated and returned in float32, so that
    gradients scaled by a GradScaler (x2^16) do not overflow float16's 65504 in the sum."""
    return a.sum(dim=(2, 3), dtype=torch.float32)


def _dot_hw(a: Tensor, b: Tensor) -> Tensor:
    """sum over H, W of a * b of half-precision tensors -> float32 (N, C), without a full-size product where the
    kernel allows.

    A batched (1 x HW) @ (HW x 1) product accumulates in float32 inside the matmul kernel: on CUDA it also
    returns float32 (``out_dtype``); on CPU (no such kernel) it returns bfloat16, whose range is float32's and
    whose rounding of the sum (2^-9) is below the activations' own, measured faster than ``(a * b).sum()``.
    A float16 product or sum could overflow, so float16 on CPU multiplies float32 copies."""
    n, c, h, w = a.shape
    if a.is_contiguous() and b.is_contiguous():
        av, bv = a.view(n * c, 1, h * w), b.view(n * c, h * w, 1)
        if a.is_cuda:
            return torch.bmm(av, bv, out_dtype=torch.float32).view(n, c)
        if a.dtype == torch.bfloat16:
            return torch.bmm(av, bv).view(n, c).float()
    if a.dtype == torch.float16:
        return (a.float() * b.float()).sum(dim=(2, 3))
    return _sum_hw(a, b).float()


class _MomentNormalize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, stats_fn: StatsFn, correction: int, *params: Tensor) -> Tensor:
        low = x.dtype in _LOW_PRECISION
        if low:
            mean, var, m_lp, xc = centred_moments(x, correction)
        else:
            mean, var = instance_moments(x, correction)
        with torch.enable_grad():
            leaves = [mean.requires_grad_(), var.requires_grad_()]
            leaves += [p.detach().requires_grad_(p.requires_grad) for p in params]
            scale, shift = stats_fn(*leaves)
        ctx.stats_fn_graph = (leaves, scale, shift)
        ctx.correction = correction
        ctx.low_precision = low
        if low:
            # xc instead of x: the same size, and x itself is then free (a norm layer is usually the only
            # consumer of a convolution's output that keeps it for backward).
            ctx.save_for_backward(xc, m_lp)
            return _apply_centred(xc, m_lp, scale.detach(), shift.detach())
        ctx.save_for_backward(x)
        s = scale.detach()[:, :, None, None]
        t = shift.detach()[:, :, None, None]
        return torch.addcmul(t, x, s)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: Tensor):
        low = ctx.low_precision
        if low:
            xc, m_lp = ctx.saved_tensors
            x = xc
        else:
            (x,) = ctx.saved_tensors
        leaves, scale, shift = ctx.stats_fn_graph
        mean, var = leaves[0], leaves[1]
        if low:
            # Float32 (N, C) results from half-precision passes; sum gy * x = sum gy * xc + m_lp * sum gy.
            gshift = _sum_hw_float(gy)
            gscale = _dot_hw(gy, xc) + m_lp.float() * gshift
        else:
            gscale = _sum_hw(gy, x)
            gshift = _sum_hw(gy)
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        # The small (N, C) statistics graph is kept (retain_graph=True) so that a second backward through
        # the outer graph (``retain_graph=True`` there) finds it again; it is freed with the outer graph.
        grads = torch.autograd.grad((scale, shift), wanted, (gscale, gshift), allow_unused=True, retain_graph=True)
        grads = dict(zip(map(id, wanted), grads))
        gmean = grads.get(id(mean))
        gvar = grads.get(id(var))
        gparams = [grads.get(id(leaf)) if leaf.requires_grad else None for leaf in leaves[2:]]
        if not ctx.needs_input_grad[0]:
            return (None, None, None, *gparams)
        hw = x.shape[2] * x.shape[3]
        corr = ctx.correction if hw > ctx.correction else 0
        # d mean/dx = 1/HW and d var/dx = 2 (x - mean) / (HW - corr): the moment gradients are an
        # affine function of x per (n, c), fused with the direct term gy * scale.
        c2 = torch.zeros_like(mean) if gvar is None else gvar * (2.0 / (hw - corr))
        # Low precision: x - mean = xc - (mean - m_lp), so the affine term is in xc (no cancellation).
        c1 = -c2 * (mean - m_lp.float()) if low else -c2 * mean
        if gmean is not None:
            c1 = c1 + gmean / hw
        s = scale.detach().to(x.dtype)[:, :, None, None]
        if low:
            gx = xc * c2.to(x.dtype)[:, :, None, None]
            gx.addcmul_(gy, s)
            gx.add_(c1.to(x.dtype)[:, :, None, None])
        else:
            gx = torch.addcmul(c1.to(x.dtype)[:, :, None, None], x, c2.to(x.dtype)[:, :, None, None])
            gx.addcmul_(gy, s)
        return (gx, None, None, *gparams)


def moment_normalize(x: Tensor, stats_fn: StatsFn, params: Sequence[Tensor], correction: int = 0) -> Tensor:
    """``x * scale + shift`` with ``scale, shift = stats_fn(mean_in, var_in, *params)``.

    ``mean_in``/``var_in`` are (N, C) moments over H*W (``correction=1`` gives the unbiased variance);
    ``stats_fn`` must return (N, C) tensors (or broadcastable to it) and may have side effects such as
    running-statistics updates (it runs exactly once per forward).  Eager mode only: the layers call
    :mod:`ibnnet.layers.native` instead wherever :mod:`ibnnet.layers.kernels` does not choose this kernel.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a 4D (N, C, H, W) input, got shape {tuple(x.shape)}")
    if not torch.is_grad_enabled() or not (x.requires_grad or any(p.requires_grad for p in params)):
        n, c = x.shape[:2]
        if x.dtype in _LOW_PRECISION:
            mean, var, m_lp, xc = centred_moments(x, correction)
        else:
            mean, var = instance_moments(x, correction)
        with torch.no_grad():
            scale, shift = stats_fn(mean, var, *params)
            scale, shift = scale.expand(n, c), shift.expand(n, c)
            if x.dtype in _LOW_PRECISION:
                return _apply_centred(xc, m_lp, scale, shift)
            return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None])

    def full_stats(*args):
        scale, shift = stats_fn(*args)
        n, c = x.shape[:2]
        return scale.expand(n, c), shift.expand(n, c)

    return _MomentNormalize.apply(x, full_stats, correction, *params)


def pool_over_channels(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """LN moments from IN moments, (N, 1)."""
    m = mean.mean(1, keepdim=True)
    return m, var.mean(1, keepdim=True) + (mean - m).square().mean(1, keepdim=True)
