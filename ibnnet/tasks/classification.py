"""ImageNet-style classification (both papers' recipe by default)."""
from __future__ import annotations

import torch
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
        self.log_loss("train/loss", loss, prog_bar=True)
        self.log("train/top1_acc", 100 * acc, on_step=False, on_epoch=True, sync_dist=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch[0], batch[1]
        logits = self(x)
        keep = self._logit_classes(dataloader_idx, logits.device)
        if keep is not None:
            logits = restrict_logits(logits, keep)
        self.val_metrics[dataloader_idx].update(logits, y)

    def _logit_classes(self, dataloader_idx: int, device: torch.device) -> torch.Tensor | None:
        """The classes an evaluation set scores (ImageNet-R: its 200), from the data module; None = all."""
        dm = getattr(self.trainer, "datamodule", None)
        classes = getattr(dm, "val_logit_classes", None)
        if not classes or classes[dataloader_idx] is None:
            return None
        cache = self.__dict__.setdefault("_logit_class_cache", {})
        key = (dataloader_idx, str(device))
        if key not in cache:
            cache[key] = torch.as_tensor(classes[dataloader_idx], dtype=torch.long, device=device)
        return cache[key]

    def on_validation_epoch_end(self) -> None:
        results = {}
        for name, metrics in zip(self.val_names, self.val_metrics):
            values = metrics.compute()
            top1, top5 = 100 * self.as_float(values["top1"]), 100 * self.as_float(values["top5"])
            results[name] = {"top1_acc": top1, "top5_acc": top5, "top1_err": 100 - top1, "top5_err": 100 - top5}
            metrics.reset()
        results.update(imagenet_c_summaries(self.cfg.data.val, results, self.num_classes))
        self.log_eval_results(results)


def restrict_logits(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Logits of the other classes set to -inf: the prediction (top-k) ranges over ``classes`` only, as
    ImageNet-R's ``eval.py`` scores a 1000-class model on ``output[:, imagenet_r_mask]``."""
    out = torch.full_like(logits, float("-inf"))
    out[:, classes] = logits[:, classes]
    return out


def imagenet_c_summaries(val_specs, results: dict[str, dict], num_classes: int) -> dict[str, dict]:
    """For each ImageNet-C spec whose sets were all evaluated: its mCE etc. under the spec's own name.

    The clean error of the relative mCE is that of the first evaluation set reading ImageNet val with no
    appearance change (the configs name it ``origin``); without one there is no relative mCE.
    """
    from ..data.datasets.robustness import imagenet_c_sets, imagenet_c_summary
    clean = next((results[s.name]["top1_err"] for s in val_specs
                  if s.dataset == "imagenet" and s.split == "val" and s.appearance == "none" and s.name in results),
                 None)
    out = {}
    for spec in val_specs:
        if spec.dataset != "imagenet_c":
            continue
        sets = imagenet_c_sets(spec)
        if not all(name in results for name, _, _ in sets):   # an optional set that is absent
            continue
        out[spec.name] = imagenet_c_summary({(c, s): results[n]["top1_err"] for n, c, s in sets}, clean,
                                            num_classes, top5={(c, s): results[n]["top5_err"] for n, c, s in sets})
    return out
