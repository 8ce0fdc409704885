"""Semantic segmentation: dilated IBN/SN ResNet + the authors' head (or DeepLabV3's ASPP).

The IBN authors describe their (unreleased) segmentation network as PSPNet without the pyramid
pooling module (issue 14 of their repository): a dilated ResNet-50 at output stride 8, a classifier
on the backbone output, bilinear upsampling to the input size.  ``head=fcn`` is that classifier
(3x3 conv to C/4 channels, BN, ReLU, dropout 0.1, 1x1 conv: torchvision's FCNHead); ``head=aspp`` is
torchvision's DeepLabV3 head.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from .base import TaskBase
from .common import build_model, load_segmentation_weights, resolve_weights_path
from .metrics import ConfusionMatrix
from .optim import param_groups


class SegmentationNet(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, head: str = "fcn"):
        super().__init__()
        self.backbone = backbone
        ch = backbone.num_features
        self.head = FCNHead(ch, num_classes) if head == "fcn" else DeepLabHead(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone.forward_features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@torch.no_grad()
def slide_inference(net: nn.Module, image: torch.Tensor, num_classes: int, crop: tuple[int, int],
                    stride: tuple[int, int]) -> torch.Tensor:
    """Average the logits of overlapping crops covering the whole (padded) image."""
    n, _, h, w = image.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    sh, sw = stride
    rows = max(1, math.ceil((h - ch) / sh) + 1)
    cols = max(1, math.ceil((w - cw) / sw) + 1)
    logits = image.new_zeros(n, num_classes, h, w)
    count = image.new_zeros(1, 1, h, w)
    for r in range(rows):
        for c in range(cols):
            y0 = min(r * sh, h - ch)
            x0 = min(c * sw, w - cw)
            logits[:, :, y0:y0 + ch, x0:x0 + cw] += net(image[:, :, y0:y0 + ch, x0:x0 + cw])
            count[:, :, y0:y0 + ch, x0:x0 + cw] += 1
    return logits / count


class SegmentationTask(TaskBase):
    def __init__(self, cfg: dict, num_classes: int, val_names: list[str]):
        super().__init__(cfg, num_classes, val_names)
        s = self.cfg.segmentation
        m = self.cfg.model
        backbone = build_model(m, num_classes=0, load_file=False, output_stride=s.output_stride)
        self.net = SegmentationNet(backbone, num_classes, s.head)
        if m.pretrained_file:
            load_segmentation_weights(self.net, resolve_weights_path(m.pretrained_file, self.cfg.paths.runs))
        self.eval_specs = {spec.name: spec for spec in self.cfg.data.val}
        self.criterion = nn.CrossEntropyLoss(ignore_index=s.ignore_index)
        # A list in dataloader order: eval-set names such as "std1.5" are not valid module names.
        self.val_metrics = nn.ModuleList([ConfusionMatrix(num_classes, s.ignore_index) for _ in self.val_names])

    def parameter_groups(self) -> list[dict]:
        o = self.cfg.optim
        return (param_groups(self.net.backbone.named_parameters(), o.weight_decay, o.no_weight_decay_norm_bias,
                             lr_mult=o.backbone_lr_mult)
                + param_groups(self.net.head.named_parameters(), o.weight_decay, o.no_weight_decay_norm_bias))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.criterion(self(x), y)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        s = self.cfg.segmentation
        if s.eval_mode == "slide":
            return slide_inference(self, x, self.num_classes, tuple(s.slide_crop), tuple(s.slide_stride))
        return self(x)

    def predict_scores(self, x: torch.Tensor, scales=(1.0,), flip: bool = False) -> torch.Tensor:
        """Class probabilities at the input size, averaged over test scales (and mirrored copies)."""
        if list(scales) == [1.0] and not flip:
            return self._infer(x)
        h, w = x.shape[-2:]
        total = None
        for scale in scales:
            xs = x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            for mirrored in ((False, True) if flip else (False,)):
                logits = self._infer(xs.flip(-1) if mirrored else xs)
                if mirrored:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != (h, w):
                    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
                probs = logits.softmax(1)
                total = probs if total is None else total + probs
        return total

    def training_time_reduced(self) -> bool:
        # Multi-scale + flip costs len(scales) x 2 forward passes per image: during training, validations
        # (every trainer.check_val_every_n_epoch epochs) are single-scale; the final evaluation after
        # training uses the eval sets' scales and flip (segmentation.multiscale_during_training to change).
        return not self.cfg.segmentation.multiscale_during_training and any(
            list(spec.scales) != [1.0] or spec.flip for spec in self.eval_specs.values())

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch
        name = self.val_names[dataloader_idx]
        spec = self.eval_specs.get(name)
        if spec is None or (self.fitting() and self.training_time_reduced()):
            scores = self._infer(x)
        else:
            scores = self.predict_scores(x, spec.scales, spec.flip)
        self.val_metrics[dataloader_idx].update(scores.argmax(1), y)

    def on_validation_epoch_end(self) -> None:
        results = {}
        for name, metric in zip(self.val_names, self.val_metrics):
            scores = metric.compute()
            res = {"miou": self.as_float(scores["miou"]), "pixel_acc": self.as_float(scores["pixel_acc"])}
            res.update({f"iou_{i}": self.as_float(v) for i, v in enumerate(scores["iou"])})
            res["confmat"] = scores["confmat"].cpu().tolist()
            results[name] = res
            metric.reset()
        self.log_eval_results(results, reduced=self.fitting() and self.training_time_reduced())
