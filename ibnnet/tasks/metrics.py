"""Segmentation metrics from one dataset-level confusion matrix, exact under DDP."""
from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class ConfusionMatrix(Metric):
    """Pixel confusion matrix (rows = target, columns = prediction), ``ignore_index`` pixels skipped.

    Not torchmetrics' MulticlassConfusionMatrix: with deterministic algorithms enabled its bincount
    falls back to a one-hot of every pixel (gigabytes at Cityscapes resolution).  Here a deterministic
    run counts by sorting instead, which stays O(pixels) in memory.
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.dim() == target.dim() + 1:
            preds = preds.argmax(1)
        if preds.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(preds.shape)} != target shape {tuple(target.shape)}")
        keep = target != self.ignore_index
        t, p = target[keep].long(), preds[keep].long()
        if t.numel() and (t.max() >= self.num_classes or t.min() < 0):
            raise ValueError(f"target contains class ids outside [0, {self.num_classes}) other than "
                             f"ignore_index={self.ignore_index}")
        idx = t * self.num_classes + p
        n2 = self.num_classes ** 2
        if torch.are_deterministic_algorithms_enabled() and idx.is_cuda:
            values, counts = torch.unique(idx, sorted=True, return_counts=True)
            self.confmat.view(-1).index_put_((values,), counts, accumulate=True)
        else:
            self.confmat += torch.bincount(idx, minlength=n2).view(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, Tensor]:
        # Under DDP this runs on the all-reduced matrix, which is returned too (the local one comes back after).
        return dict(segmentation_scores(self.confmat), confmat=self.confmat.clone())


def segmentation_scores(confmat: Tensor) -> dict[str, Tensor]:
    """mIoU over classes present in target or prediction, per-class IoU and pixel accuracy (in %)."""
    cm = confmat.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    valid = union > 0
    miou = iou[valid].mean() if valid.any() else torch.tensor(float("nan"), dtype=cm.dtype)
    acc = tp.sum() / cm.sum().clamp(min=1)
    return {"miou": 100 * miou, "pixel_acc": 100 * acc, "iou": 100 * iou}


def subset_miou(iou: Tensor, classes: tuple[int, ...]) -> Tensor:
    """Mean of the per-class IoUs (in %) of ``classes``, over those present in target or prediction; the
    SYNTHIA protocol's mIoU-16 and mIoU-13 (the other classes are not counted, even when predicted)."""
    sel = iou[list(classes)]
    sel = sel[~torch.isnan(sel)]
    return sel.mean() if sel.numel() else torch.tensor(float("nan"), dtype=iou.dtype)
