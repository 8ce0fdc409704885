"""Mapillary Vistas (Neuhold et al., ICCV 2017) with its classes mapped to the 19 Cityscapes train ids.

Layouts (https://www.mapillary.com/dataset/vistas, registration), detected per root:

* v1.2 release: ``<root>/{training,validation}/images/<key>.jpg`` and ``.../labels/<key>.png``
  (8-bit palette PNGs whose INDICES are the 66 v1.2 class ids), ``<root>/config.json``;
* v2.0 release: the same images, with ``.../v1.2/labels/<key>.png`` and ``.../v2.0/labels/<key>.png``
  (124 classes), ``<root>/config_v1.2.json`` and ``config_v2.0.json``. The v1.2 labels of this release are
  read: the 19-class protocol of the DG literature is defined on the 66 v1.2 classes, and v2.0 splits
  several of them (e.g. lane markings, traffic lights) without changing the images.

Class mapping: RobustNet's (Choi et al., CVPR 2021; github.com/shachoi/RobustNet ``datasets/mapillary.py``
at commit 8bcd90a, function ``gen_id_to_ignore``), the one the DG papers comparing on GTA5 -> Mapillary use;
written out with the class names in docs/datasets.md. Every other class is ignored.

Evaluation size, also RobustNet's (``datasets/__init__.py``, ``create_extra_val_loader``: ``ResizeHeight(1536)``
and ``CenterCropPad(1536)`` of ``transforms/joint_transforms.py``): height resized to 1536 and width to
``int(w / h * 1536)`` (truncated, not rounded), the image bicubic and the label nearest-neighbour as PIL
resizes them, then a centred 1536 x 1536 crop. Portrait images (narrower than 1536 after the resize) differ:
RobustNet pads the label with 0, the train id of road (its labels are mapped first), and crops off-centre; here
both sides are padded evenly, the image with 0 and the label with 255 (ignored), see docs/datasets.md.
``eval_size=0`` evaluates the whole original image instead.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from ...errors import DataError, DataNotFoundError
from .cityscapes import PairedSegmentation
from ..labels import IGNORE_INDEX

MAPILLARY_SPLITS = {"train": "training", "val": "validation"}
NUM_V12_CLASSES = 66
EVAL_SIZE = 1536

# v1.2 class id -> Cityscapes train id (RobustNet's table), with the v1.2 class names for the docs and reports.
V12_TO_TRAIN_ID: dict[int, tuple[int, str]] = {
    13: (0, "construction--flat--road"), 24: (0, "marking--general"), 41: (0, "object--manhole"),
    2: (1, "construction--barrier--curb"), 15: (1, "construction--flat--sidewalk"),
    17: (2, "construction--structure--building"),
    6: (3, "construction--barrier--wall"),
    3: (4, "construction--barrier--fence"),
    45: (5, "object--support--pole"), 47: (5, "object--support--utility-pole"),
    48: (6, "object--traffic-light"),
    50: (7, "object--traffic-sign--front"),
    30: (8, "nature--vegetation"),
    29: (9, "nature--terrain"),
    27: (10, "nature--sky"),
    19: (11, "human--person"),
    20: (12, "human--rider--bicyclist"), 21: (12, "human--rider--motorcyclist"), 22: (12, "human--rider--other-rider"),
    55: (13, "object--vehicle--car"),
    61: (14, "object--vehicle--truck"),
    54: (15, "object--vehicle--bus"),
    58: (16, "object--vehicle--on-rails"),
    57: (17, "object--vehicle--motorcycle"),
    52: (18, "object--vehicle--bicycle"),
}


def mapillary_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for class_id, (train_id, _) in V12_TO_TRAIN_ID.items():
        lut[class_id] = train_id
    return lut


def detect_layout(root: Path, split_dir: str) -> tuple[str, Path, Path | None]:
    """``(version, labels folder, v1.2 config file or None)`` of a Mapillary root; raises if neither layout."""
    if (root / split_dir / "v1.2" / "labels").is_dir():
        return "v2.0", root / split_dir / "v1.2" / "labels", root / "config_v1.2.json"
    if (root / split_dir / "labels").is_dir():
        return "v1.2", root / split_dir / "labels", root / "config.json"
    raise DataNotFoundError(
        f"Mapillary Vistas {split_dir} labels not found: neither {root / split_dir / 'labels'} (v1.2 release) nor "
        f"{root / split_dir / 'v1.2' / 'labels'} (v2.0 release) exists (unpack the release zip into {root})")


def check_config(path: Path) -> None:
    """The v1.2 config must list the 66 classes the id table refers to."""
    if not path.is_file():
        return   # the config is optional for reading: the label PNGs carry the ids
    try:
        labels = json.loads(path.read_text())["labels"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a Mapillary config (expected a JSON object with 'labels'): {e}") from None
    if len(labels) != NUM_V12_CLASSES:
        raise DataError(f"{path}: {len(labels)} classes, but the v1.2 class ids need {NUM_V12_CLASSES}; this is not "
                        "a v1.2 config (a v2.0 root has config_v1.2.json next to config_v2.0.json)")


class MapillaryVistas(PairedSegmentation):
    """Mapillary Vistas (v1.2 or v2.0 release), 19 Cityscapes classes; see the module docstring.

    Args:
        root: the release folder.
        split: ``"train"`` (training/) or ``"val"`` (validation/).
        eval_size: RobustNet's evaluation geometry (height resized to it, centre crop/pad to a square);
            ``None`` (default): 1536 for val, off for train; 0: off.
    """

    label_lut = mapillary_lut()

    def __init__(self, root: str | os.PathLike, split: str = "val", fraction: float = 1.0, seed: int = 0, *,
                 eval_size: int | None = None, decoder: str = "torchvision") -> None:
        self._setup("Mapillary Vistas", tuple(MAPILLARY_SPLITS), root, split, fraction, decoder)
        split_dir = MAPILLARY_SPLITS[split]
        self.version, self.labels_dir, config = detect_layout(self.root, split_dir)
        check_config(config)
        self.images_dir = self.root / split_dir / "images"
        if not self.images_dir.is_dir():
            raise DataNotFoundError(f"Mapillary Vistas {split} images folder not found: {self.images_dir}")
        self.eval_size = (EVAL_SIZE if split == "val" else 0) if eval_size is None else int(eval_size)
        images = sorted(p for p in self.images_dir.iterdir() if p.suffix.lower() == ".jpg")
        if not images:
            raise DataNotFoundError(f"no *.jpg files in {self.images_dir}")
        self.samples, missing = [], []
        for img in images:
            label = self.labels_dir / f"{img.stem}.png"
            (self.samples.append((str(img), str(label))) if label.is_file() else missing.append(str(label)))
        if missing:
            raise DataNotFoundError(f"{len(missing)} of {len(images)} Mapillary {split} images have no label file, "
                                    f"e.g. {', '.join(missing[:3])} (ibnnet data check mapillary {self.root})")
        self._apply_fraction([Path(p).stem for p, _ in self.samples], fraction, seed)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image, mask = super().__getitem__(index)
        if not self.eval_size:
            return image, mask
        return robustnet_eval_geometry(image, mask, self.eval_size)


def pil_nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each of ``n_out`` pixels along one axis as PIL's ``Image.resize(..., Image.NEAREST)``
    picks it: the centre of output pixel k sits at (k + 1/2) * n_in / n_out, a position PIL accumulates in
    double precision one step at a time, then truncates. torch's ``nearest-exact`` is the same rule computed
    in float32 directly, so where that position is a whole number it can fall on the other side (columns 16
    and 49 of a 50 -> 55 resize); ``nearest`` (floor(k * n_in / n_out)) differs much more often."""
    step = n_in / n_out
    positions = np.add.accumulate(np.r_[step / 2, np.full(n_out - 1, step)])   # sequential sums, as PIL adds
    return torch.from_numpy(np.minimum(positions.astype(np.int64), n_in - 1))


def robustnet_eval_geometry(image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[tv_tensors.Image,
                                                                                          tv_tensors.Mask]:
    """Height resized to ``size``, width to ``int(w / h * size)``, then a centred ``size`` x ``size`` crop,
    padded where narrower (image 0, label 255).

    The image (uint8) goes through torchvision's uint8 antialiased bicubic, which follows PIL's ``BICUBIC``
    (a = -0.5, two separable passes rounded to uint8) to within 2 grey levels; the label is indexed with PIL's
    own nearest-neighbour positions (:func:`pil_nearest_index`), so it equals PIL's resize pixel for pixel.
    """
    h, w = image.shape[-2:]
    new_w = max(1, int(w / h * size))   # RobustNet's ResizeHeight, float division first, truncated
    image = TF.resize(torch.as_tensor(image), [size, new_w], interpolation=TF.InterpolationMode.BICUBIC,
                      antialias=True)
    rows, cols = pil_nearest_index(h, size), pil_nearest_index(w, new_w)
    mask = torch.as_tensor(mask)[rows[:, None], cols[None, :]][None]
    if new_w < size:   # pad both sides, as a centred crop larger than the image would
        left = (size - new_w) // 2
        image = TF.pad(image, [left, 0, size - new_w - left, 0], fill=0)
        mask = TF.pad(mask, [left, 0, size - new_w - left, 0], fill=IGNORE_INDEX)
    # torchvision's centre crop starts at int(round((w - size) / 2)), as RobustNet's CenterCropPad does
    image, mask = TF.center_crop(image, [size, size]), TF.center_crop(mask, [size, size])
    return tv_tensors.Image(image), tv_tensors.Mask(mask[0])


__all__ = ["MapillaryVistas", "V12_TO_TRAIN_ID", "mapillary_lut", "robustnet_eval_geometry", "pil_nearest_index",
           "detect_layout"]
