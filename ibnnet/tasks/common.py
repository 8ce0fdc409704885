"""Building models from the ``model`` config section."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models import create_model, load_weights


def model_kwargs(m) -> dict[str, Any]:
    """The named model's constructor overrides from the config (None keeps the model's default)."""
    kw: dict[str, Any] = {}
    for key in ("ibn", "in_ratio", "norm", "zero_init_last", "drop_rate"):
        if m[key] is not None:
            kw[key] = m[key]
    if m.ibn_groups is not None:
        kw["ibn_groups"] = tuple(m.ibn_groups)
    kw["norm_kwargs"] = dict(gn_groups=m.gn_groups, ghost_batch_size=m.ghost_batch_size, sn_momentum=m.sn_momentum,
                             sn_using_bn=m.sn_using_bn, sn_using_moving_average=m.sn_using_moving_average)
    return kw


def build_model(m, num_classes: int, **extra) -> nn.Module:
    """A model from the config: official weights (``pretrained``) or a local file (``pretrained_file``)."""
    model = create_model(m.name, pretrained=bool(m.pretrained and not m.pretrained_file), num_classes=num_classes,
                         **model_kwargs(m), **extra)
    if m.pretrained_file:
        load_weights(model, m.pretrained_file)
    if m.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
