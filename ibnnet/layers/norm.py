"""One factory for every normalization the models and experiment grids use."""
from __future__ import annotations

from functools import partial
from typing import Callable

from torch import nn

from .batch_norm import GhostBatchNorm2d, InstanceNorm2d
from .switch_norm import SwitchNorm2d

NORM_KINDS = ("bn", "syncbn", "gn", "in", "ln", "sn", "ghost_bn")
_ALIASES = {"batchnorm": "bn", "sync_bn": "syncbn", "groupnorm": "gn", "instancenorm": "in", "layernorm": "ln",
            "switchnorm": "sn", "ghost-bn": "ghost_bn", "ghostbn": "ghost_bn"}


def canonical_norm(kind: str) -> str:
    k = _ALIASES.get(kind.lower(), kind.lower())
    if k not in NORM_KINDS:
        raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORM_KINDS)}")
    return k


def _group_norm(channels: int, groups: int, **kwargs) -> nn.GroupNorm:
    if channels % groups:
        raise ValueError(f"GroupNorm with {groups} groups cannot split {channels} channels; "
                         f"pick gn_groups dividing every layer width")
    return nn.GroupNorm(groups, channels, **kwargs)


def get_norm_layer(kind: str, *, gn_groups: int = 32, ghost_batch_size: int = 0, eps: float = 1e-5,
                   sn_momentum: float = 0.1, sn_using_bn: bool = True, sn_using_moving_average: bool = True,
                   ) -> Callable[[int], nn.Module]:
    """A ``channels -> module`` constructor.

    - ``bn``: BatchNorm2d; ``syncbn``: SyncBatchNorm (statistics over all processes; needs CUDA under DDP)
    - ``ghost_bn``: BN with statistics over sub-batches of ``ghost_batch_size`` images (docs/normalization.md)
    - ``gn``: GroupNorm(``gn_groups``); ``ln``: GroupNorm(1) = LayerNorm over (C, H, W) with per-channel affine
    - ``in``: affine InstanceNorm2d without running statistics
    - ``sn``: SwitchNorm2d; ``ghost_batch_size`` also applies to its BN branch
    """
    kind = canonical_norm(kind)
    if kind == "bn":
        return partial(nn.BatchNorm2d, eps=eps)
    if kind == "ghost_bn":
        return partial(GhostBatchNorm2d, ghost_batch_size=ghost_batch_size, eps=eps)
    if kind == "syncbn":
        return partial(nn.SyncBatchNorm, eps=eps)
    if kind == "gn":
        return partial(_group_norm, groups=gn_groups, eps=eps)
    if kind == "ln":
        return partial(_group_norm, groups=1, eps=eps)
    if kind == "in":
        return partial(InstanceNorm2d, affine=True, eps=eps)
    return partial(SwitchNorm2d, eps=eps, momentum=sn_momentum, using_bn=sn_using_bn,
                   using_moving_average=sn_using_moving_average, ghost_batch_size=ghost_batch_size)


def create_norm(kind: str, channels: int, **kwargs) -> nn.Module:
    return get_norm_layer(kind, **kwargs)(channels)
