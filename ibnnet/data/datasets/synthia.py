"""SYNTHIA-RAND-CITYSCAPES (Ros et al., CVPR 2016), the synthetic source of SYNTHIA -> Cityscapes.

Layout (http://synthia-dataset.net/downloads/, "SYNTHIA-RAND-CITYSCAPES (CVPR16)")::

    <root>/RGB/0000000.png ... 0009399.png       1280x760 RGB, 9,400 frames
    <root>/GT/LABELS/0000000.png ...             16-bit 3-channel PNGs; channel 0 is the class id
                                                 (channel 1 the instance id)

The labels are read with torchvision's PNG decoder, which keeps 16 bits (PIL silently reduces a 16-bit RGB PNG
to 8 bits per channel). There is no official split: ``split="all"`` (default) is every frame; ``"train"`` /
``"val"`` read ``<root>/{train,val}.txt`` (one frame per line: ``17``, ``0000017`` or ``RGB/0000017.png``).

Classes: the SYNTHIA README lists 22 classes (ids 1-22; 0 is void); 19 are Cityscapes classes and are mapped
to their train ids, among them terrain (16), truck (18) and train (20), which the DA/DG loaders map as well
(RobustNet's ``datasets/synthia.py``, DACS, DAFormer's ``tools/convert_datasets/synthia.py``); DAFormer's
converter notes that these three are not present in SYNTHIA. A SYNTHIA-trained model learns 16 classes, and
the literature scores it on Cityscapes val over those 16 and over 13 (the 16 without wall, fence and pole):
AdaptSegNet (Tsai et al., CVPR 2018, Table 2), ADVENT, DACS, DAFormer. ``metrics.json`` has ``miou16`` and
``miou13`` for every real Cityscapes-labelled evaluation set (Cityscapes, BDD100K, Mapillary) of a model trained
on SYNTHIA (ibnnet/data/registry.py, ``class_subsets``), not for evaluations on SYNTHIA.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_png, read_file

from ...errors import DataError, DataNotFoundError
from .cityscapes import PairedSegmentation
from .gta5 import frame_stem, read_split_txt
from ..labels import IGNORE_INDEX

SYNTHIA_SPLITS = ("all", "train", "val")
SYNTHIA_FRAMES = 9400

# SYNTHIA class id -> Cityscapes train id: every SYNTHIA class that is a Cityscapes class, by the names of the
# SYNTHIA-RAND-CITYSCAPES README (pedestrian = person); void (0), parking-slot (13), road-work (14) and
# lanemarking (22) are ignored, as is any id above 22.
SYNTHIA_TO_TRAIN_ID = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12,
                       8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}

# The class subsets a SYNTHIA-trained model is scored on (train ids), written out: they are the protocol's,
# not whatever the mapping happens to hold (which includes terrain, truck and train).
SYNTHIA16 = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)   # the 19 without terrain, truck, train
SYNTHIA13 = (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)            # SYNTHIA16 without wall, fence, pole
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
