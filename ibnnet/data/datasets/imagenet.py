"""ImageNet (ILSVRC-2012) in the class-folder layout, plus the subset helpers all datasets share.

Layout: ``<root>/<split>/<wnid>/*.JPEG`` (``.jpeg``/``.jpg``/``.png`` in any letter case are accepted).
Class index = position of the wnid in sorted order, as torchvision's ``ImageFolder`` does, so checkpoints
trained elsewhere on ImageNet keep their label order.

Styled copies (IBN Table 1 "Monet", a CycleGAN-styled copy of val, ``ibnnet data stylize``) use the same
layout (``<styled_root>/val/<wnid>/*``). Their labels must be those of the real val, by folder NAME: pass
``classes=reference_classes(<real_root>/val)`` (configs: ``classes_root`` of an ``image_folder`` set). A
class missing from the copy is then simply absent (every other class keeps its index; without ``classes`` a
missing folder would shift every later label), and a folder the real val lacks is an error naming it.

Images are decoded by :func:`ibnnet.data.images.decode_rgb` (why torchvision first: that module).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset
from torchvision import tv_tensors

from ...errors import DataError, DataNotFoundError
from ...files import read_json
from ..images import DECODERS, IMAGE_EXTENSIONS, decode_rgb, is_image_file  # noqa: F401  (re-exported)

log = logging.getLogger("ibnnet")


def fraction_count(n: int, fraction: float) -> int:
    """How many of ``n`` items a ``fraction`` keeps: rounded half up, at least 1 when ``n > 0``."""
    if not (0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if n == 0 or fraction == 1.0:
        return n
    # The epsilon keeps e.g. 0.1 * 2975 = 297.5 from rounding down through float error.
    return min(n, max(1, math.floor(fraction * n + 0.5 + 1e-9)))


def _rank(seed: int, key: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()


def select_fraction(keys: Sequence[str], fraction: float, seed: int = 0) -> list[int]:
    """Indices (ascending) of a seeded subset of ``fraction_count(len(keys), fraction)`` items.

    Each item is ranked by a hash of ``(seed, key)`` and the lowest ranks are kept. Unlike a seeded
    permutation this is identical on every platform and NumPy version, does not depend on which other
    files exist, and is nested: the 10 % subset is contained in the 20 % subset for the same seed
    (convenient for IBN Table 8's 10/20/30 % finetuning sweep).
    """
    n = fraction_count(len(keys), fraction)
    if n == len(keys):
        return list(range(len(keys)))
    order = sorted(range(len(keys)), key=lambda i: (_rank(seed, keys[i]), keys[i]))
    return sorted(order[:n])


def list_class_folders(split_dir: Path) -> list[str]:
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def reference_classes(split_dir: str | os.PathLike) -> list[str]:
    """The sorted class-folder names of a split folder (e.g. the real ImageNet val): a label order."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataNotFoundError(f"class reference folder not found: {split_dir} (expected {split_dir}/<wnid>/)")
    classes = list_class_folders(split_dir)
    if not classes:
        raise DataNotFoundError(f"class reference folder {split_dir} has no class folders")
    return classes


def list_images(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_file() and is_image_file(e.name))


class ImageNet(Dataset):
    """ImageNet classification from class folders; items are ``(tv_tensors.Image uint8 [3,H,W], int)``.

    Args:
        root: folder containing ``train/`` and/or ``val/``.
        split: ``"train"`` or ``"val"``.
        num_classes_subset: if > 0, keep only the first K wnids in sorted order (labels 0..K-1).
        fraction: per-class fraction of images to keep, chosen by :func:`select_fraction` (every
            class keeps at least one image).
        seed: selects which images ``fraction`` keeps; same seed, same subset.
        classes: optional explicit wnid list defining the label order (e.g. the original val's
            classes when reading a styled copy that lacks some classes).
        classes_source: where ``classes`` came from, for error messages.
        decoder: ``"torchvision"`` (default, measured faster) or ``"pil"``.
        folder: read the class folders of this folder instead of ``root/split`` (the robustness sets:
            ImageNet-C's ``<corruption>/<severity>``, ImageNet-R, ImageNet-Sketch); ``split`` is then a label.
        what: the set's name in error messages.
        shrunk_short_side: if > 0 and ``<root>-<N>`` is a complete copy of this split made by
            ``ibnnet data shrink imagenet`` at short side N, read that instead (``self.shrunk`` says so).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        num_classes_subset: int = 0,
        fraction: float = 1.0,
        seed: int = 0,
        *,
        classes: Sequence[str] | None = None,
        classes_source: str | os.PathLike | None = None,
        decoder: str = "torchvision",
        shrunk_short_side: int = 0,
        folder: str | os.PathLike | None = None,
        what: str = "ImageNet",
    ) -> None:
        if folder is None and split not in ("train", "val"):
            raise ValueError(f"ImageNet split must be 'train' or 'val', got {split!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if num_classes_subset < 0:
            raise ValueError(f"num_classes_subset must be >= 0, got {num_classes_subset}")
        fraction_count(1, fraction)  # validates the range early
        found = select_shrunk(root, shrunk_short_side, split)
        # Which files were read, for the run's records: None = the originals under `root`.
        self.shrunk = None if found is None else {"root": str(found[0]), "original_root": str(root),
                                                  "short_side": shrunk_short_side,
                                                  "jpeg_quality": found[1].get("quality")}
        root = root if found is None else found[0]
        self.root = Path(root)
        self.split = split
        self.decoder = decoder
        split_dir = self.root / split if folder is None else Path(folder)
        what = f"{what} {split}" if folder is None else what
        if not split_dir.is_dir():
            raise DataNotFoundError(
                f"{what} folder not found: {split_dir} (expected {split_dir}/<wnid>/*.JPEG)"
            )
        folders = list_class_folders(split_dir)
        if not folders:
            if list_images(split_dir):
                raise DataNotFoundError(
                    f"{what} folder {split_dir} holds images but no class folders: reorganise it "
                    f"into {split_dir}/<wnid>/ (for val, using the devkit's ground-truth labels)"
                )
            raise DataNotFoundError(f"{what} folder is empty: {split_dir} (expected <wnid>/ folders)")

        if classes is None:
            all_classes = folders
        else:
            all_classes = list(classes)
            unknown = sorted(set(folders) - set(all_classes))
            if unknown:
                raise DataError(
                    f"{split_dir} has class folders not in "
                    + (f"the reference {classes_source}" if classes_source else "`classes`")
                    + f": {unknown[:5]}" + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
                    + " (their images have no label: remove them or fix the reference folder)"
                )
        if num_classes_subset:
            if num_classes_subset > len(all_classes):
                raise DataError(
                    f"num_classes_subset={num_classes_subset} but {split_dir} has only {len(all_classes)} classes"
                )
            all_classes = all_classes[:num_classes_subset]
        self.classes: list[str] = list(all_classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.num_classes = len(self.classes)

        present = set(folders)
        self.samples: list[tuple[str, int]] = []
        for label, wnid in enumerate(self.classes):
            if wnid not in present:
                continue
            names = list_images(split_dir / wnid)
            if fraction < 1.0:
                names = [names[i] for i in select_fraction([f"{wnid}/{n}" for n in names], fraction, seed)]
            self.samples.extend((str(split_dir / wnid / n), label) for n in names)
        if not self.samples:
            raise DataNotFoundError(
                f"no images ({'/'.join(IMAGE_EXTENSIONS)}) found under the class folders of {split_dir}"
            )
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, int]:
        path, label = self.samples[index]
        return tv_tensors.Image(decode_rgb(path, self.decoder)), label

    def __repr__(self) -> str:
        return (f"ImageNet(root={str(self.root)!r}, split={self.split!r}, "
                f"classes={self.num_classes}, images={len(self)})")



# The shrunk copy's marker file (written by `ibnnet data shrink`, data/tools/shrink.py). Reading it lives here,
# beside the reader that uses it, so the reader does not depend on the tool that writes copies.
SHRUNK_MARKER = "ibnnet_shrink.json"

def select_shrunk(root: str | os.PathLike, short_side: int, split: str) -> tuple[Path, dict] | None:
    """``(<root>-<short_side>, its marker)`` when that copy's ``split`` is complete, else None (with a
    warning when a copy exists but is unfinished or was made with other settings)."""
    if short_side <= 0:
        return None
    root = Path(root)
    base = root if root.name else root.resolve()  # "." has no name to append -N to
    copy = base.with_name(f"{base.name}-{short_side}")
    if not copy.is_dir():
        return None
    marker = read_json(copy / SHRUNK_MARKER) or {}
    info = marker.get("splits", {}).get(split, {})
    if marker.get("short_side") != short_side or not info.get("complete"):
        log.warning("%s is not a complete shrunk copy of %s (%s); reading the original images. Finish it with "
                    "'ibnnet data shrink imagenet %s %s --short-side %d'", copy, split,
                    f"no {SHRUNK_MARKER}" if not marker else f"marker: {info or 'split missing'}", root, copy, short_side)
        return None
    log.info("ImageNet %s: reading the shrunk copy %s (short side %d, JPEG quality %s) instead of %s",
             split, copy, short_side, marker.get("quality"), root)
    return copy, marker


__all__ = ["DECODERS", "IMAGE_EXTENSIONS", "ImageNet", "SHRUNK_MARKER", "select_shrunk", "decode_rgb", "fraction_count", "reference_classes",
           "select_fraction"]
