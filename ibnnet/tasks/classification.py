"""ImageNet-style classification (both papers' recipe by default)."""
from __future__ import annotations

from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from .base import TaskBase
from .common import build_model, load_initial_weights


class ClassificationTask(TaskBase):
    def __init__(self, cfg: dict, num_classes: int, val_names: list[str]):
        super().__init__(cfg, num_classes, val_names)
        self.model = build_model(self.cfg.model, num_classes, runs_root=self.cfg.paths.runs, with_weights=False)
        self.criterion = nn.CrossEntropyLoss()
        top5 = min(5, num_classes)
        # A list in dataloader order: eval-set names such as "std1.5" are not valid module names.
        self.val_metrics = nn.ModuleList([
            MetricCollection({
                "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                "top5": MulticlassAccuracy(num_classes, top_k=top5, average="micro"),
            }) for _ in self.val_names
        ])

    def load_initial_weights(self) -> bool:
        return load_initial_weights(self.model, self.cfg.model, self.num_classes, self.cfg.paths.runs)

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = self.criterion(logits, y)
        acc = (logits.detach().argmax(1) == y).float().mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/top1_acc", 100 * acc, on_step=False, on_epoch=True, sync_dist=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch[0], batch[1]
        self.val_metrics[dataloader_idx].update(self(x), y)

    def on_validation_epoch_end(self) -> None:
        results = {}
        for name, metrics in zip(self.val_names, self.val_metrics):
            values = metrics.compute()
            top1, top5 = 100 * self.as_float(values["top1"]), 100 * self.as_float(values["top5"])
            results[name] = {"top1_acc": top1, "top5_acc": top5, "top1_err": 100 - top1, "top5_err": 100 - top5}
            metrics.reset()
        self.log_eval_results(results)
