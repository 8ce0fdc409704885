"""Feature divergence between two image domains (IBN-Net sec. 4.3, Fig. 5).

For every channel of a layer, F is the spatial mean of the feature map of one image.  A Gaussian is
fitted to F over each domain's images (mean, unbiased std over images) and the two Gaussians are
compared with the symmetric KL divergence, averaged over channels.  The layers are the 17 ReLU
outputs on ResNet-50's main path: the stem ReLU and the last ReLU of every residual block.

Dead channels: a ReLU channel that is zero everywhere on every image of both sets is the same point
mass in both domains.  Its divergence is 0 by definition, but counting it would dilute the average by
the number of dead channels, which differs between models (an IN layer changes which channels die),
so such channels are left out of the average.  Channels constant in only one set have an infinite
true divergence; they are kept and made finite by adding ``rel_eps`` times the layer's typical
variance to both variances (relative, so that the result keeps KL's invariance to the feature scale,
which varies by orders of magnitude between layers and models), and a warning counts them.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import random
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data.images import IMAGE_EXTENSIONS, decode_rgb, is_image_file
from ..errors import ConfigError, DataError, DataNotFoundError
from ..files import atomic_write_bytes
from ..progress import progress_bar

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Fraction of the layer's mean per-channel variance added to every variance (see the module docstring).
DEFAULT_REL_EPS = 1e-4


class ChannelStats(NamedTuple):
    """Per-channel Gaussian fitted over images: ``mean`` and unbiased ``std`` (float64, shape (C,))."""
    mean: Tensor
    std: Tensor


# ----------------------------------------------------------------------------------------- layers

def main_path_relus(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The stem ReLU and each residual block's final ReLU, in forward order.

    17 modules for ResNet-50 ("stem", "layer1.0", ..., "layer4.2"), 9 for ResNet-18.
    """
    if not hasattr(model, "act1") or not all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        raise TypeError(f"{type(model).__name__} is not a ResNet with act1 and layer1..layer4")
    relus: list[tuple[str, nn.Module]] = [("stem", model.act1)]
    for gi in range(1, 5):
        for bi, block in enumerate(getattr(model, f"layer{gi}")):
            # Bottleneck's act2 is the middle ReLU; its output ReLU is act3.  BasicBlock ends in act2.
            act = getattr(block, "act3", None)
            if act is None:
                act = getattr(block, "act2", None)
            if act is None:
                raise TypeError(f"layer{gi}.{bi} ({type(block).__name__}) has no act3/act2")
            relus.append((f"layer{gi}.{bi}", act))
    return relus


# ------------------------------------------------------------------------------------- statistics

class _RunningMoments:
    """Per-channel mean and sum of squared deviations, merged batch by batch (Chan et al.).

    Merging exact per-batch moments avoids the cancellation of sum(x^2) - n mean^2 and keeps only
    O(C) numbers per layer however many images are seen.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, f: Tensor) -> None:  # f: (B, C) float64
        nb = f.shape[0]
        if nb == 0:
            return
        mb = f.mean(dim=0)
        m2b = (f - mb).square().sum(dim=0)
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta.square() * (self.n * nb / n)
        self.n = n

    def result(self) -> ChannelStats:
        if self.mean is None:
            raise ValueError("no images were seen")
        # Unbiased like torch.std; a single image has no spread to estimate, report 0 rather than NaN.
        std = (self.m2 / (self.n - 1)).sqrt() if self.n > 1 else torch.zeros_like(self.m2)
        return ChannelStats(self.mean, std)


@contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _batch_tensor(batch) -> Tensor:
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if isinstance(batch, dict):
        batch = batch["image"]
    if not isinstance(batch, Tensor):
        raise TypeError(f"expected image tensors (or tuples starting with one), got {type(batch).__name__}")
    return batch.unsqueeze(0) if batch.dim() == 3 else batch


@torch.no_grad()
def channel_statistics(model: nn.Module, images_iterable: Iterable, device: torch.device | str = "cpu",
                       layers: Sequence[tuple[str, nn.Module]] | None = None) -> list[ChannelStats]:
    """Per-channel (mean, std) over images of the spatial-mean feature, for each layer.

    ``images_iterable`` yields image batches (B, 3, H, W), single images, or tuples/lists whose first
    item is the batch (a DataLoader over a labelled dataset).  The model runs in eval mode (restored
    afterwards) and is moved to ``device``.  ``layers`` defaults to :func:`main_path_relus`.
    """
    layers = list(main_path_relus(model) if layers is None else layers)
    device = torch.device(device)
    model.to(device)
    moments = [_RunningMoments() for _ in layers]
    current: list[Tensor | None] = [None] * len(layers)

    def make_hook(i: int):
        def hook(_module, _inputs, output):
            if current[i] is not None:
                raise RuntimeError(f"layer {layers[i][0]!r} ran twice in one forward pass; "
                                   "its statistics would mix two different features")
            # Reduce at once: an in-place op later in the network may overwrite ``output``.
            out = output.float()
            current[i] = (out.flatten(2).mean(dim=2) if out.dim() > 2 else out).double().cpu()
        return hook

    handles = [module.register_forward_hook(make_hook(i)) for i, (_, module) in enumerate(layers)]
    try:
        with _eval_mode(model):
            for batch in images_iterable:
                x = _batch_tensor(batch).to(device, non_blocking=True)
                current[:] = [None] * len(layers)
                model(x)
                for i, (name, _) in enumerate(layers):
                    if current[i] is None:
                        raise RuntimeError(f"layer {name!r} did not run in the forward pass")
                    moments[i].update(current[i])
    finally:
        for h in handles:
            h.remove()
    return [m.result() for m in moments]


# ------------------------------------------------------------------------------------- divergence

def symmetric_kl(mean_a: Tensor, std_a: Tensor, mean_b: Tensor, std_b: Tensor, eps: float = 0.0) -> Tensor:
    """KL(A||B) + KL(B||A) of 1-D Gaussians, elementwise; ``eps`` is added to both variances.

    The log(sB/sA) and log(sA/sB) terms cancel in the sum, which leaves
    (vA + d^2) / (2 vB) + (vB + d^2) / (2 vA) - 1 with v = s^2 + eps and d = mA - mB:
    no logarithm of a zero std, only the divisions need ``eps``.
    """
    mean_a, std_a, mean_b, std_b = (torch.as_tensor(t, dtype=torch.float64) for t in (mean_a, std_a, mean_b, std_b))
    va = std_a.square() + eps
    vb = std_b.square() + eps
    d2 = (mean_a - mean_b).square()
    return (va + d2) / (2 * vb) + (vb + d2) / (2 * va) - 1


def feature_divergence(stats_a: Sequence[ChannelStats], stats_b: Sequence[ChannelStats],
                       rel_eps: float = DEFAULT_REL_EPS) -> list[float]:
    """Channel-averaged symmetric KL per layer; dead channels and ``rel_eps`` as in the module docstring."""
    if len(stats_a) != len(stats_b):
        raise ValueError(f"{len(stats_a)} layers in set A but {len(stats_b)} in set B")
    out = []
    for li, ((ma, sa), (mb, sb)) in enumerate(zip(stats_a, stats_b)):
        if ma.shape != mb.shape:
            raise ValueError(f"layer {li}: {tuple(ma.shape)} channels in A, {tuple(mb.shape)} in B")
        ma, sa, mb, sb = (t.double() for t in (ma, sa, mb, sb))
        same_point_mass = (sa == 0) & (sb == 0) & (ma == mb)
        keep = ~same_point_mass
        if not keep.any():
            out.append(0.0)
            continue
        ma, sa, mb, sb = ma[keep], sa[keep], mb[keep], sb[keep]
        typical_var = 0.5 * (sa.square() + sb.square()).mean().item()
        # The absolute floor only matters when every kept channel is constant in both sets.
        eps = max(rel_eps * typical_var, 1e-30)
        one_sided = int(((sa == 0) ^ (sb == 0)).sum())
        if one_sided:
            log.warning("layer %d: %d channel(s) constant in one set only; their divergence is set by "
                        "rel_eps=%g", li, one_sided, rel_eps)
        out.append(symmetric_kl(ma, sa, mb, sb, eps).mean().item())
    return out


# ------------------------------------------------------------------------------------- image sets

def _is_image(path: Path) -> bool:
    return is_image_file(path.name) and path.is_file()


class ImageSet(Dataset):
    """Every jpg/jpeg/png under ``root`` (recursive, any case), as normalised float tensors.

    ``classes=(lo, hi)`` keeps the class folders (immediate subfolders of ``root``, sorted by name like
    torchvision's ImageFolder) whose index is in [lo, hi], inclusive: ImageNet val 0-499 vs 500-999.
    ``max_images`` > 0 keeps a random subset drawn with ``seed``.  Images are resized so that their
    shorter side is ``resize_size`` (default ``image_size``), centre-cropped to ``image_size`` and
    normalised with the ImageNet mean/std.
    """

    def __init__(self, root: str | os.PathLike, image_size: int = 224, max_images: int = 0,
                 classes: tuple[int, int] | None = None, seed: int = 0, resize_size: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataNotFoundError(f"{self.root}: not a folder")
        self.image_size = int(image_size)
        self.resize_size = int(resize_size or image_size)
        if self.resize_size < self.image_size:
            raise ConfigError(f"resize_size {self.resize_size} is smaller than image_size {self.image_size}")
        if classes is None:
            dirs = [self.root]
        else:
            lo, hi = (int(c) for c in classes)
            all_dirs = sorted(p for p in self.root.iterdir() if p.is_dir())
            if not 0 <= lo <= hi < len(all_dirs):
                raise DataError(f"class range {lo}-{hi} outside the {len(all_dirs)} class folders of {self.root}")
            dirs = all_dirs[lo:hi + 1]
        files = sorted(p for d in dirs for p in d.rglob("*") if _is_image(p))
        if not files:
            raise DataNotFoundError(f"no {'/'.join(IMAGE_EXTENSIONS)} images under {self.root}"
                                    + (f" in class folders {classes[0]}-{classes[1]}" if classes else ""))
        if max_images and max_images < len(files):
            # Sorted back so that the order (and batch composition) does not depend on the draw.
            files = sorted(random.Random(seed).sample(files, int(max_images)))
        self.files: list[Path] = files
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    @staticmethod
    def _decode(path: Path) -> Tensor:
        return decode_rgb(path)

    def __getitem__(self, index: int) -> Tensor:
        from torchvision.transforms.v2 import functional as TF
        img = self._decode(self.files[index])
        img = TF.resize(img, [self.resize_size], antialias=True)
        img = TF.center_crop(img, [self.image_size, self.image_size])
        return (img.float() / 255.0 - self._mean) / self._std


_SPEC = re.compile(r"^(?P<root>.+):(?P<lo>\d+)-(?P<hi>\d+)$")


def parse_image_set(spec: str) -> tuple[Path, tuple[int, int] | None]:
    """``DIR`` or ``DIR:LO-HI`` (inclusive class-folder range) -> (root, classes or None)."""
    m = _SPEC.match(spec)
    if m is None:
        if not spec:
            raise ConfigError("empty image-set spec")
        return Path(spec), None
    lo, hi = int(m["lo"]), int(m["hi"])
    if lo > hi:
        raise ConfigError(f"{spec!r}: class range {lo}-{hi} is empty")
    return Path(m["root"]), (lo, hi)


# ----------------------------------------------------------------------------------------- driver

def run_divergence(models: Mapping[str, nn.Module], set_a: Dataset | Iterable, set_b: Dataset | Iterable,
                   batch_size: int = 32, device: torch.device | str = "cpu", num_workers: int = 0,
                   rel_eps: float = DEFAULT_REL_EPS,
                   progress: bool = False) -> tuple[list[str], dict[str, list[float]]]:
    """Feature divergence between two image sets for each model -> (layer names, {label: per layer}).

    Datasets are batched with a DataLoader; any other iterable is used as is.  All models must have
    the same main-path layers (e.g. ResNet-50 BN / IBN-a / IBN-b).  ``progress``: a bar (stderr) per
    model and set, over its batches.
    """
    if not models:
        raise ValueError("no models given")
    device = torch.device(device)

    def loader(ds, desc: str):
        if isinstance(ds, Dataset):
            ds = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            pin_memory=device.type == "cuda")
        return progress_bar(ds, enabled=progress, desc=desc, unit="batch") if progress else ds

    layer_names: list[str] | None = None
    results: dict[str, list[float]] = {}
    for label, model in models.items():
        names = [n for n, _ in main_path_relus(model)]
        if layer_names is None:
            layer_names = names
        elif names != layer_names:
            raise ValueError(f"model {label!r} has layers {names}, unlike the first model's {layer_names}")
        stats_a = channel_statistics(model, loader(set_a, f"{label}: set A"), device)
        stats_b = channel_statistics(model, loader(set_b, f"{label}: set B"), device)
        results[label] = feature_divergence(stats_a, stats_b, rel_eps)
        log.info("%s: mean divergence over layers %.4g", label, sum(results[label]) / len(results[label]))
    return layer_names, results


# ----------------------------------------------------------------------------------------- report

def divergence_report(results: Mapping[str, Sequence[float]], layer_names: Sequence[str],
                      out_dir: str | os.PathLike, title: str = "Feature divergence") -> dict[str, Path]:
    """Write divergence.csv (a row per layer, a column per model), divergence.md and divergence.png."""
    layer_names = list(layer_names)
    labels = list(results)
    for label in labels:
        if len(results[label]) != len(layer_names):
            raise ValueError(f"{label!r}: {len(results[label])} values for {len(layer_names)} layers")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "divergence.csv", "md": out / "divergence.md", "png": out / "divergence.png"}

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["layer", *labels])
    for i, name in enumerate(layer_names):
        w.writerow([name, *(repr(float(results[lb][i])) for lb in labels)])
    atomic_write_bytes(paths["csv"], buf.getvalue().encode())

    lines = [f"# {title}", "", "Symmetric KL divergence of per-channel feature statistics, averaged over channels.",
             "", "| layer | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for i, name in enumerate(layer_names):
        lines.append(f"| {name} | " + " | ".join(f"{float(results[lb][i]):.4g}" for lb in labels) + " |")
    means = [sum(map(float, results[lb])) / max(len(layer_names), 1) for lb in labels]
    lines.append("| mean | " + " | ".join(f"{v:.4g}" for v in means) + " |")
    lines += ["", "Layer numbers of the figure (IBN-Net Fig. 5): "
              + ", ".join(f"{n} = {name}" for (n, _), name in zip(paper_numbering(layer_names), layer_names)) + "."]
    atomic_write_bytes(paths["md"], ("\n".join(lines) + "\n").encode())

    atomic_write_bytes(paths["png"], _bar_plot(results, layer_names, title))
    return paths


def paper_numbering(layer_names: Sequence[str]) -> list[tuple[int, str]]:
    """(number, stage) of each layer as IBN-Net Fig. 5 counts them: 1..17 in forward order.

    The paper numbers the 17 ReLU layers of the main path from 1 (the stem) and refers to them by those
    numbers (sec. 4.3: IBN-Net-b's divergence drops "after IN layer at position 2,4,8").  The stage is
    the ResNet group a layer belongs to: conv1 (stem), conv2_x .. conv5_x (layer1 .. layer4).
    """
    out = []
    for i, name in enumerate(layer_names, 1):
        m = re.match(r"^layer(\d+)\.", name)
        out.append((i, f"conv{int(m.group(1)) + 1}_x" if m else ("conv1" if name == "stem" else name)))
    return out


def _bar_plot(results: Mapping[str, Sequence[float]], layer_names: list[str], title: str) -> bytes:
    # Figure + Agg canvas directly: no pyplot, so the process-wide backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(results)
    fig = Figure(figsize=(max(6.0, 0.55 * len(layer_names) + 2), 4.3))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(len(labels), 1)
    numbering = paper_numbering(layer_names)
    xs = [n for n, _ in numbering]
    for k, label in enumerate(labels):
        offset = (k - (len(labels) - 1) / 2) * width
        vals = [float(v) if math.isfinite(float(v)) else float("nan") for v in results[label]]
        ax.bar([x + offset for x in xs], vals, width, label=label)
    # The paper's x-axis: layers 1..17; the ResNet stage of each group of layers written underneath.
    ax.set_xticks(xs)
    ax.set_xticklabels([str(n) for n in xs])
    stages = [st for _, st in numbering]
    starts = [i for i in range(len(stages)) if i == 0 or stages[i] != stages[i - 1]]
    for a, b in zip(starts, starts[1:] + [len(stages)]):
        if a > 0:
            ax.axvline(xs[a] - 0.5, color="gray", linewidth=0.6, linestyle=":")
        ax.annotate(stages[a], xy=((xs[a] + xs[b - 1]) / 2, 0), xycoords=("data", "axes fraction"),
                    xytext=(0, -22), textcoords="offset points", ha="center", va="top", fontsize="small")
    ax.set_xlabel("layer (ReLU output on the main path, numbered as in IBN-Net Fig. 5)", labelpad=16)
    ax.set_ylabel("feature divergence")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()
