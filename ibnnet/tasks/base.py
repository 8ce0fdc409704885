"""What both Lightning tasks share: optimizer, schedule, per-eval-set metric bookkeeping."""
from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from ..data.transforms import normalize_batch, prepare_batch
from .optim import build_optimizer, linear_scaled_lr, param_groups


class TaskBase(pl.LightningModule):
    def __init__(self, cfg: dict, num_classes: int, val_names: list[str]):
        super().__init__()
        # Plain containers only: checkpoints stay loadable with torch.load(weights_only=True).
        self.save_hyperparameters({"cfg": cfg, "num_classes": num_classes, "val_names": list(val_names)})
        self.cfg = OmegaConf.create(cfg)
        self.num_classes = num_classes
        self.val_names = list(val_names)
        self.last_val: dict[str, dict[str, Any]] = {}
        self.last_val_epoch = -1

    @property
    def network(self) -> torch.nn.Module:
        return self.model if hasattr(self, "model") else self.net

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Workers hand over uint8 images; scaling and ImageNet normalisation run here, on the device (as
        # timm's prefetcher does), bit-identical to the old worker-side float pipeline.
        return prepare_batch(batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Direct callers (e.g. the SN batch-average callback) may pass the loader's uint8 images.
        x = normalize_batch(x)
        if self.cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.network(x)

    def compile_model(self) -> None:
        """torch.compile the network in place (``trainer.compile``); state_dict keys are unchanged."""
        self.network.compile()

    # subclasses: self.model parameters split into backbone/head groups if they want different lrs
    def parameter_groups(self) -> list[dict]:
        o = self.cfg.optim
        return param_groups(self.named_parameters(), o.weight_decay, o.no_weight_decay_norm_bias)

    def total_batch(self) -> int:
        t = self.trainer
        return self.cfg.data.batch_size * max(1, t.world_size) * t.accumulate_grad_batches

    def configure_optimizers(self):
        o = self.cfg.optim
        total_steps = int(self.trainer.estimated_stepping_batches)
        max_epochs = self.trainer.max_epochs or 1
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            loader = self.trainer.datamodule.train_dataloader()
            limit = self.trainer.limit_train_batches
            n = len(loader) if isinstance(limit, float) else min(len(loader), int(limit))
            if isinstance(limit, float):
                n = max(1, int(n * limit))
            steps_per_epoch = max(1.0, n / self.trainer.accumulate_grad_batches)
        else:
            steps_per_epoch = max(1.0, total_steps / max_epochs)
        peak = linear_scaled_lr(o, self.total_batch())
        return build_optimizer(o, self.parameter_groups(), peak, steps_per_epoch, total_steps)

    def log_eval_results(self, results: dict[str, dict[str, float]]) -> None:
        flat = {f"val/{name}/{k}": v for name, res in results.items() for k, v in res.items()
                if isinstance(v, (int, float)) and math.isfinite(v)}
        # Values are already reduced across processes by torchmetrics; logging must not average them again.
        self.log_dict(flat, sync_dist=False, rank_zero_only=False)
        if not self.trainer.sanity_checking:
            self.last_val = results
            self.last_val_epoch = self.current_epoch

    def on_train_epoch_start(self) -> None:
        self.log("epoch_float", float(self.current_epoch), on_step=False, on_epoch=True)

    @staticmethod
    def as_float(t: torch.Tensor) -> float:
        return float(t.detach().cpu())
