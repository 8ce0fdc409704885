"""Building models from the ``model`` config section, and finding the weights they start from."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..files import sanitize
from ..models import create_model, load_weights
from ..models.weights import (
    WeightsError,
    describe_mismatch,
    read_checkpoint,
    unwrap_state_dict,
    verify_hash,
)

log = logging.getLogger("ibnnet")


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


def resolve_weights_path(value: str, runs_root: str | Path) -> Path:
    """A weight file path, or ``run:<experiment>/<cell>[:best|last][@scale]`` -> that finished run's checkpoint."""
    if not value.startswith("run:"):
        return Path(value)
    ref = value[len("run:"):]
    ref, _, scale = ref.partition("@")
    experiment, _, cell = ref.partition("/")
    cell, _, which = cell.partition(":")
    which = which or "last"
    if not experiment or not cell or which not in ("last", "best"):
        raise WeightsError(f"{value}: expected run:<experiment>/<cell>[:last|best][@scale]")
    folder = Path(runs_root) / sanitize(experiment)
    done = [p.parent for p in folder.glob(f"{sanitize(cell)}-*/metrics.json")]
    if scale:
        done = [d for d in done if (yaml.safe_load((d / "config.yaml").read_text()) or {}).get("scale") == scale]
    if not done:
        where = f" at scale {scale}" if scale else ""
        raise WeightsError(f"{value}: no finished run of cell {cell!r}{where} under {folder}; "
                           f"run `ibnnet sweep {experiment}` first")
    newest = max(done, key=lambda d: (d / "metrics.json").stat().st_mtime)
    if len(done) > 1:
        log.warning("%s: %d finished runs match; using the newest, %s", value, len(done), newest.name)
    return newest / "checkpoints" / f"{which}.ckpt"


def build_model(m, num_classes: int, runs_root: str | Path = "runs", with_weights: bool = True,
                **extra) -> nn.Module:
    """A model from the config; with its starting weights (official ``pretrained`` or ``pretrained_file``)
    only when ``with_weights``. Tasks build without them and load them in :func:`load_initial_weights`
    when a fit starts fresh: a resumed run or an evaluation takes every weight from its checkpoint and
    must not download, hash or look up the starting weights again."""
    pretrained = bool(with_weights and m.pretrained and not m.pretrained_file)
    model = create_model(m.name, pretrained=pretrained, num_classes=num_classes, **model_kwargs(m), **extra)
    if m.pretrained_file and with_weights:
        load_weights(model, resolve_weights_path(m.pretrained_file, runs_root))
    if m.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def load_initial_weights(model: nn.Module, m, num_classes: int, runs_root: str | Path = "runs", **extra) -> bool:
    """Load the configured starting weights into ``model`` (built by ``build_model(..., with_weights=False)``
    with the same ``num_classes`` and ``extra``); False when the config names none."""
    if m.pretrained_file:
        load_weights(model, resolve_weights_path(m.pretrained_file, runs_root))
        return True
    if m.pretrained:
        # timm's own pretrained path (download, hash check, filter) on a twin, then copied over: one code
        # path for every release, and the copy keeps this model's memory format.
        twin = create_model(m.name, pretrained=True, num_classes=num_classes, **model_kwargs(m), **extra)
        model.load_state_dict(twin.state_dict())
        return True
    return False


def load_segmentation_weights(net: nn.Module, path: Path) -> None:
    """A segmentation checkpoint (backbone + head) into the whole net, else a classification one into the backbone."""
    verify_hash(path)
    sd = unwrap_state_dict(read_checkpoint(path), str(path))
    if all(k.startswith("net.") for k in sd):
        sd = {k[len("net."):]: v for k, v in sd.items()}
    if not any(k.startswith("head.") for k in sd):
        load_weights(net.backbone, path)
        return
    problem = describe_mismatch(sd, net)
    if problem:
        raise WeightsError(f"{path}: does not fit this segmentation network: {problem}")
    net.load_state_dict(sd)
