"""Building models from the ``model`` config section, and finding the weights they start from."""
from __future__ import annotations

import logging
import re
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
    for key in ("layers", "channels"):
        if m[key] is not None:
            kw[key] = tuple(m[key])
    kw["norm_kwargs"] = dict(gn_groups=m.gn_groups, ghost_batch_size=m.ghost_batch_size, sn_momentum=m.sn_momentum,
                             sn_using_bn=m.sn_using_bn, sn_using_moving_average=m.sn_using_moving_average)
    return kw


_RUN_ID = re.compile(r"-[0-9a-f]{8}")   # what runs/folder.py run_id puts after the cell's name: its config hash


def resolve_weights_path(value: str, runs_root: str | Path) -> Path:
    """A weight file path, or ``run:<experiment>/<cell or run id>[:best|last][@scale]`` -> that finished run's
    checkpoint. A cell's runs are the folders ``<cell>-<8 hex digits>``, exactly (``IBN-Net50`` is not
    ``IBN-Net50-a``); when several finished runs of the cell remain (other settings), it is an error naming them."""
    if not value.startswith("run:"):
        return Path(value)
    ref = value[len("run:"):]
    ref, _, scale = ref.partition("@")
    experiment, _, cell = ref.partition("/")
    cell, _, which = cell.partition(":")
    which = which or "last"
    if not experiment or not cell or which not in ("last", "best"):
        raise WeightsError(f"{value}: expected run:<experiment>/<cell or run id>[:last|best][@scale]")
    folder = Path(runs_root) / sanitize(experiment)
    name = sanitize(cell)
    if _RUN_ID.fullmatch(name[-9:]) and (folder / name / "metrics.json").is_file():
        done = [folder / name]   # a run id: that very run
    else:
        done = sorted(p.parent for p in folder.glob("*/metrics.json")
                      if p.parent.name[:-9] == name and _RUN_ID.fullmatch(p.parent.name[-9:]))
    configs = {d: _recorded_config(d) for d in done}
    if scale:
        done = [d for d in done if configs[d].get("scale") == scale]
    if not done:
        where = f" at scale {scale}" if scale else ""
        raise WeightsError(f"{value}: no finished run of cell {cell!r}{where} under {folder}; "
                           f"run `ibnnet sweep {experiment}` first")
    if len(done) > 1:
        differ = _differences([configs[d] for d in done])
        runs = ", ".join(f"{d.name} (scale {configs[d].get('scale') or '-'}{', ' + diff if diff else ''})"
                         for d, diff in zip(done, differ))
        raise WeightsError(f"{value}: {len(done)} finished runs of cell {cell!r} under {folder}: {runs}; name one by "
                           f"its run id (e.g. run:{experiment}/{done[0].name}), or add @<scale> when their scales "
                           f"differ")
    return done[0] / "checkpoints" / f"{which}.ckpt"


def _recorded_config(run: Path) -> dict:
    try:
        return yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


_NOT_SETTINGS = ("paths.", "logger.", "launcher.", "experiment", "scale", "run_name", "grid.")


def _differences(configs: list[dict]) -> list[str]:
    """For each config, ``key=value`` of the settings in which they differ (not where and how it ran, nor its name)."""
    def flat(d, prefix=""):
        if not isinstance(d, dict):
            return {prefix[:-1]: d}
        return {k: v for key, sub in d.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    flats = [flat(c) for c in configs]
    keys = sorted(k for k in set().union(*flats) if not k.startswith(_NOT_SETTINGS)
                  and len({repr(f.get(k)) for f in flats}) > 1)
    return [", ".join(f"{k}={f.get(k)}" for k in keys[:4]) for f in flats]


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
