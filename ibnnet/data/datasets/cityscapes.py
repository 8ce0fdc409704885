"""Cityscapes semantic segmentation (fine annotations), plus the label reading shared with GTA5.

Layouts (detected automatically, separately for images and labels):

* official: ``<root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and
  ``<root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png``
* nested:   ``<root>/leftImg8bit_trainvaltest/leftImg8bit/...`` and ``<root>/gtFine_trainvaltest/gtFine/...``

Items are ``(tv_tensors.Image uint8 [3,H,W], tv_tensors.Mask uint8 [H,W])`` with the 19 train ids and
255 = ignore (see :mod:`ibnnet.data.labels`).

Missing labels: for train/val a missing ``*_gtFine_labelIds.png`` is an error at construction (training
on the wrong pairs would be worse than stopping). For test, whose labels are withheld, a missing label
gives an all-255 mask so the item tuple keeps its shape.

Size mismatch policy: if a label's size differs from its image's, ``__getitem__`` does not raise (one
bad file should not kill an 80-epoch run); it resizes the label to the image size with nearest neighbour
(ids are never blended) and emits one :class:`LabelSizeMismatchWarning` per file per process (each
DataLoader worker is a process, so up to one per worker). ``ibnnet.data.tools.check.check_dataset`` lists such
files up front.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ...errors import DataError, DataNotFoundError
from .imagenet import fraction_count, select_fraction
from ..images import DECODERS, decode_rgb
from ..labels import CITYSCAPES_CLASSES, IGNORE_INDEX, NUM_CLASSES, label_lut

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
CITYSCAPES_SPLITS = ("train", "val", "test")

_LUT = label_lut()


class LabelSizeMismatchWarning(UserWarning):
    """A label file's size differs from its image's; the label was resized with nearest neighbour."""


_warned_paths: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(path: str, message: str) -> None:
    with _warned_lock:
        if path in _warned_paths:
            return
        _warned_paths.add(path)
    warnings.warn(message, LabelSizeMismatchWarning, stacklevel=3)


def open_label(path: str | os.PathLike) -> Image.Image:
    """Open a label PNG whose pixel values (or palette indices) are label ids; fully loaded."""
    im = Image.open(path)
    im.load()
    if im.mode in ("L", "P"):
        return im
    if im.mode.startswith("I"):
        # 16-bit grayscale ids: accept when the values fit a byte, otherwise they are not label ids.
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{path}: 16-bit label values {arr.min()}..{arr.max()} are not 8-bit label ids")
        return Image.fromarray(arr.astype(np.uint8))  # 2-D uint8 -> mode "L"
    raise DataError(
        f"{path}: label image has mode {im.mode!r}; expected 8-bit label ids (mode 'L' or palette 'P'). "
        "Colour-coded labels cannot be mapped reliably (colours of different classes collide)."
    )


def read_label_ids(path: str | os.PathLike) -> np.ndarray:
    """Raw label ids ``[H, W]`` uint8. For palette PNGs these are the INDICES, never the colours."""
    with open_label(path) as im:
        return np.array(im, dtype=np.uint8)


def load_train_ids(label_path: str | None, size_hw: tuple[int, int], lut: np.ndarray = _LUT) -> torch.Tensor:
    """Train-id mask ``[H, W]`` uint8 matching ``size_hw``, applying the size-mismatch policy; ``lut`` maps the
    file's ids to train ids (Cityscapes label ids by default)."""
    h, w = size_hw
    if label_path is None:
        return torch.full((h, w), IGNORE_INDEX, dtype=torch.uint8)
    with open_label(label_path) as im:
        if im.size != (w, h):
            _warn_once(
                label_path,
                f"label {label_path} is {im.size[0]}x{im.size[1]} but its image is {w}x{h}: "
                "resized with nearest neighbour (warned once per file)",
            )
            im = im.resize((w, h), Image.Resampling.NEAREST)
        ids = np.array(im, dtype=np.uint8)
    return torch.from_numpy(lut[ids])


class PairedSegmentation(Dataset):
    """Shared item logic for (image, label-id PNG) datasets; subclasses fill ``self.samples``."""

    classes = CITYSCAPES_CLASSES
    num_classes = NUM_CLASSES
    ignore_index = IGNORE_INDEX
    label_lut: np.ndarray = _LUT    # the label files' ids -> the 19 train ids (255 = ignore)

    root: Path
    split: str
    decoder: str
    samples: list[tuple[str, str | None]]

    def _setup(self, name: str, splits: tuple[str, ...], root, split: str, fraction: float, decoder: str) -> None:
        """Argument checks and attributes shared by the subclasses' constructors."""
        if split not in splits:
            raise ValueError(f"{name} split must be one of {splits}, got {split!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        fraction_count(1, fraction)
        self.root = Path(root)
        self.split = split
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image_path, label_path = self.samples[index]
        image = decode_rgb(image_path, self.decoder)
        mask = self._load_mask(label_path, (int(image.shape[-2]), int(image.shape[-1])))
        return tv_tensors.Image(image), tv_tensors.Mask(mask)

    def _load_mask(self, label_path: str | None, size_hw: tuple[int, int]) -> torch.Tensor:
        return load_train_ids(label_path, size_hw, self.label_lut)

    def _apply_fraction(self, keys: list[str], fraction: float, seed: int) -> None:
        if fraction < 1.0:
            keep = select_fraction(keys, fraction, seed)
            self.samples = [self.samples[i] for i in keep]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, images={len(self)})"


def find_cityscapes_dir(root: str | os.PathLike, kind: str) -> Path | None:
    """``<root>/<kind>`` or the nested ``<root>/<kind>_trainvaltest/<kind>``, whichever exists."""
    root = Path(root)
    for candidate in (root / kind, root / f"{kind}_trainvaltest" / kind):
        if candidate.is_dir():
            return candidate
    return None


def list_cityscapes_images(split_dir: Path) -> list[Path]:
    """Sorted ``<city>/*_leftImg8bit.png`` under one split folder."""
    out: list[Path] = []
    for city in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        out.extend(sorted(p for p in city.iterdir() if p.name.endswith(IMAGE_SUFFIX)))
    return out


def cityscapes_label_path(labels_split_dir: Path, image_path: Path) -> Path:
    stem = image_path.name[: -len(IMAGE_SUFFIX)]
    return labels_split_dir / image_path.parent.name / f"{stem}{LABEL_SUFFIX}"


class Cityscapes(PairedSegmentation):
    """Cityscapes fine annotations; see the module docstring for layouts and policies.

    Args:
        root: dataset root (official or nested layout).
        split: ``"train"``, ``"val"`` or ``"test"``.
        fraction: keep a seeded subset of the split (IBN Table 8 finetunes on 10/20/30 % of train);
            chosen by hashing ``(seed, <city>_<seq>_<frame>)``, so the same on every machine, and nested
            across fractions for one seed.
        seed: which subset ``fraction`` keeps.
        decoder: ``"torchvision"`` (default, measured faster) or ``"pil"`` for the RGB images.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        fraction: float = 1.0,
        seed: int = 0,
        *,
        decoder: str = "torchvision",
    ) -> None:
        self._setup("Cityscapes", CITYSCAPES_SPLITS, root, split, fraction, decoder)

        images_root = find_cityscapes_dir(self.root, "leftImg8bit")
        if images_root is None:
            raise DataNotFoundError(
                f"Cityscapes images not found: neither {self.root / 'leftImg8bit'} nor "
                f"{self.root / 'leftImg8bit_trainvaltest' / 'leftImg8bit'} exists "
                "(unpack leftImg8bit_trainvaltest.zip into the root)"
            )
        self.images_dir = images_root / split
        if not self.images_dir.is_dir():
            raise DataNotFoundError(f"Cityscapes {split} images folder not found: {self.images_dir}")
        images = list_cityscapes_images(self.images_dir)
        if not images:
            raise DataNotFoundError(
                f"no *{IMAGE_SUFFIX} files in {self.images_dir}/<city>/ (is the folder empty?)"
            )

        labels_root = find_cityscapes_dir(self.root, "gtFine")
        self.labels_dir = labels_root / split if labels_root is not None else None
        if self.labels_dir is None or not self.labels_dir.is_dir():
            if split != "test":
                where = self.labels_dir if self.labels_dir is not None else self.root / "gtFine" / split
                raise DataNotFoundError(
                    f"Cityscapes {split} labels folder not found: {where} "
                    f"(unpack gtFine_trainvaltest.zip into {self.root})"
                )
            self.labels_dir = None

        self.samples = []
        missing: list[str] = []
        for img in images:
            label: str | None = None
            if self.labels_dir is not None:
                lp = cityscapes_label_path(self.labels_dir, img)
                if lp.is_file():
                    label = str(lp)
                elif split != "test":
                    missing.append(str(lp))
            self.samples.append((str(img), label))
        if missing:
            raise DataNotFoundError(
                f"{len(missing)} of {len(images)} Cityscapes {split} images have no label file, e.g. "
                + ", ".join(missing[:3])
                + " (run ibnnet.data.tools.check.check_dataset('cityscapes', root) for a full report)"
            )
        self._apply_fraction([Path(p).name[: -len(IMAGE_SUFFIX)] for p, _ in self.samples], fraction, seed)


__all__ = [
    "Cityscapes", "LabelSizeMismatchWarning", "PairedSegmentation", "cityscapes_label_path",
    "find_cityscapes_dir", "list_cityscapes_images", "load_train_ids", "open_label", "read_label_ids",
]
