"""SYNTHIA-RAND-CITYSCAPES (Ros et al., CVPR 2016), the synthetic source of SYNTHIA -> Cityscapes.

Layout (http://synthia-dataset.net/downloads/, "SYNTHIA-RAND-CITYSCAPES (CVPR16)")::

    <root>/RGB/0000000.png ... 0009399.png       1280x760 RGB, 9,400 frames
    <root>/GT/LABELS/0000000.png ...             16-bit 3-channel PNGs; channel 0 is the class id
                                                 (channel 1 the instance id)

The labels are read with torchvision's PNG decoder, which keeps 16 bits (PIL silently reduces a 16-bit RGB PNG
to 8 bits per channel). There is no official split: ``split="all"`` (default) is every frame; ``"train"`` /
``"val"`` read ``<root>/{train,val}.txt`` (one frame per line: ``17``, ``0000017`` or ``RGB/0000017.png``).

Classes: SYNTHIA has 16 of the 19 Cityscapes classes (no terrain, truck or train are labelled as such in the
DA/DG protocol). Results on SYNTHIA are reported as mIoU over those 16 classes and over 13 (the 16 without
wall, fence and pole), as in the SYNTHIA -> Cityscapes tables of AdaptSegNet (Tsai et al., CVPR 2018,
Table 2), ADVENT and DACS; ``metrics.json`` has ``miou16`` and ``miou13`` for a SYNTHIA evaluation set.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_png, read_file

from ...errors import DataError, DataNotFoundError
from .cityscapes import PairedSegmentation
from .gta5 import frame_stem, read_split_txt
from ..labels import CITYSCAPES_CLASSES, IGNORE_INDEX

SYNTHIA_SPLITS = ("all", "train", "val")
SYNTHIA_FRAMES = 9400

# SYNTHIA class id -> Cityscapes train id, the DA/DG literature's 16-class mapping (the SYNTHIA loaders of
# AdaptSegNet-derived code such as ADVENT and DACS). SYNTHIA's own ids: 1 sky, 2 building, 3 road,
# 4 sidewalk, 5 fence, 6 vegetation, 7 pole, 8 car, 9 traffic sign, 10 pedestrian, 11 bicycle, 12 motorcycle,
# 15 traffic light, 17 rider, 19 bus, 21 wall; the rest (void, parking slot, road work, lane marking, and the
# terrain/truck/train ids the protocol leaves out) are ignored.
SYNTHIA_TO_TRAIN_ID = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11, 17: 12, 8: 13,
                       19: 15, 12: 17, 11: 18}

# The class subsets SYNTHIA results are reported on (train ids).
SYNTHIA16 = tuple(sorted(SYNTHIA_TO_TRAIN_ID.values()))
SYNTHIA13 = tuple(c for c in SYNTHIA16 if CITYSCAPES_CLASSES[c] not in ("wall", "fence", "pole"))
CLASS_SUBSETS = {"miou16": SYNTHIA16, "miou13": SYNTHIA13}


def synthia_lut() -> np.ndarray:
    lut = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    for class_id, train_id in SYNTHIA_TO_TRAIN_ID.items():
        lut[class_id] = train_id
    return lut


def read_synthia_ids(path: str | os.PathLike) -> torch.Tensor:
    """Class ids ``[H, W]`` (int32) from channel 0 of a SYNTHIA 16-bit label PNG."""
    try:
        label = decode_png(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
    except RuntimeError as e:
        raise DataError(f"{path}: not a readable PNG: {e}") from None
    if label.dtype != torch.uint16:
        raise DataError(f"{path}: {label.dtype} label, but SYNTHIA-RAND-CITYSCAPES labels are 16-bit PNGs "
                        "(GT/LABELS, not the colour-coded GT/COLOR)")
    return label[0].to(torch.int32)


class SynthiaRandCityscapes(PairedSegmentation):
    """SYNTHIA-RAND-CITYSCAPES; items ``(Image uint8 [3,H,W], Mask uint8 19 train ids / 255)``."""

    _lut = torch.from_numpy(synthia_lut())
    class_subsets = CLASS_SUBSETS

    def __init__(self, root: str | os.PathLike, split: str = "all", fraction: float = 1.0, seed: int = 0, *,
                 decoder: str = "torchvision") -> None:
        self._setup("SYNTHIA-RAND-CITYSCAPES", SYNTHIA_SPLITS, root, split, fraction, decoder)
        self.images_dir, self.labels_dir = self.root / "RGB", self.root / "GT" / "LABELS"
        for what, folder in (("images", self.images_dir), ("labels", self.labels_dir)):
            if not folder.is_dir():
                raise DataNotFoundError(f"SYNTHIA-RAND-CITYSCAPES {what} folder not found: {folder} (unpack "
                                        f"SYNTHIA_RAND_CITYSCAPES.rar so that RGB/ and GT/LABELS/ are under {self.root})")
        stems = sorted(p.stem for p in self.images_dir.iterdir() if p.suffix.lower() == ".png")
        if split != "all":
            lst = self.root / f"{split}.txt"
            if not lst.is_file():
                raise DataNotFoundError(f"SYNTHIA split={split!r} needs {lst} (SYNTHIA has no official split); "
                                        "use split='all' for every frame")
            width = len(stems[0]) if stems else 7
            wanted = {frame_stem(t).zfill(width) for t in read_split_txt(lst)}
            stems = [s for s in stems if s in wanted]
        if not stems:
            raise DataNotFoundError(f"no SYNTHIA {split} frames (*.png) in {self.images_dir}")
        missing = [str(self.labels_dir / f"{s}.png") for s in stems if not (self.labels_dir / f"{s}.png").is_file()]
        if missing:
            raise DataNotFoundError(f"{len(missing)} of {len(stems)} SYNTHIA frames have no label file, e.g. "
                                    f"{', '.join(missing[:3])} (ibnnet data check synthia {self.root})")
        self.samples = [(str(self.images_dir / f"{s}.png"), str(self.labels_dir / f"{s}.png")) for s in stems]
        self._apply_fraction(stems, fraction, seed)

    def _load_mask(self, label_path: str | None, size_hw: tuple[int, int]) -> torch.Tensor:
        ids = read_synthia_ids(label_path)
        if tuple(ids.shape) != tuple(size_hw):
            raise DataError(f"{label_path}: label is {ids.shape[1]}x{ids.shape[0]} but its image is "
                            f"{size_hw[1]}x{size_hw[0]}")
        return self._lut[ids.long()]


__all__ = ["SynthiaRandCityscapes", "SYNTHIA_TO_TRAIN_ID", "SYNTHIA16", "SYNTHIA13", "CLASS_SUBSETS",
           "read_synthia_ids", "synthia_lut"]
