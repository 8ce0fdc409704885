"""Where SN chose IN, next to where IBN-Net puts it by hand (the "SN vs IBN-Net" question).

For each SN layer of a trained SN ResNet, the importance of its IN branch (softmax of ``mean_weight`` and
``var_weight``, :mod:`ibnnet.analysis.sn_weights`) beside the IN that IBN-a and IBN-b place at the same
position. The IBN placement is read from the IBN models themselves (built on the meta device, so nothing is
allocated), not from a hand-written list:

* IBN-a: half the channels of a block's first norm are IN (``layerX.Y.bn1.IN``), in layer1-3;
* IBN-b: the stem's norm is IN (``bn1``), and an IN follows the residual sum of the last block of layer1 and
  layer2 (``layerX.Y.IN``); SN has no norm there, so it is shown at that block's last norm, the SN layer
  just before the sum.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from ..files import atomic_write_bytes, atomic_write_text
from .sn_weights import SNLayer, _figure, _png

IBN_VARIANTS = ("IBN-a", "IBN-b")


def ibn_in_placement(arch: str = "resnet50") -> dict[str, dict[str, str]]:
    """``{SN layer name: {"IBN-a": what, "IBN-b": what}}`` for the layers where IBN-a/IBN-b have IN."""
    import timm

    import ibnnet.models  # noqa: F401  (registers the IBN models)
    out: dict[str, dict[str, str]] = {}
    for variant, suffix in zip(IBN_VARIANTS, ("ibn_a", "ibn_b")):
        with torch.device("meta"):
            model = timm.create_model(f"{arch}_{suffix}")
        last_norm = {}
        for name, module in model.named_modules():
            if name.count(".") == 1 and name.startswith("layer"):     # a block: its last norm precedes the sum
                norms = [n for n, _ in module.named_children() if n.startswith("bn")]
                last_norm[name] = f"{name}.{norms[-1]}"
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.InstanceNorm2d):
                continue
            if name.endswith(".IN") and name[: -len(".IN")] in last_norm:       # IBN-b: after a block's sum
                out.setdefault(last_norm[name[: -len(".IN")]], {})[variant] = "IN after this block's sum"
            elif name.endswith(".IN"):                                        # IBN-a: half of a norm
                out.setdefault(name[: -len(".IN")], {})[variant] = "half IN"
            else:                                                             # IBN-b's stem
                out.setdefault(name, {})[variant] = "IN"
    return out


def _is_trunk(name: str) -> bool:
    name = name.split("backbone.", 1)[-1]
    return name == "bn1" or name.startswith("layer")


def write_placement(label: str, layers: Sequence[SNLayer], out_dir: str | os.PathLike,
                    arch: str = "resnet50") -> dict[str, Path]:
    """``placement_<label>.csv`` / ``.png``: per SN layer of the ResNet trunk, its IN importance (mean, var) and
    the IN that IBN-a / IBN-b have at that position."""
    placement = ibn_in_placement(arch)
    # A segmentation checkpoint names the trunk "backbone."; its head's SN layers have no IBN counterpart.
    layers = [replace(layer, name=layer.name.split("backbone.", 1)[-1]) for layer in layers
              if _is_trunk(layer.name)]
    unknown = sorted(set(placement) - {layer.name for layer in layers})
    if unknown:
        raise ValueError(f"{label}: the SN network has no layers {unknown}; is it a {arch}?")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "placement_" + "".join(c if c.isalnum() or c in "._=+-" else "-" for c in label)
    paths = {"csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "layer", "stage", "kind", "in_mean", "in_var", *IBN_VARIANTS])
    for i, layer in enumerate(layers, 1):
        where = placement.get(layer.name, {})
        w.writerow([i, layer.name, layer.stage, layer.kind, repr(layer.mean[0]), repr(layer.var[0]),
                    *(where.get(v, "") for v in IBN_VARIANTS)])
    atomic_write_text(paths["csv"], buf.getvalue())

    fig = _figure(max(8.0, 0.18 * len(layers) + 2), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    x = list(range(1, len(layers) + 1))
    ax.bar([i - 0.2 for i in x], [layer.mean[0] for layer in layers], width=0.4, color="#4c72b0", label="SN: IN weight (μ)")
    ax.bar([i + 0.2 for i in x], [layer.var[0] for layer in layers], width=0.4, color="#8fa8d4", label="SN: IN weight (σ)")
    for variant, marker, y in (("IBN-a", "v", 1.04), ("IBN-b", "*", 1.12)):
        xs = [i for i, layer in zip(x, layers) if variant in placement.get(layer.name, {})]
        ax.scatter(xs, [y] * len(xs), marker=marker, s=40, color="#c44e52" if variant == "IBN-a" else "#dd8452",
                   label=f"{variant}: IN here", clip_on=False)
    previous = None
    for i, layer in zip(x, layers):
        if previous is not None and layer.stage != previous:
            ax.axvline(i - 0.5, color="0.8", linewidth=0.8)
        previous = layer.stage
    ax.set_ylim(0, 1.18)
    ax.set_xlim(0.3, len(layers) + 0.7)
    ax.set_xlabel("SN layer (network order; lines separate res1..res5)")
    ax.set_ylabel("importance of IN")
    ax.set_title(f"Where SN chose IN vs IBN-Net's hand-placed IN: {label}")
    ax.legend(fontsize=7, ncol=4, loc="upper left", bbox_to_anchor=(0, -0.18))
    atomic_write_bytes(paths["png"], _png(fig))
    return paths


__all__ = ["ibn_in_placement", "write_placement", "IBN_VARIANTS"]
