"""GTA5 ("Playing for Data", Richter et al. 2016) with Cityscapes label ids.

Layout: ``<root>/images/00001.png ... 24966.png`` and ``<root>/labels/00001.png ...``. The labels are 8-bit
palette PNGs whose palette INDICES are Cityscapes label ids; they are read as indices (PIL mode "P" ->
``np.array``) and mapped with :func:`ibnnet.data.labels.label_lut`. Mapping the rendered colours back to ids
would be wrong: several ids share a colour.

Splits, first source found wins:

1. ``<root>/split.mat`` (the official file from the dataset's mapping archive): keys ``trainIds``,
   ``valIds``, ``testIds`` holding 1-based frame numbers (frame 1 = ``00001.png``);
2. ``<root>/{train,val,test}.txt``: one frame per line, as a number (``17``), a zero-padded id
   (``00017``) or a file name/path (``images/00017.png``); blank lines and ``#`` comments are skipped;
3. nothing: an error saying where to get ``split.mat`` (:data:`SPLIT_URL`, the "read_mapping" archive of
   the GTA5 site). Training and testing on the same frames would make the paper's GTA5 numbers (IBN
   Table 6: "12403 training images, 6382 validation images, and 6181 testing images") meaningless.
   Only with ``allow_no_split=True`` (config: ``data.gta5_allow_no_split``, for ad-hoc use on a frame dump)
   is every frame on disk used, with a warning.

``split="all"`` always means every frame on disk. Frames a split lists but the disk lacks are skipped
with one warning, so reduced copies work.

``fraction`` keeps a seeded subset: frames are ranked by a hash of ``(seed, frame id)`` and the lowest
``round(fraction * n)`` kept, so ``GTA5(root, "train", fraction=0.25)`` is the same quarter of the train
split (the IBN paper trains on a quarter of it) on every machine and every run; change ``seed`` for
another quarter.

Image/label size mismatches (a few GTA5 frames have them) follow the Cityscapes policy: the label is
resized with nearest neighbour and a warning is emitted once per file; ``check_dataset('gta5', root)``
lists them without decoding pixels.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import scipy.io

from ...errors import DataError, DataNotFoundError
from .cityscapes import PairedSegmentation
from .imagenet import is_image_file

GTA5_SPLITS = ("train", "val", "test", "all")
SPLIT_MAT_KEYS = {"train": "trainIds", "val": "valIds", "test": "testIds"}
# The official split: split.mat inside the label-reading code archive of the "Playing for Data" site
# (https://download.visinf.tu-darmstadt.de/data/from_games/).
SPLIT_URL = "https://download.visinf.tu-darmstadt.de/data/from_games/code/read_mapping.zip"


def missing_split_message(root: str | os.PathLike, split: str) -> str:
    root = Path(root)
    return (f"GTA5 split={split!r} needs the official split, but {root} has no split.mat and no "
            f"train/val/test.txt. Download {SPLIT_URL}, unzip it and copy its split.mat to {root / 'split.mat'} "
            f"(or write {root}/{{train,val,test}}.txt lists). For ad-hoc use on a frame dump without a split, "
            f"set data.gta5_allow_no_split=true (GTA5(..., allow_no_split=True)) to use every frame.")


def frame_stem(token: str) -> str:
    """Normalise ``17`` / ``00017`` / ``images/00017.png`` to the file stem ``00017``."""
    name = Path(token.strip()).name
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{int(stem):05d}" if stem.isdigit() else stem


def read_split_mat(path: str | os.PathLike) -> dict[str, list[str]]:
    mat = scipy.io.loadmat(str(path))
    return {
        split: [f"{int(i):05d}" for i in np.asarray(mat[key]).ravel()]
        for split, key in SPLIT_MAT_KEYS.items()
        if key in mat
    }


def read_split_txt(path: str | os.PathLike) -> list[str]:
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(frame_stem(line.split()[0]))
    return out


def read_gta5_splits(root: str | os.PathLike) -> tuple[dict[str, list[str]], str | None]:
    """Frame stems per split and their source (``".../split.mat"``, ``"<root>/*.txt"`` or ``None``)."""
    root = Path(root)
    mat = root / "split.mat"
    if mat.is_file():
        return read_split_mat(mat), str(mat)
    lists = {s: root / f"{s}.txt" for s in SPLIT_MAT_KEYS}
    found = {s: read_split_txt(p) for s, p in lists.items() if p.is_file()}
    if found:
        return found, str(root / "{train,val,test}.txt")
    return {}, None


def list_frames(folder: Path) -> dict[str, Path]:
    """Frame stem -> image path for the image files directly in ``folder``."""
    with os.scandir(folder) as it:
        return {Path(e.name).stem: Path(e.path) for e in it if e.is_file() and is_image_file(e.name)}


class GTA5(PairedSegmentation):
    """GTA5 frames with Cityscapes train ids; see the module docstring for splits and policies.

    Args:
        root: folder with ``images/``, ``labels/`` and optionally ``split.mat`` or ``*.txt`` lists.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        fraction: seeded subset of the split (0.25 = the paper's quarter of train).
        seed: which subset ``fraction`` keeps.
        decoder: ``"torchvision"`` (default, measured faster) or ``"pil"`` for the RGB images.
        allow_no_split: without split.mat or lists, use every frame (with a warning) instead of failing.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        fraction: float = 1.0,
        seed: int = 0,
        *,
        decoder: str = "torchvision",
        allow_no_split: bool = False,
    ) -> None:
        self._setup("GTA5", GTA5_SPLITS, root, split, fraction, decoder)
        self.images_dir = self.root / "images"
        self.labels_dir = self.root / "labels"
        for folder in (self.images_dir, self.labels_dir):
            if not folder.is_dir():
                raise DataNotFoundError(f"GTA5 folder not found: {folder} (expected {folder}/00001.png ...)")
        on_disk = list_frames(self.images_dir)
        if not on_disk:
            raise DataNotFoundError(f"GTA5 images folder is empty: {self.images_dir}")

        self.split_source: str | None = None
        if split == "all":
            stems = sorted(on_disk)
        else:
            splits, source = read_gta5_splits(self.root)
            self.split_source = source
            if source is None:
                if not allow_no_split:
                    raise DataNotFoundError(missing_split_message(self.root, split))
                warnings.warn(
                    f"no split.mat or train/val/test.txt in {self.root}: GTA5 split={split!r} uses all "
                    f"{len(on_disk)} frames, so train and test overlap (get the official split.mat from "
                    f"{SPLIT_URL} and put it at {self.root / 'split.mat'})",
                    UserWarning,
                    stacklevel=2,
                )
                stems = sorted(on_disk)
            elif split not in splits:
                raise DataError(f"{source} defines no {split!r} split (found: {sorted(splits)})")
            else:
                listed = splits[split]
                stems = sorted({s for s in listed if s in on_disk})
                absent = len(set(listed)) - len(stems)
                if absent and stems:
                    warnings.warn(
                        f"{absent} of {len(set(listed))} GTA5 {split} frames listed in {source} are not in "
                        f"{self.images_dir}; using the {len(stems)} present",
                        UserWarning,
                        stacklevel=2,
                    )
                if not stems:
                    raise DataNotFoundError(
                        f"none of the GTA5 {split} frames listed in {source} exist in {self.images_dir}"
                    )

        self.samples = []
        missing: list[str] = []
        for stem in stems:
            label = self.labels_dir / f"{stem}.png"
            if not label.is_file():
                missing.append(str(label))
            self.samples.append((str(on_disk[stem]), str(label)))
        if missing:
            raise DataNotFoundError(
                f"{len(missing)} of {len(stems)} GTA5 {split} frames have no label file, e.g. "
                + ", ".join(missing[:3])
                + " (run ibnnet.data.tools.check.check_dataset('gta5', root) for a full report)"
            )
        self._apply_fraction(stems, fraction, seed)


__all__ = ["GTA5", "GTA5_SPLITS", "SPLIT_MAT_KEYS", "SPLIT_URL", "frame_stem", "list_frames", "missing_split_message",
           "read_gta5_splits"]
