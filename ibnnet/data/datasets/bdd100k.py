"""BDD100K semantic segmentation (Yu et al., CVPR 2020), the 10k-image subset with pixel labels.

Layout (the official ``bdd100k_images_10k.zip`` and ``bdd100k_sem_seg_labels_trainval.zip`` unpacked into
one root)::

    <root>/images/10k/{train,val,test}/<name>.jpg        1280x720 RGB; 7,000 train, 1,000 val, 2,000 test
    <root>/labels/sem_seg/masks/{train,val}/<name>.png   8-bit, already the 19 Cityscapes train ids, 255 ignore

Download: https://bdd-data.berkeley.edu/ (registration), "10K Images" and "Segmentation" labels. The label
values ARE train ids (no mapping); any value outside 0..18 is treated as ignore. Evaluation as in RobustNet
(Choi et al., CVPR 2021, ``datasets/bdd100k.py``): the whole 1280x720 image, no resizing.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import DataNotFoundError
from .cityscapes import PairedSegmentation
from ..labels import IGNORE_INDEX, NUM_CLASSES

BDD100K_SPLITS = ("train", "val", "test")
BDD100K_SIZES = {"train": 7000, "val": 1000, "test": 2000}
IMAGES_DIR = Path("images") / "10k"
MASKS_DIR = Path("labels") / "sem_seg" / "masks"


def bdd100k_lut() -> np.ndarray:
    """Train ids pass through; everything else is ignore."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[:NUM_CLASSES] = np.arange(NUM_CLASSES, dtype=np.uint8)
    return lut


class BDD100K(PairedSegmentation):
    """BDD100K 10k semantic segmentation; items ``(Image uint8 [3,H,W], Mask uint8 train ids)``.

    Args:
        root: the folder holding ``images/10k`` and ``labels/sem_seg/masks``.
        split: ``"train"``, ``"val"`` or ``"test"`` (test has no labels: all-255 masks).
        fraction, seed: a seeded subset, as for Cityscapes.
    """

    label_lut = bdd100k_lut()

    def __init__(self, root: str | os.PathLike, split: str = "val", fraction: float = 1.0, seed: int = 0, *,
                 decoder: str = "torchvision") -> None:
        self._setup("BDD100K", BDD100K_SPLITS, root, split, fraction, decoder)
        self.images_dir = self.root / IMAGES_DIR / split
        self.labels_dir = self.root / MASKS_DIR / split
        if not self.images_dir.is_dir():
            raise DataNotFoundError(f"BDD100K {split} images folder not found: {self.images_dir} "
                                    "(unpack bdd100k_images_10k.zip so that images/10k/<split>/ is under the root)")
        images = sorted(p for p in self.images_dir.iterdir() if p.suffix.lower() == ".jpg")
        if not images:
            raise DataNotFoundError(f"no *.jpg files in {self.images_dir}")
        if split != "test" and not self.labels_dir.is_dir():
            raise DataNotFoundError(f"BDD100K {split} labels folder not found: {self.labels_dir} (unpack "
                                    "bdd100k_sem_seg_labels_trainval.zip so that labels/sem_seg/masks/<split>/ is under "
                                    "the root)")
        self.samples, missing = [], []
        for img in images:
            label = self.labels_dir / f"{img.stem}.png"
            if label.is_file():
                self.samples.append((str(img), str(label)))
            elif split == "test":
                self.samples.append((str(img), None))
            else:
                missing.append(str(label))
        if missing:
            raise DataNotFoundError(f"{len(missing)} of {len(images)} BDD100K {split} images have no label file, "
                                    f"e.g. {', '.join(missing[:3])} (ibnnet data check bdd100k {self.root})")
        self._apply_fraction([Path(p).stem for p, _ in self.samples], fraction, seed)


__all__ = ["BDD100K", "BDD100K_SIZES", "bdd100k_lut"]
