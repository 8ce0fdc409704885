"""Cityscapes label ids, the 19 evaluation classes (train ids) and their colours.

Both Cityscapes ``*_gtFine_labelIds.png`` and the GTA5 palette labels store Cityscapes *label ids*
(0..33). Training and evaluation use the 19 *train ids*; every other id maps to 255 (ignore).
License plate has label id -1; an 8-bit file cannot hold -1, and if one ever appears it has wrapped to
255, which the lookup table also sends to 255.
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

# Names of all Cityscapes label ids, kept so reports and fixtures can say which class an id is.
CITYSCAPES_LABEL_NAMES: dict[int, str] = {
    -1: "license plate", 0: "unlabeled", 1: "ego vehicle", 2: "rectification border", 3: "out of roi",
    4: "static", 5: "dynamic", 6: "ground", 7: "road", 8: "sidewalk", 9: "parking", 10: "rail track",
    11: "building", 12: "wall", 13: "fence", 14: "guard rail", 15: "bridge", 16: "tunnel", 17: "pole",
    18: "polegroup", 19: "traffic light", 20: "traffic sign", 21: "vegetation", 22: "terrain", 23: "sky",
    24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus", 29: "caravan", 30: "trailer",
    31: "train", 32: "motorcycle", 33: "bicycle",
}

_EVALUATED_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

LABEL_TO_TRAIN_ID: dict[int, int] = {i: IGNORE_INDEX for i in range(-1, 34)}
LABEL_TO_TRAIN_ID.update({label_id: train_id for train_id, label_id in enumerate(_EVALUATED_IDS)})

# Label ids that may legitimately occur in an 8-bit label file (255 = wrapped -1 / ignore).
KNOWN_LABEL_VALUES: frozenset[int] = frozenset(range(34)) | {IGNORE_INDEX}

CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

NUM_CLASSES = len(CITYSCAPES_CLASSES)


def label_lut() -> np.ndarray:
    """256-entry uint8 table: ``label_lut()[label_id] == train_id`` (255 = ignore).

    A fresh array is returned each call so callers may not corrupt a shared table.
    """
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        if label_id >= 0:
            lut[label_id] = train_id
    return lut


_LUT = label_lut()


def label_ids_to_train_ids(ids: np.ndarray) -> np.ndarray:
    """Map an integer array of label ids (values 0..255) to uint8 train ids."""
    ids = np.asarray(ids)
    if ids.dtype != np.uint8:
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            # Out-of-byte values are not Cityscapes ids; treat them as ignore instead of wrapping.
            out = np.full(ids.shape, IGNORE_INDEX, dtype=np.uint8)
            ok = (ids >= 0) & (ids <= 255)
            out[ok] = _LUT[ids[ok]]
            return out
        ids = ids.astype(np.uint8)
    return _LUT[ids]


def colorize(train_ids: np.ndarray, ignore_color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """RGB visualisation ``[H, W, 3]`` uint8 of a train-id map."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:] = ignore_color
    table[: len(CITYSCAPES_PALETTE)] = np.asarray(CITYSCAPES_PALETTE, dtype=np.uint8)
    return table[np.asarray(train_ids, dtype=np.uint8)]


__all__ = [
    "CITYSCAPES_CLASSES", "CITYSCAPES_LABEL_NAMES", "CITYSCAPES_PALETTE", "IGNORE_INDEX",
    "KNOWN_LABEL_VALUES", "LABEL_TO_TRAIN_ID", "NUM_CLASSES", "colorize", "label_ids_to_train_ids",
    "label_lut",
]
