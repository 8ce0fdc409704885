"""ADE20K scene parsing (Zhou et al., CVPR 2017), the 150-class SceneParsing benchmark release.

Layout (``ADEChallengeData2016.zip`` from http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip,
unpacked; the root is the ``ADEChallengeData2016`` folder)::

    <root>/images/training/ADE_train_00000001.jpg ...      20,210 RGB images of varying size
    <root>/images/validation/ADE_val_00000001.jpg ...      2,000
    <root>/annotations/training/ADE_train_00000001.png     8-bit grayscale label PNGs, same name and size
    <root>/annotations/validation/ADE_val_00000001.png
    <root>/objectInfo150.txt, sceneCategories.txt          (not needed for reading)

Label values: 0 is "other objects" and is not evaluated; 1..150 are the classes of ``objectInfo150.txt`` in
its order. The benchmark's scorer (and the SN paper's software, CSAILVision/semantic-segmentation-pytorch,
whose loader subtracts 1 from every label) evaluates classes 1..150 as 0..149 and skips 0: so here value k
becomes train id k-1 and 0 becomes the ignore index 255. Values above 150 do not occur in the release and are
ignored too (``ibnnet data check ade20k`` lists any such file).

Every image is decoded to 3-channel RGB, whatever its JPEG colour mode (the release has grayscale images).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import DataNotFoundError
from .cityscapes import PairedSegmentation
from ..labels import IGNORE_INDEX

ADE20K_SPLITS = {"train": "training", "val": "validation"}
ADE20K_SIZES = {"train": 20210, "val": 2000}
ADE20K_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
NUM_ADE20K_CLASSES = 150

# objectInfo150 order (label value k = index k-1); each class's first name in that file.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door",
    "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
assert len(ADE20K_CLASSES) == NUM_ADE20K_CLASSES


def ade20k_lut() -> np.ndarray:
    """Label value k (1..150) -> train id k-1; 0 ("other") and anything above 150 -> ignore."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[1:NUM_ADE20K_CLASSES + 1] = np.arange(NUM_ADE20K_CLASSES, dtype=np.uint8)
    return lut


def ade20k_dirs(root: Path, split: str) -> tuple[Path, Path]:
    """``(images folder, annotations folder)`` of one split."""
    folder = ADE20K_SPLITS[split]
    return root / "images" / folder, root / "annotations" / folder


def list_ade20k_images(images_dir: Path) -> list[Path]:
    return sorted(p for p in images_dir.iterdir() if p.suffix.lower() == ".jpg")


class ADE20K(PairedSegmentation):
    """ADE20K SceneParsing (ADEChallengeData2016), 150 classes; see the module docstring.

    Args:
        root: the ``ADEChallengeData2016`` folder.
        split: ``"train"`` (images/training) or ``"val"`` (images/validation).
        fraction, seed: a seeded subset, as for Cityscapes.
    """

    classes = ADE20K_CLASSES
    num_classes = NUM_ADE20K_CLASSES
    label_lut = ade20k_lut()

    def __init__(self, root: str | os.PathLike, split: str = "train", fraction: float = 1.0, seed: int = 0, *,
                 decoder: str = "torchvision") -> None:
        self._setup("ADE20K", tuple(ADE20K_SPLITS), root, split, fraction, decoder)
        self.images_dir, self.labels_dir = ade20k_dirs(self.root, split)
        hint = f"unpack {ADE20K_URL.rsplit('/', 1)[1]} and point the root at its ADEChallengeData2016 folder; " \
               f"ibnnet data check ade20k {self.root}"
        for folder, what in ((self.images_dir, "images"), (self.labels_dir, "annotations")):
            if not folder.is_dir():
                raise DataNotFoundError(f"ADE20K {split} {what} folder not found: {folder} ({hint})")
        images = list_ade20k_images(self.images_dir)
        if not images:
            raise DataNotFoundError(f"no *.jpg files in {self.images_dir} ({hint})")
        self.samples, missing = [], []
        for img in images:
            label = self.labels_dir / f"{img.stem}.png"
            (self.samples.append((str(img), str(label))) if label.is_file() else missing.append(str(label)))
        if missing:
            raise DataNotFoundError(f"{len(missing)} of {len(images)} ADE20K {split} images have no label file, "
                                    f"e.g. {', '.join(missing[:3])} (ibnnet data check ade20k {self.root})")
        self._apply_fraction([Path(p).stem for p, _ in self.samples], fraction, seed)


__all__ = ["ADE20K", "ADE20K_CLASSES", "ADE20K_SIZES", "ADE20K_SPLITS", "ADE20K_URL", "NUM_ADE20K_CLASSES",
           "ade20k_dirs", "ade20k_lut", "list_ade20k_images"]
