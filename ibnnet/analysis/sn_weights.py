"""Importance weights of Switchable Normalization layers (SN paper sec. 5.1 Fig. 4, appendix C.2 Fig. 7, Fig. 9).

Every SN layer learns two sets of control parameters, ``mean_weight`` and ``var_weight`` (λ in the
paper); the importance weights are their softmaxes, over [IN, LN, BN] (or [IN, LN] for an SN without
its BN branch, as in the (8, 1) setting: "SN doesn't have BN in (8, 1)").  Fig. 4 averages them over
"all SN layers in a network", one group of bars per batch setting; Fig. 7 shows them per layer for the
53 SN layers of ResNet-50, by residual stage, with the layers after 3x3 convs, after 1x1 convs and in
the shortcuts told apart.  Fig. 9 draws the same per-layer weights for the SN models fine-tuned on ADE20K
and on Cityscapes (SN Table 5): "Fig.9 in Appendix compares the importance weights of SN in ResNet50 trained
on both ADE20K and Cityscapes" (sec. 4.3); "There are 53 SN layers" (the backbone's: a segmentation head's
own SN layers are left out of it).

Everything is read from state dicts, so a checkpoint is analysed without building its model: the
layer after which conv an SN layer sits is found from the conv weight of the same block
(``bn2`` -> ``conv2``; ``downsample.1`` -> ``downsample.0``; the official code's ``snN`` -> ``convN``).
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor

from ..files import atomic_write_bytes, atomic_write_text

BRANCHES = ("IN", "LN", "BN")
STATISTICS = ("mean", "var")
# Paper's stage names (Fig. 7 x-axis): res1 is the stem, res2..res5 are layer1..layer4.
_LAYER = re.compile(r"(?:^|\.)layer(\d+)\.(\d+)\.")
# Prefixes a training framework or wrapper puts in front of the network's own keys.
_WRAPPERS = ("module.", "_orig_mod.", "model.", "net.backbone.", "backbone.", "net.")


@dataclass(frozen=True)
class SNLayer:
    """One SN layer's importance weights; ``bn`` entries are NaN for a 2-way (IN, LN) layer."""
    name: str            # module name, e.g. "layer1.0.bn2"
    stage: str           # res1 .. res5 (or "head" / "other" outside a ResNet trunk)
    kind: str            # "7x7 conv" | "3x3 conv" | "1x1 conv" | "shortcut" | "other"
    mean: tuple[float, float, float]
    var: tuple[float, float, float]


def _strip_wrappers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop wrapper prefixes shared by every SN key (Lightning's ``model.``, the segmentation ``net.backbone.``)."""
    out = dict(sd)
    changed = True
    while changed:
        changed = False
        sn_keys = [k for k in out if k.endswith(".mean_weight")]
        for p in _WRAPPERS:
            if sn_keys and all(k.startswith(p) for k in sn_keys):
                out = {k[len(p):] if k.startswith(p) else k: v for k, v in out.items()}
                changed = True
                break
    return out


def _softmax3(logits: Tensor, where: str) -> tuple[float, float, float]:
    logits = logits.detach().double().flatten()
    if logits.numel() not in (2, 3):
        raise ValueError(f"{where}: {logits.numel()} control parameters; an SN layer has 3 (IN, LN, BN) or 2 (IN, LN)")
    w = torch.softmax(logits, 0).tolist()
    return (w[0], w[1], w[2] if len(w) == 3 else math.nan)


def _conv_key(name: str) -> str | None:
    if name.endswith("downsample.1"):
        return name[: -len("1")] + "0.weight"
    m = re.search(r"(?:^|\.)(?:bn|sn)(\d)$", name)
    if m is None:
        return None
    return name[: m.start() + (1 if m.start() > 0 else 0)] + f"conv{m.group(1)}.weight"


def _classify(name: str, sd: Mapping[str, Tensor]) -> tuple[str, str]:
    m = _LAYER.search(name + ".")
    if m:
        stage = f"res{int(m.group(1)) + 1}"
    elif re.search(r"(?:^|\.)(?:bn|sn)1$", name):
        stage = "res1"
    else:
        stage = "other"
    if name.endswith("downsample.1"):
        return stage, "shortcut"
    key = _conv_key(name)
    conv = sd.get(key) if key else None
    if conv is None or conv.dim() != 4:
        return stage, "other"
    kh, kw = conv.shape[-2:]
    return stage, f"{kh}x{kw} conv"


def sn_layers(state_dict: Mapping[str, Tensor]) -> list[SNLayer]:
    """The SN layers of a state dict in their order of appearance (forward order for a ResNet)."""
    sd = _strip_wrappers(state_dict)
    out = []
    for key in sd:
        if not key.endswith(".mean_weight"):
            continue
        name = key[: -len(".mean_weight")]
        var_key = f"{name}.var_weight"
        if var_key not in sd:
            raise ValueError(f"{name}: has mean_weight but no var_weight; not a Switchable Normalization layer")
        stage, kind = _classify(name, sd)
        out.append(SNLayer(name, stage, kind, _softmax3(sd[key], key), _softmax3(sd[var_key], var_key)))
    return out


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a weight file or Lightning checkpoint (memory-mapped where the format allows)."""
    from ..models.weights import WeightsError, read_checkpoint, unwrap_state_dict
    path = Path(path)
    # mmap: only the few control parameters are read from a multi-hundred-MB training checkpoint.
    obj = read_checkpoint(path, mmap=True)   # a WeightsError names the file and the reason
    sd = unwrap_state_dict(obj, str(path))
    if not any(k.endswith(".mean_weight") for k in sd):
        raise WeightsError(f"{path}: no Switchable Normalization layers (no '*.mean_weight' parameters)")
    return sd


def network_average(layers: Sequence[SNLayer]) -> dict[str, tuple[float, float, float]]:
    """Fig. 4: importance weights averaged over all SN layers of the network, for means and variances."""
    if not layers:
        raise ValueError("no SN layers to average")
    out = {}
    for stat in STATISTICS:
        rows = [getattr(layer, stat) for layer in layers]
        out[stat] = tuple(sum(r[i] for r in rows) / len(rows) for i in range(3))
    return out


def backbone_layers(layers: Sequence[SNLayer]) -> list[SNLayer]:
    """The SN layers of the ResNet trunk (res1 .. res5), without a segmentation head's (53 for ResNet-50),
    named as in the classification network (a segmentation model's ``backbone.`` dropped)."""
    return [replace(layer, name=layer.name.removeprefix("backbone.")) for layer in layers
            if layer.stage.startswith("res")]


# ------------------------------------------------------------------------------------------ report

def _fmt(v: float) -> str:
    return "" if math.isnan(v) else repr(float(v))


def write_sn_weights(runs: Mapping[str, Sequence[SNLayer]], out_dir: str | os.PathLike,
                     title: str = "SN importance weights") -> dict[str, Path]:
    """network.csv/png (Fig. 4, a group per label) and layers.csv + layers_<label>.png (Fig. 7, one per label)."""
    if not runs:
        raise ValueError("no SN networks to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"network_csv": out / "network.csv", "network_png": out / "network.png",
                              "layers_csv": out / "layers.csv"}
    averages = {label: network_average(layers) for label, layers in runs.items()}

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "layers", *(f"{s}_{b}" for s in STATISTICS for b in BRANCHES)])
    for label, avg in averages.items():
        w.writerow([label, len(runs[label]), *(_fmt(avg[s][i]) for s in STATISTICS for i in range(3))])
    atomic_write_text(paths["network_csv"], buf.getvalue())

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "index", "layer", "stage", "kind", *(f"{s}_{b}" for s in STATISTICS for b in BRANCHES)])
    for label, layers in runs.items():
        for i, layer in enumerate(layers, 1):
            w.writerow([label, i, layer.name, layer.stage, layer.kind,
                        *(_fmt(getattr(layer, s)[k]) for s in STATISTICS for k in range(3))])
    atomic_write_text(paths["layers_csv"], buf.getvalue())

    atomic_write_bytes(paths["network_png"], _network_plot(averages, title))
    for label, layers in runs.items():
        p = out / f"layers_{_file_label(label)}.png"
        atomic_write_bytes(p, _layer_plot(layers, f"{title}: {label}"))
        paths[f"layers_png:{label}"] = p
    return paths


def _file_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", label).strip("-") or "run"


_COLORS = {"IN": "#4c72b0", "LN": "#55a868", "BN": "#c44e52"}
_SYMBOL = {"mean": "μ", "var": "σ"}


def _figure(width: float, height: float):
    # Figure + Agg canvas directly: no pyplot, so the process-wide backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def _network_plot(averages: Mapping[str, Mapping[str, tuple]], title: str) -> bytes:
    labels = list(averages)
    fig = _figure(max(6.0, 1.1 * len(labels) + 2), 6.5)
    width = 0.26
    for row, stat in enumerate(STATISTICS):
        ax = fig.add_subplot(2, 1, row + 1)
        for b, branch in enumerate(BRANCHES):
            vals = [averages[lb][stat][b] for lb in labels]
            vals = [0.0 if math.isnan(v) else v for v in vals]  # no BN branch: no bar (paper Fig. 4, (8,1))
            ax.bar([x + (b - 1) * width for x in range(len(labels))], vals, width, label=branch,
                   color=_COLORS[branch])
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"importance weight of {_SYMBOL[stat]}")
        ax.legend(ncol=3, fontsize="small")
        if row == 0:
            ax.set_title(title)
    return _png(fig)


def write_dataset_figure(runs: Mapping[str, Sequence[SNLayer]], out_dir: str | os.PathLike,
                         title: str = "SN importance weights by dataset") -> dict[str, Path]:
    """SN Fig. 9: datasets.csv and datasets.png from one SN model per training dataset (label = the dataset):
    the backbone's SN layers, panels μ and σ for each dataset in turn, as the paper's (a, b) ADE20K and
    (c, d) Cityscapes."""
    if not runs:
        raise ValueError("no SN networks to compare")
    trunk = {label: backbone_layers(layers) for label, layers in runs.items()}
    empty = [label for label, layers in trunk.items() if not layers]
    if empty:
        raise ValueError(f"{', '.join(empty)}: no SN layers in a ResNet trunk (stem and layer1..layer4)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"datasets_csv": out / "datasets.csv", "datasets_png": out / "datasets.png"}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "index", "layer", "stage", "kind", *(f"{s}_{b}" for s in STATISTICS for b in BRANCHES)])
    for label, layers in trunk.items():
        for i, layer in enumerate(layers, 1):
            w.writerow([label, i, layer.name, layer.stage, layer.kind,
                        *(_fmt(getattr(layer, s)[k]) for s in STATISTICS for k in range(3))])
    atomic_write_text(paths["datasets_csv"], buf.getvalue())

    n = max(len(layers) for layers in trunk.values())
    fig = _figure(max(8.0, 0.2 * n + 3), 3.3 * 2 * len(trunk))
    panel = 0
    for label, layers in trunk.items():
        for stat in STATISTICS:
            ax = fig.add_subplot(2 * len(trunk), 1, panel + 1)
            _draw_layers(ax, layers, stat, legend=panel == 0)
            ax.set_title(f"({chr(ord('a') + panel)}) importance weights of {_SYMBOL[stat]}, {label} "
                         f"({len(layers)} SN layers)", fontsize="medium")
            panel += 1
    fig.suptitle(title)
    atomic_write_bytes(paths["datasets_png"], _png(fig))
    return paths


def _layer_plot(layers: Sequence[SNLayer], title: str) -> bytes:
    fig = _figure(max(8.0, 0.2 * len(layers) + 3), 6.5)
    for row, stat in enumerate(STATISTICS):
        _draw_layers(fig.add_subplot(2, 1, row + 1), layers, stat, legend=row == 0)
    fig.suptitle(f"{title} ({len(layers)} SN layers)")
    return _png(fig)


def _draw_layers(ax, layers: Sequence[SNLayer], stat: str, legend: bool) -> None:
    """One panel of Fig. 7 / Fig. 9: the IN/LN/BN importance weights of ``stat`` stacked per layer, by stage."""
    n = len(layers)
    xs = list(range(n))
    stages = [layer.stage for layer in layers]
    bottom = [0.0] * n
    for branch_index, branch in enumerate(BRANCHES):
        vals = [getattr(layer, stat)[branch_index] for layer in layers]
        vals = [0.0 if math.isnan(v) else v for v in vals]
        bars = ax.bar(xs, vals, 0.85, bottom=bottom, color=_COLORS[branch], label=branch, edgecolor="white",
                      linewidth=0.3)
        # Paper Fig. 7: layers after 3x3 convs are shaded, shortcut layers marked; 1x1 layers are flat.
        for bar, layer in zip(bars, layers):
            if layer.kind == "3x3 conv":
                bar.set_hatch("///")
            elif layer.kind == "shortcut":
                bar.set_hatch("xx")
        bottom = [s + v for s, v in zip(bottom, vals)]
    for x, layer in zip(xs, layers):
        if layer.kind == "shortcut":
            ax.text(x, 1.01, "*", ha="center", va="bottom", fontsize=9)
    # Stage boundaries and names on the x-axis, as the paper's res1 .. res5.
    starts = [i for i in range(n) if i == 0 or stages[i] != stages[i - 1]]
    for s in starts[1:]:
        ax.axvline(s - 0.5, color="black", linewidth=0.8)
    ends = starts[1:] + [n]
    ax.set_xticks([(s + e - 1) / 2 for s, e in zip(starts, ends)])
    ax.set_xticklabels([stages[s] for s in starts])
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(f"importance weight of {_SYMBOL[stat]}")
    if legend:
        from matplotlib.patches import Patch
        handles = [Patch(color=_COLORS[b], label=b) for b in BRANCHES]
        handles += [Patch(facecolor="white", edgecolor="gray", hatch="///", label="after 3x3 conv"),
                    Patch(facecolor="white", edgecolor="gray", hatch="xx", label="shortcut (*)"),
                    Patch(facecolor="white", edgecolor="gray", label="after 1x1 / 7x7 conv")]
        ax.legend(handles=handles, ncol=6, fontsize="x-small", loc="lower left", bbox_to_anchor=(0, 1.06))
