"""Emulating more devices than a run has: ``trainer.physical_devices``.

A run configured for ``trainer.devices`` = 8 with ``data.batch_size`` = 2 (the SN paper's (8, 2)) but
``physical_devices`` = 1 trains on one process with 16 images per step; every BN and SN layer computes
its statistics over consecutive sub-batches of 2 (ghost batches, docs/normalization.md), the loss is
averaged over all 16 as DDP averages gradients over 8 GPUs, and the learning rate, which follows the
total batch, is unchanged. GroupNorm, LayerNorm and InstanceNorm do not depend on the batch at all.
The run's config.yaml keeps the logical setting; metrics.json records the physical world size.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from ..models import MODELS, VARIANTS


def effective_norm(m) -> str:
    if m.norm:
        return m.norm
    return VARIANTS[MODELS[m.name][1]].get("norm", "bn")


def physical_config(cfg: DictConfig) -> DictConfig:
    """The configuration the processes actually run with (``cfg`` itself when nothing is emulated)."""
    t = cfg.trainer
    if not t.physical_devices or t.physical_devices == t.devices:
        return cfg
    factor = t.devices // t.physical_devices
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    out.trainer.devices = t.physical_devices
    out.data.batch_size = cfg.data.batch_size * factor
    norm = effective_norm(cfg.model)
    if norm in ("bn", "ghost_bn", "sn"):
        out.model.norm = "ghost_bn" if norm in ("bn", "ghost_bn") else "sn"
        out.model.ghost_batch_size = cfg.data.batch_size
    return out
