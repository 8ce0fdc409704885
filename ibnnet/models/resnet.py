"""One configurable ResNet family: IBN-a/b/c/d and combinations, any IN ratio and residual groups,
Switchable / Group / (ghost, sync) Batch Normalization, ResNeXt and SE blocks, dilation.

Follows timm's conventions (``timm/models/resnet.py``): the model class, ``default_cfgs`` with the
official weights, ``build_model_with_cfg`` and a ``checkpoint_filter_fn``, ``forward_intermediates`` /
``prune_intermediate_layers`` (so every ``features_only`` class works, ``feature_cls="getter"`` included).  Module names are those of
the official IBN-Net checkpoints (``bn1``, ``layerX.Y.bn1.IN``, ``layerX.Y.IN``, ``se.fc.0`` ...), so
official files load with ``strict=True``.  How each variant is read from the paper: docs/variants.md.
"""

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from timm.layers import create_classifier
from timm.models import checkpoint_seq
from torch import Tensor, nn
from torch.nn import functional as F

from ..layers import (
    IBN,
    IBNConcat,
    InstanceNorm2d,
    PartialInstanceNorm2d,
    SELayer,
    SwitchNorm2d,
    canonical_norm,
    get_norm_layer,
)

IBN_VARIANTS = ("none", "a", "b", "c", "d", "ad", "a2")
_IBN_ALIASES = {"": "none", "bn": "none", "a&d": "ad", "a+d": "ad", "a_d": "ad", "ax2": "a2", "a×2": "a2",
                "a_x2": "a2", "a*2": "a2"}
# The groups each variant puts IN into when ``ibn_groups`` is not given (official IBN-a / IBN-b).
DEFAULT_IBN_GROUPS = {"none": (), "a": (1, 2, 3), "c": (1, 2, 3), "a2": (1, 2, 3),
                      "b": (1, 2), "d": (1, 2), "ad": (1, 2, 3)}


def canonical_ibn(variant: str | None) -> str:
    v = "none" if variant is None else _IBN_ALIASES.get(str(variant).lower(), str(variant).lower())
    if v not in IBN_VARIANTS:
        raise ValueError(f"unknown IBN variant {variant!r}; choose one of {', '.join(IBN_VARIANTS)}")
    return v


@dataclass(frozen=True)
class BlockIBN:
    """Where one residual block puts instance normalization."""
    norm1: str = "norm"        # norm | ibn | concat   (the layer after conv1)
    norm2: str = "norm"        # norm | ibn            (the layer after conv2)
    post_add: str = "none"     # none | in | partial   (after the residual addition, before the ReLU)


def plan_block(variant: str, group: int, groups: Sequence[int], is_last_block: bool) -> BlockIBN:
    """The paper's variants as per-block decisions (docs/variants.md has the drawings)."""
    if variant == "none" or group not in groups:
        return BlockIBN()
    has_a = variant in ("a", "ad", "a2")
    norm1 = "concat" if variant == "c" else ("ibn" if has_a else "norm")
    norm2 = "ibn" if variant == "a2" else "norm"
    post_add = "none"
    if is_last_block and variant in ("b", "d", "ad"):
        # IBN-a&d: the d part follows IBN-b's placement, limited to groups 1-2 like IBN-b itself.
        if variant != "ad" or group in DEFAULT_IBN_GROUPS["d"]:
            post_add = "in" if variant == "b" else "partial"
    return BlockIBN(norm1, norm2, post_add)


def stem_norm_kind(variant: str, groups: Sequence[int]) -> str:
    """IBN-b puts a full IN in the stem, IBN-d (and a&d) an IBN; only when the variant is active at all."""
    if not groups:
        return "norm"
    return {"b": "in", "d": "ibn", "ad": "ibn"}.get(variant, "norm")


class _Norms:
    """Builds the normalization modules of one network from its settings."""

    def __init__(self, norm_layer: Callable[[int], nn.Module], in_ratio: float):
        self.norm_layer = norm_layer
        self.in_ratio = in_ratio

    def make(self, kind: str, channels: int) -> nn.Module:
        if kind == "norm":
            return self.norm_layer(channels)
        if kind == "ibn":
            return IBN(channels, self.in_ratio, bn_layer=self.norm_layer)
        if kind == "concat":
            return IBNConcat(channels, bn_layer=self.norm_layer)
        if kind == "in":
            return InstanceNorm2d(channels, affine=True)
        if kind == "partial":
            return PartialInstanceNorm2d(channels, self.in_ratio)
        raise ValueError(kind)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, norms: _Norms, plan: BlockIBN, stride: int = 1,
                 downsample: nn.Module | None = None, cardinality: int = 1, base_width: int = 64,
                 dilation: int = 1, first_dilation: int | None = None, se_reduction: int = 0,
                 act_layer: Callable[..., nn.Module] = nn.ReLU):
        super().__init__()
        if cardinality != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only cardinality=1 and base_width=64")
        first_dilation = first_dilation or dilation
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=first_dilation, dilation=first_dilation,
                               bias=False)
        self.bn1 = norms.make(plan.norm1, planes)
        self.act1 = act_layer(inplace=True)
        mid = planes * 2 if plan.norm1 == "concat" else planes
        self.conv2 = nn.Conv2d(mid, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norms.make(plan.norm2, planes)
        self.se = SELayer(planes, se_reduction) if se_reduction else None
        self.downsample = downsample
        self.IN = None if plan.post_add == "none" else norms.make(plan.post_add, planes)
        self.act2 = act_layer(inplace=True)

    def zero_init_last(self) -> None:
        if getattr(self.bn2, "weight", None) is not None:
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        if self.se is not None:
            x = self.se(x)
        x = x + shortcut
        if self.IN is not None:
            x = self.IN(x)
        return self.act2(x)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, norms: _Norms, plan: BlockIBN, stride: int = 1,
                 downsample: nn.Module | None = None, cardinality: int = 1, base_width: int = 64,
                 dilation: int = 1, first_dilation: int | None = None, se_reduction: int = 0,
                 act_layer: Callable[..., nn.Module] = nn.ReLU):
        super().__init__()
        # ResNeXt width rule of the official resnext_ibn_a: floor(planes * base_width / 64) per group.
        width = int(math.floor(planes * (base_width / 64))) * cardinality
        outplanes = planes * self.expansion
        first_dilation = first_dilation or dilation
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = norms.make(plan.norm1, width)
        self.act1 = act_layer(inplace=True)
        mid = width * 2 if plan.norm1 == "concat" else width
        self.conv2 = nn.Conv2d(mid, width, 3, stride, padding=first_dilation, dilation=first_dilation,
                               groups=cardinality, bias=False)
        self.bn2 = norms.make(plan.norm2, width)
        self.act2 = act_layer(inplace=True)
        self.conv3 = nn.Conv2d(width, outplanes, 1, bias=False)
        self.bn3 = norms.make("norm", outplanes)
        self.se = SELayer(outplanes, se_reduction) if se_reduction else None
        self.downsample = downsample
        self.IN = None if plan.post_add == "none" else norms.make(plan.post_add, outplanes)
        self.act3 = act_layer(inplace=True)

    def zero_init_last(self) -> None:
        if getattr(self.bn3, "weight", None) is not None:
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        x = x + shortcut
        if self.IN is not None:
            x = self.IN(x)
        return self.act3(x)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def feature_indices(num_features: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """The absolute feature indices ``indices`` selects, and the largest (timm's ``indices`` convention).

    None: all; an int n: the last n; a sequence: those listed, negative ones counted from the end.
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"the last {indices} of {num_features} feature maps: out of range")
        take = list(range(num_features - indices, num_features))
    else:
        take = [i + num_features if i < 0 else i for i in indices]
        bad = [i for i, t in zip(indices, take) if not 0 <= t < num_features]
        if bad or not take:
            raise ValueError(f"feature indices {list(indices)} out of range for {num_features} feature maps")
    return take, max(take)


class ResNet(nn.Module):
    """ResNet with configurable instance/batch/switchable normalization.

    Args:
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"``.
        layers: blocks per residual group.
        channels: the four residual groups' widths (``planes``; a bottleneck outputs 4x), as in timm's ResNet;
            the 7x7 stem keeps 64 channels, as timm's does.
        ibn: IBN variant: none | a | b | c | d | ad (a&d) | a2 (a x2).
        in_ratio: fraction of channels through IN in IBN layers, or ``"full"`` (every norm is IN).
        ibn_groups: residual groups (1-4) that get IN; ``None`` = the variant's default.
        norm: bn | syncbn | gn | in | ln | sn | ghost_bn, for every non-IN normalization.
        norm_kwargs: passed to :func:`ibnnet.layers.get_norm_layer` (gn_groups, ghost_batch_size, sn_*).
        output_stride: 32, 16 or 8; the last groups are dilated instead of strided.
        zero_init_last: zero the last norm's weight in every block (SN's ``last_gamma``).
        drop_rate: dropout before ``fc`` (0.5 in the official SN ResNet-50 v1).
    """

    def __init__(
        self,
        block: str = "bottleneck",
        layers: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 1000,
        in_chans: int = 3,
        cardinality: int = 1,
        base_width: int = 64,
        se_reduction: int = 0,
        channels: Sequence[int] = (64, 128, 256, 512),
        ibn: str = "none",
        in_ratio: float | str = 0.5,
        ibn_groups: Sequence[int] | None = None,
        norm: str = "bn",
        norm_kwargs: dict | None = None,
        output_stride: int = 32,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        zero_init_last: bool = False,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
    ):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts, got {tuple(layers)}")
        if len(channels) != 4 or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be four positive widths, got {tuple(channels)}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        variant = canonical_ibn(ibn)
        norm = canonical_norm(norm)
        if in_ratio == "full":
            norm, variant, ratio = "in", "none", 1.0
        else:
            ratio = float(in_ratio)
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"in_ratio must be in [0, 1] or 'full', got {in_ratio!r}")
        groups = tuple(DEFAULT_IBN_GROUPS[variant] if ibn_groups is None else ibn_groups)
        bad = [g for g in groups if g not in (1, 2, 3, 4)]
        if bad:
            raise ValueError(f"ibn_groups must be residual groups among 1, 2, 3, 4; got {list(groups)}")
        self.ibn, self.in_ratio, self.ibn_groups, self.norm = variant, ratio, groups, norm
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        block_cls = BLOCKS[block]
        norms = _Norms(get_norm_layer(norm, **(norm_kwargs or {})), ratio)

        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norms.make(stem_norm_kind(variant, groups), 64)
        self.act1 = act_layer(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.feature_info = [dict(num_chs=64, reduction=2, module="act1")]

        inplanes, net_stride, dilation, prev_dilation = 64, 4, 1, 1
        for gi, (planes, n_blocks) in enumerate(zip((int(c) for c in channels), layers)):
            stride = 1 if gi == 0 else 2
            if net_stride >= output_stride:
                dilation *= stride
                stride = 1
            else:
                net_stride *= stride
            downsample = None
            if stride != 1 or inplanes != planes * block_cls.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * block_cls.expansion, 1, stride=stride, bias=False),
                    norms.make("norm", planes * block_cls.expansion),
                )
            blocks = []
            for bi in range(n_blocks):
                plan = plan_block(variant, gi + 1, groups, bi == n_blocks - 1)
                blocks.append(block_cls(
                    inplanes, planes, norms, plan, stride=stride if bi == 0 else 1,
                    downsample=downsample if bi == 0 else None, cardinality=cardinality, base_width=base_width,
                    dilation=dilation, first_dilation=prev_dilation if bi == 0 else dilation,
                    se_reduction=se_reduction, act_layer=act_layer))
                inplanes = planes * block_cls.expansion
            prev_dilation = dilation
            self.add_module(f"layer{gi + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=inplanes, reduction=net_stride, module=f"layer{gi + 1}"))

        self.num_features = self.head_hidden_size = inplanes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.init_weights(zero_init_last)

    @torch.no_grad()
    def init_weights(self, zero_init_last: bool = False) -> None:
        # The official IBN-Net / SN initialization: He fan-out convs, unit norm weights, zero biases.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, SwitchNorm2d)):
                if getattr(m, "weight", None) is not None:
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^conv1|bn1|maxpool", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head: ``num_classes`` outputs (0: none), ``global_pool`` type (None: keep the current one)."""
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """``forward_features`` that also returns the feature maps of ``feature_info`` (timm's API).

        Args:
            x: input images.
            indices: which of the 5 feature maps (0: stem after its activation, 1-4: the residual groups):
                None all, an int n the last n, a sequence the listed ones (negative counts from the end).
            norm: accepted for timm's API; these networks have no final norm layer to apply.
            stop_early: stop after the deepest feature map asked for (the final features are then that map).
            output_fmt: only ``"NCHW"``.
            intermediates_only: return only the list of feature maps.

        Returns:
            ``(final features, [feature maps])``, or only the list.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_indices(len(self.feature_info), indices)
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take:
            intermediates.append(x)
        x = self.maxpool(x)
        stages = [self.layer1, self.layer2, self.layer3, self.layer4]
        for i, stage in enumerate(stages[:max_index] if stop_early else stages, start=1):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)  # per block, as in forward_features
            else:
                x = stage(x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop what no requested feature map needs (timm's API); returns the absolute indices kept.

        Groups after the deepest requested map become empty ``nn.Sequential`` (and the max-pool an
        ``Identity`` when only the stem is kept), so ``forward_features`` ends at that map.  The classifier
        goes with ``prune_head`` or when the final features change.  ``prune_norm``: nothing to prune.
        """
        take, max_index = feature_indices(len(self.feature_info), indices)
        for i in range(max_index + 1, 5):
            setattr(self, f"layer{i}", nn.Sequential())
        if max_index == 0:
            self.maxpool = nn.Identity()
        prune_end = max_index < 4
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        if not torch.jit.is_scripting():  # a static branch for TorchScript: checkpointing is not scriptable
            if self.grad_checkpointing:
                stages = (self.layer1, self.layer2, self.layer3, self.layer4)
                return checkpoint_seq(nn.Sequential(*stages), x, flatten=True)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def load_pretrained(self, path: str) -> None:
        """timm calls this for our ``custom_load`` cfgs, for downloaded URLs and local files alike."""
        from .weights import load_pretrained_file
        load_pretrained_file(self, path)
