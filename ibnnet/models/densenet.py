"""DenseNet-BC with IBN-a: the official IBN-Net DenseNets (``ibnnet/densenet_ibn.py`` of XingangPan/IBN-Net).

timm's DenseNet (``timm.models.densenet.DenseNet``: ``forward_intermediates``, ``feature_info``, gradient
checkpointing, ``reset_classifier``) with an :class:`~ibnnet.layers.IBN` as ``norm1`` of the dense layers
the official code chooses.  timm keeps torchvision's module names, which are the official file's
(``features.denseblock1.denselayer1.norm1.BN.weight``, ``features.transition1.conv.weight``, ``classifier``),
so official files load with ``strict=True``.
"""
from __future__ import annotations

from typing import Sequence

from timm.models.densenet import DenseNet
from torch import Tensor, nn

from ..layers import IBN, canonical_norm
from .resnet import canonical_ibn

# The official densenet_ibn.py: IN ratio 0.4 (``IBN(num_input_features, 0.4)``), BN on the first
# int(C * 0.6) channels and IN on the rest; norm1 of every third dense layer (``i % 3 == 0``: the 1st, 4th,
# 7th ...) of dense blocks 1-3 (``ibn = i < 3``); norm2, transitions, stem and norm5 stay BN.
OFFICIAL_IN_RATIO = 0.4
DEFAULT_IBN_BLOCKS = (1, 2, 3)
IBN_EVERY = 3


class IBNAct(IBN):
    """IBN followed by ReLU, with the IBN's state_dict keys.

    timm's DenseNet norm layers carry their activation (``BatchNormAct2d``); this is the IBN counterpart,
    in the official DenseNet-IBN's channel order (BN first, ``in_first=False``).
    """

    def __init__(self, channels: int, ratio: float = OFFICIAL_IN_RATIO, in_first: bool = False):
        super().__init__(channels, ratio, in_first=in_first)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.normalize(x))


class DenseNetIBN(DenseNet):
    """timm's DenseNet-BC with the official IBN-a placement.

    Args:
        growth_rate, block_config, bn_size: the DenseNet-BC architecture (121: 32, (6, 12, 24, 16), 4).
        ibn: ``"a"`` (the official DenseNet-IBN-a) or ``"none"`` (the plain DenseNet, Table 2's
            re-implementation); the other IBN variants are defined for ResNets only.
        in_ratio: fraction of an IBN layer's channels through IN (official: 0.4).
        ibn_groups: dense blocks (1-4) with IBN layers; ``None`` = the official 1-3.
        norm: ``"bn"`` only, the official network's BatchNorm (timm's DenseNet norm layers include
            their ReLU); ``norm_kwargs`` is accepted as ResNet's and only used by other norms.
        drop_rate: dropout before the classifier (timm's convention); ``proj_drop_rate``: dropout after
            every dense layer (the official code's ``drop_rate``, 0 in its models).
        Other keyword arguments go to timm's DenseNet.

    Initialisation: the official densenet_ibn.py sets none, so every layer keeps PyTorch's default
    (``reset_parameters``) instead of timm's/torchvision's He-normal convolutions.
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        bn_size: int = 4,
        ibn: str = "a",
        in_ratio: float = OFFICIAL_IN_RATIO,
        ibn_groups: Sequence[int] | None = None,
        norm: str = "bn",
        norm_kwargs: dict | None = None,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        **kwargs,
    ):
        resnet_only = [k for k in ("layers", "channels") if k in kwargs]
        if resnet_only:
            raise ValueError(f"DenseNet-IBN takes no {' or '.join(resnet_only)} (ResNet arguments): its depth and "
                             f"widths are block_config and growth_rate")
        variant = canonical_ibn(ibn)
        if variant not in ("a", "none"):
            raise ValueError(f"DenseNet-IBN has IBN-a only (the official densenet_ibn.py), got ibn={ibn!r}")
        if canonical_norm(norm) != "bn":
            raise ValueError(f"DenseNet-IBN supports norm='bn' only (the official network), got norm={norm!r}")
        if isinstance(in_ratio, str) or not 0.0 <= float(in_ratio) <= 1.0:
            raise ValueError(f"DenseNet-IBN in_ratio must be a number in [0, 1], got {in_ratio!r}")
        groups = tuple(DEFAULT_IBN_BLOCKS if ibn_groups is None else ibn_groups)
        bad = [g for g in groups if g not in range(1, len(block_config) + 1)]
        if bad:
            raise ValueError(f"ibn_groups must be dense blocks among 1-{len(block_config)}; got {list(groups)}")
        super().__init__(growth_rate=growth_rate, block_config=tuple(block_config), num_classes=num_classes,
                         in_chans=in_chans, global_pool=global_pool, bn_size=bn_size, norm_layer="batchnorm2d",
                         act_layer="relu", drop_rate=drop_rate, proj_drop_rate=proj_drop_rate, **kwargs)
        self.ibn, self.in_ratio, self.ibn_groups = variant, float(in_ratio), groups if variant == "a" else ()
        for b in self.ibn_groups:
            block = self.features.get_submodule(f"denseblock{b}")
            for i, layer in enumerate(block.values()):
                if i % IBN_EVERY == 0:
                    layer.norm1 = IBNAct(layer.norm1.num_features, self.in_ratio)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.InstanceNorm2d)):
                m.reset_parameters()

    def load_pretrained(self, path: str) -> None:
        """timm calls this for our ``custom_load`` cfgs, for downloaded URLs and local files alike."""
        from .weights import load_pretrained_file
        load_pretrained_file(self, path)
