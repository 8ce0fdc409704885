"""Semantic segmentation: dilated IBN/SN ResNet + the authors' head (or DeepLabV3's ASPP).

The IBN authors describe their (unreleased) segmentation network as PSPNet without the pyramid
pooling module (issue 14 of their repository): a dilated ResNet-50 at output stride 8, a classifier
on the backbone output, bilinear upsampling to the input size.  ``head=fcn`` is that classifier
(3x3 conv to C/4 channels, norm, ReLU, dropout 0.1, 1x1 conv: torchvision's FCNHead layout);
``head=aspp`` is torchvision's DeepLabV3 head; ``head=deeplabv2`` is the ASPP of DeepLab (Chen et al.,
TPAMI 2018, the DeepLab the SN paper cites in appendix E): four 3x3 atrous classifiers, rates 6/12/18/24,
summed.  The heads' norm layers are the run's ``model.norm`` (SyncBN, GN, SN, ...), never a fixed BN.

``segmentation.aux_weight`` > 0 adds PSPNet's auxiliary head on layer3 (3x3 conv to 256, norm, ReLU,
dropout 0.1, 1x1 conv); the training loss is main + aux_weight * aux (SN appendix E: "use the auxiliary
loss with the weight 0.4 during training").  The auxiliary head is not used in evaluation.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from ..config.emulation import effective_norm
from ..data.registry import class_subsets
from ..data.transforms.pipeline import normalize_batch
from ..layers.norm import get_norm_layer
from .base import TaskBase
from .common import (
    build_model,
    load_initial_weights,
    load_segmentation_weights,
    model_kwargs,
    resolve_weights_path,
)
from .metrics import ConfusionMatrix, subset_miou
from .optim import param_groups

HEADS = ("fcn", "aspp", "deeplabv2")


def conv_norm_head(in_ch: int, mid_ch: int, num_classes: int, norm, dropout=nn.Dropout) -> nn.Sequential:
    """3x3 conv, norm, ReLU, dropout 0.1, 1x1 classifier: FCNHead's layout (same state_dict keys with BN),
    also PSPNet's auxiliary head (which drops whole channels, Dropout2d)."""
    return nn.Sequential(nn.Conv2d(in_ch, mid_ch, 3, padding=1, bias=False), norm(mid_ch), nn.ReLU(inplace=True),
                         dropout(0.1), nn.Conv2d(mid_ch, num_classes, 1))


class DeepLabV2Head(nn.Module):
    """DeepLab-v2's ASPP for ResNet: parallel 3x3 atrous classifiers whose scores are summed (no norm layers)."""

    def __init__(self, in_ch: int, num_classes: int, rates=(6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_ch, num_classes, 3, padding=r, dilation=r) for r in rates)
        for conv in self.branches:   # DeepLab-v2 initialises its classifiers N(0, 0.01)
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


def _swap_batch_norms(module: nn.Module, norm) -> nn.Module:
    """torchvision's heads hard-code BatchNorm2d; give them the run's norm (same module names)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, norm(child.num_features))
        else:
            _swap_batch_norms(child, norm)
    return module


def build_head(kind: str, in_ch: int, num_classes: int, norm) -> nn.Module:
    if kind == "fcn":
        return conv_norm_head(in_ch, in_ch // 4, num_classes, norm)
    if kind == "aspp":
        return _swap_batch_norms(DeepLabHead(in_ch, num_classes), norm)
    if kind == "deeplabv2":
        return DeepLabV2Head(in_ch, num_classes)
    raise ValueError(f"segmentation.head: unknown head {kind!r}; choose one of {', '.join(HEADS)}")


def head_norm(m):
    """``channels -> norm module`` of the run's ``model.norm`` (with its GN groups, ghost batch, SN options)."""
    return get_norm_layer(effective_norm(m), **model_kwargs(m)["norm_kwargs"])


class SegmentationNet(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, head: str = "fcn", norm=nn.BatchNorm2d,
                 aux: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = build_head(head, backbone.num_features, num_classes, norm)
        self.aux_head = None
        if aux:
            stage3 = [f for f in getattr(backbone, "feature_info", []) if f.get("module") == "layer3"]
            if not stage3:
                raise ValueError("segmentation.aux_weight > 0 needs a ResNet backbone (an auxiliary head on layer3)")
            # PSPNet: 1024 -> 256 channels for ResNet-50
            self.aux_head = conv_norm_head(stage3[0]["num_chs"], 256, num_classes, norm, dropout=nn.Dropout2d)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = self.backbone
        if self.aux_head is None:
            return b.forward_features(x), None
        x = b.maxpool(b.act1(b.bn1(b.conv1(x))))
        c3 = b.layer3(b.layer2(b.layer1(x)))
        return b.layer4(c3), c3

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Main and auxiliary logits at the input size (aux is None without an auxiliary head).

        Through ``self(...)``, i.e. ``nn.Module.__call__``: after ``nn.Module.compile`` (``trainer.compile``)
        that is the compiled forward; calling a method of the module directly would run it eagerly."""
        return self(x, with_aux=True)

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        """Logits at the input size; ``with_aux``: (main, aux) logits, the training forward."""
        up = lambda t: F.interpolate(t, size=x.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
        if self.aux_head is None:
            main = up(self.head(self.backbone.forward_features(x)))
            return (main, None) if with_aux else main
        c4, c3 = self._features(x)
        if not with_aux:   # evaluation: the auxiliary head is not used
            return up(self.head(c4))
        return up(self.head(c4)), up(self.aux_head(c3))


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
        backbone = build_model(m, num_classes=0, with_weights=False, output_stride=s.output_stride)
        self.net = SegmentationNet(backbone, num_classes, s.head, norm=head_norm(m), aux=s.aux_weight > 0)
        self.eval_specs = {spec.name: spec for spec in self.cfg.data.val}
        self.criterion = nn.CrossEntropyLoss(ignore_index=s.ignore_index)
        # A list in dataloader order: eval-set names such as "std1.5" are not valid module names.
        self.val_metrics = nn.ModuleList([ConfusionMatrix(num_classes, s.ignore_index) for _ in self.val_names])

    def load_initial_weights(self) -> bool:
        """A segmentation checkpoint (backbone and head) or a classification one / official weights (backbone)."""
        m, runs = self.cfg.model, self.cfg.paths.runs
        if m.pretrained_file:
            load_segmentation_weights(self.net, resolve_weights_path(m.pretrained_file, runs))
            return True
        return load_initial_weights(self.net.backbone, m, 0, runs, output_stride=self.cfg.segmentation.output_stride)

    def parameter_groups(self) -> list[dict]:
        o = self.cfg.optim
        return (param_groups(self.net.backbone.named_parameters(), o.weight_decay, o.no_weight_decay_norm_bias,
                             lr_mult=o.backbone_lr_mult)
                + param_groups([(f"{prefix}.{n}", p) for prefix in ("head", "aux_head")
                                if getattr(self.net, prefix) is not None
                                for n, p in getattr(self.net, prefix).named_parameters()],
                               o.weight_decay, o.no_weight_decay_norm_bias))

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """main + aux_weight * aux (training only), and the parts for logging."""
        if self.net.aux_head is None:
            loss = self.criterion(self(x), y)
            return loss, {}
        if self.cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        main, aux = self.net.forward_with_aux(x)
        main_loss, aux_loss = self.criterion(main, y), self.criterion(aux, y)
        return main_loss + self.cfg.segmentation.aux_weight * aux_loss, {"loss_main": main_loss, "loss_aux": aux_loss}

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        loss, parts = self.training_loss(x, y)
        self.log_loss("train/loss", loss, prog_bar=True)
        for name, value in parts.items():
            self.log_loss(f"train/{name}", value)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        s = self.cfg.segmentation
        if s.eval_mode == "slide":
            return slide_inference(self, x, self.num_classes, tuple(s.slide_crop), tuple(s.slide_stride))
        return self(x)

    def predict_scores(self, x: torch.Tensor, scales=(1.0,), flip: bool = False, sizes=None) -> torch.Tensor:
        """Class probabilities at the input size, averaged over test scales (and mirrored copies).

        ``sizes`` (instead of ``scales``): the image is resized to s x s for each s (ADE20K in SN appendix E,
        whose training images are resized to 450 x 450); the scores come back at the input's size."""
        x = normalize_batch(x)   # uint8 from a loader: resizing for the scales needs the float image
        if not sizes and list(scales) == [1.0] and not flip:
            return self._infer(x)
        h, w = x.shape[-2:]

        def inputs():
            if sizes:
                # antialiased like the training images' resize (torchvision's Resize, antialias=True)
                for s in sizes:
                    yield x if (h, w) == (s, s) else F.interpolate(x, size=(s, s), mode="bilinear",
                                                                   align_corners=False, antialias=True)
                return
            for scale in scales:
                yield x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear",
                                                           align_corners=False)

        total = None
        for xs in inputs():
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
            list(spec.scales) != [1.0] or spec.flip or len(getattr(spec, "sizes", None) or ()) > 1
            for spec in self.eval_specs.values())

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch[0], batch[1]
        name = self.val_names[dataloader_idx]
        spec = self.eval_specs.get(name)
        sizes = getattr(spec, "sizes", None) if spec is not None else None
        if spec is None or (self.fitting() and self.training_time_reduced()):
            # one forward pass: a set with test sizes is seen at its first size (there is no "original" input)
            scores = self.predict_scores(x, sizes=sizes[:1]) if sizes else self._infer(x)
        else:
            scores = self.predict_scores(x, spec.scales, spec.flip, sizes)
        self.val_metrics[dataloader_idx].update(scores.argmax(1), y)

    def on_validation_epoch_end(self) -> None:
        results = {}
        for name, metric in zip(self.val_names, self.val_metrics):
            scores = metric.compute()
            res = {"miou": self.as_float(scores["miou"]), "pixel_acc": self.as_float(scores["pixel_acc"])}
            # SYNTHIA-trained models: mIoU-16/13 on the real Cityscapes-labelled targets (data/registry.py)
            for key, classes in class_subsets(self.cfg.data.train.dataset, self.eval_specs[name].dataset).items():
                res[key] = self.as_float(subset_miou(scores["iou"], classes))
            res.update({f"iou_{i}": self.as_float(v) for i, v in enumerate(scores["iou"])})
            res["confmat"] = scores["confmat"].cpu().tolist()
            results[name] = res
            metric.reset()
        self.log_eval_results(results, reduced=self.fitting() and self.training_time_reduced())
