"""Dataset names usable in configs (``data.train.dataset``, ``data.val[i].dataset``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from ..errors import ConfigError


@dataclass(frozen=True)
class DatasetEntry:
    task: str                                   # classification | segmentation
    build: Callable[[Any, Path | None, Any], Dataset]   # (spec, root, data config) -> raw dataset
    default_root: str | None                    # folder under paths.data; None: needs no files
    augment: str                                # imagenet | light | segmentation
    description: str
    needs_root: bool = False                    # no default folder: the spec must give `root`


def _builtin_cls(spec, root, data):
    from .synthetic import SyntheticShapes
    return SyntheticShapes(split=spec.split, domain=spec.domain, num_samples=spec.num_samples, seed=spec.seed,
                           image_size=data.augment.image_size)


def _builtin_seg(spec, root, data):
    from .synthetic import SyntheticScenes
    return SyntheticScenes(split=spec.split, domain=spec.domain, num_samples=spec.num_samples, seed=spec.seed,
                           image_size=data.augment.crop_size[0])


def _imagenet(spec, root, data):
    from .imagenet import ImageNet
    # The shrunk copy serves training only: evaluation always reads the original val images.
    return ImageNet(root, split=spec.split, num_classes_subset=data.class_subset, fraction=spec.fraction,
                    seed=spec.seed, shrunk_short_side=data.shrunk_short_side if spec.split == "train" else 0)


def _image_folder(spec, root, data):
    # A folder of class folders (e.g. a CycleGAN/Monet-styled copy of ImageNet val): root/split/<wnid>/*.
    # Labels by folder NAME from `classes_root` (the real val), not by position in this folder's listing.
    from .imagenet import ImageNet, reference_classes
    classes = reference_classes(spec.classes_root) if spec.classes_root else None
    return ImageNet(root, split=spec.split, num_classes_subset=data.class_subset, fraction=spec.fraction,
                    seed=spec.seed, classes=classes, classes_source=spec.classes_root)


def _cityscapes(spec, root, data):
    from .cityscapes import Cityscapes
    return Cityscapes(root, split=spec.split, fraction=spec.fraction, seed=spec.seed)


def _gta5(spec, root, data):
    from .gta5 import GTA5
    return GTA5(root, split=spec.split, fraction=spec.fraction, seed=spec.seed, allow_no_split=data.gta5_allow_no_split)


DATASETS: dict[str, DatasetEntry] = {
    "builtin_cls": DatasetEntry("classification", _builtin_cls, None, "light",
                                "procedural shapes in two appearance domains (no download)"),
    "builtin_seg": DatasetEntry("segmentation", _builtin_seg, None, "segmentation",
                                "procedural street scenes in two appearance domains (no download)"),
    "imagenet": DatasetEntry("classification", _imagenet, "imagenet", "imagenet", "ILSVRC-2012 class folders"),
    "image_folder": DatasetEntry("classification", _image_folder, None, "imagenet",
                                 "class folders in ImageNet's layout, e.g. a Monet-styled copy of val",
                                 needs_root=True),
    "cityscapes": DatasetEntry("segmentation", _cityscapes, "cityscapes", "segmentation", "Cityscapes gtFine"),
    "gta5": DatasetEntry("segmentation", _gta5, "gta5", "segmentation", "GTA5 (Playing for Data)"),
}


def dataset_root(spec, data_root: str | Path) -> Path | None:
    entry = DATASETS[spec.dataset]
    if spec.root:
        return Path(spec.root)
    if entry.needs_root:
        raise ConfigError(f"dataset {spec.dataset!r} ({spec.name}) needs a root folder")
    if entry.default_root is None:
        return None
    return Path(data_root) / entry.default_root


def build_dataset(spec, data_root: str | Path, data) -> Dataset:
    """The raw dataset of ``spec``; ``data`` is the run's data config (image size, class subset)."""
    return DATASETS[spec.dataset].build(spec, dataset_root(spec, data_root), data)
