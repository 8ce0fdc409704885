"""Batch-average inference statistics (SN paper, section 2 and appendix A).

Instead of the moving average accumulated while training, freeze the network, run K training
mini-batches through it in training mode without gradients, and set every layer's inference
statistics from those K batches:

- SwitchNorm2d: running_mean = mean_k(mu_k), running_var = mean_k(E_k[x^2]) - running_mean^2, with
  the BN-branch moments of each batch (the paper's definition; ghost batches are averaged first).
- BatchNorm layers (plain, ghost, and the BN half of IBN): the cumulative average of the K batch
  means and unbiased variances (PyTorch's ``momentum=None`` mode, as ``torch.optim.swa_utils.update_bn``).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from .switch_norm import SwitchNorm2d


class _MomentAccumulator:
    def __init__(self) -> None:
        self.count = 0
        self.mean_sum: Tensor | None = None
        self.ex2_sum: Tensor | None = None

    def add(self, mean: Tensor, ex2: Tensor) -> None:
        self.count += 1
        self.mean_sum = mean.clone() if self.mean_sum is None else self.mean_sum + mean
        self.ex2_sum = ex2.clone() if self.ex2_sum is None else self.ex2_sum + ex2


@torch.no_grad()
def estimate_batch_average_stats(
    model: nn.Module,
    batches: Iterable[Any],
    num_batches: int,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
) -> int:
    """Re-estimate all normalization statistics of ``model`` from ``num_batches`` of ``batches``.

    ``forward_fn(model, batch)`` runs one batch (default: ``model(batch[0])`` for (input, target) pairs,
    else ``model(batch)``).  Every other module stays in eval mode (dropout off) and training-mode flags
    are restored afterwards.  Returns the number of batches used.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    sn_layers = [m for m in model.modules() if isinstance(m, SwitchNorm2d) and m.using_bn]
    bn_layers = [m for m in model.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not sn_layers and not bn_layers:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bn_layers}
    if forward_fn is None:
        def forward_fn(net, batch):
            return net(batch[0] if isinstance(batch, (tuple, list)) else batch)
    # Restored if anything fails half-way, so a crashed estimate never leaves zeroed statistics behind.
    saved = {m: (m.running_mean.clone(), m.running_var.clone()) for m in sn_layers + bn_layers}
    used = 0
    ok = False
    try:
        model.eval()
        for m in sn_layers:
            m.train()
            m.stats_accumulator = _MomentAccumulator()
        for m in bn_layers:
            m.train()
            m.reset_running_stats()
            m.momentum = None
        for batch in batches:
            if used >= num_batches:
                break
            forward_fn(model, batch)
            used += 1
        if used == 0:
            raise ValueError("estimate_batch_average_stats got no batches")
        for m in sn_layers:
            acc = m.stats_accumulator
            if acc.count == 0:   # not on the inference path (a segmentation network's auxiliary head)
                m.running_mean.copy_(saved[m][0])
                m.running_var.copy_(saved[m][1])
                continue
            mean = acc.mean_sum / acc.count
            m.running_mean.copy_(mean)
            m.running_var.copy_(acc.ex2_sum / acc.count - mean.square())
        for m in bn_layers:
            if m.num_batches_tracked is not None and int(m.num_batches_tracked) == 0:   # as above: not run
                m.running_mean.copy_(saved[m][0])
                m.running_var.copy_(saved[m][1])
        ok = True
    finally:
        if not ok:
            for m, (mean, var) in saved.items():
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
        for m in sn_layers:
            m.stats_accumulator = None
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return used
