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
    augment: str                                # imagenet | center_crop | light | segmentation
    description: str
    needs_root: bool = False                    # no default folder: the spec must give `root`
    # a model TRAINED on this dataset: () -> {metric key: train ids}, the extra mIoUs over the classes it can
    # learn that the literature reports on its targets (SYNTHIA: miou16, miou13); a function so that importing
    # the registry stays light
    class_subsets: Callable[[], dict[str, tuple[int, ...]]] | None = None
    # real images labelled in the 19 Cityscapes train ids: the targets those subsets are reported on
    cityscapes_target: bool = False
    # spec -> the specs it stands for, each one evaluation set (ImageNet-C: one per corruption and severity)
    expand: Callable[[Any], list[Any]] | None = None
    # optional evaluation sets: (spec, root) -> why the set is absent, or None; default: the root is missing
    absent: Callable[[Any, Path], str | None] | None = None


def _builtin_cls(spec, root, data):
    from .datasets.synthetic import SyntheticShapes
    return SyntheticShapes(split=spec.split, domain=spec.domain, num_samples=spec.num_samples, seed=spec.seed,
                           image_size=data.augment.image_size)


def _builtin_seg(spec, root, data):
    from .datasets.synthetic import SyntheticScenes
    return SyntheticScenes(split=spec.split, domain=spec.domain, num_samples=spec.num_samples, seed=spec.seed,
                           image_size=data.augment.crop_size[0])


def _imagenet(spec, root, data):
    from .datasets.imagenet import ImageNet
    # The shrunk copy serves training only: evaluation always reads the original val images.
    return ImageNet(root, split=spec.split, num_classes_subset=data.class_subset, fraction=spec.fraction,
                    seed=spec.seed, shrunk_short_side=data.shrunk_short_side if spec.split == "train" else 0)


def _image_folder(spec, root, data):
    # A folder of class folders (e.g. a CycleGAN/Monet-styled copy of ImageNet val): root/split/<wnid>/*.
    # Labels by folder NAME from `classes_root` (the real val), not by position in this folder's listing.
    from .datasets.imagenet import ImageNet, reference_classes
    classes = reference_classes(spec.classes_root) if spec.classes_root else None
    return ImageNet(root, split=spec.split, num_classes_subset=data.class_subset, fraction=spec.fraction,
                    seed=spec.seed, classes=classes, classes_source=spec.classes_root)


def _cityscapes(spec, root, data):
    from .datasets.cityscapes import Cityscapes
    return Cityscapes(root, split=spec.split, fraction=spec.fraction, seed=spec.seed)


def _gta5(spec, root, data):
    from .datasets.gta5 import GTA5
    return GTA5(root, split=spec.split, fraction=spec.fraction, seed=spec.seed, allow_no_split=data.gta5_allow_no_split)


def _bdd100k(spec, root, data):
    from .datasets.bdd100k import BDD100K
    return BDD100K(root, split=spec.split, fraction=spec.fraction, seed=spec.seed)


def _mapillary(spec, root, data):
    from .datasets.mapillary import MapillaryVistas
    return MapillaryVistas(root, split=spec.split, fraction=spec.fraction, seed=spec.seed, eval_size=spec.eval_size)


def _ade20k(spec, root, data):
    from .datasets.ade20k import ADE20K
    return ADE20K(root, split=spec.split, fraction=spec.fraction, seed=spec.seed)


def _synthia(spec, root, data):
    from .datasets.synthia import SynthiaRandCityscapes
    return SynthiaRandCityscapes(root, split=spec.split, fraction=spec.fraction, seed=spec.seed)


def _imagenet_c(spec, root, data):
    from .datasets.robustness import imagenet_c
    if len(spec.corruptions or ()) != 1 or len(spec.severities or ()) != 1:
        raise ConfigError(f"{spec.name}: an ImageNet-C reader reads one corruption at one severity (the data "
                          "module expands a spec into one evaluation set each)")
    return imagenet_c(root, spec.corruptions[0], spec.severities[0], class_subset=data.class_subset,
                      fraction=spec.fraction, seed=spec.seed)


def _expand_imagenet_c(spec) -> list:
    from omegaconf import OmegaConf

    from .datasets.robustness import imagenet_c_sets
    out = []
    for name, corruption, severity in imagenet_c_sets(spec):
        one = OmegaConf.merge(spec, {"name": name, "corruptions": [corruption], "severities": [severity]})
        OmegaConf.set_readonly(one, True)
        out.append(one)
    return out


def _imagenet_c_absent(spec, root) -> str | None:
    # the root can hold the 15 without the extras (a separate tar): a spec is absent when none of its folders is
    from .datasets.robustness import imagenet_c_absent
    return imagenet_c_absent(spec, root)


def _imagenet_r(spec, root, data):
    from .datasets.robustness import imagenet_r
    return imagenet_r(root, class_subset=data.class_subset, fraction=spec.fraction, seed=spec.seed)


def _imagenet_sketch(spec, root, data):
    from .datasets.robustness import imagenet_sketch
    return imagenet_sketch(root, class_subset=data.class_subset, fraction=spec.fraction, seed=spec.seed)


def _synthia_subsets() -> dict[str, tuple[int, ...]]:
    from .datasets.synthia import CLASS_SUBSETS
    return dict(CLASS_SUBSETS)


DATASETS: dict[str, DatasetEntry] = {
    "builtin_cls": DatasetEntry("classification", _builtin_cls, None, "light",
                                "procedural shapes in two appearance domains (no download)"),
    "builtin_seg": DatasetEntry("segmentation", _builtin_seg, None, "segmentation",
                                "procedural street scenes in two appearance domains (no download)"),
    "imagenet": DatasetEntry("classification", _imagenet, "imagenet", "imagenet", "ILSVRC-2012 class folders"),
    "image_folder": DatasetEntry("classification", _image_folder, None, "imagenet",
                                 "class folders in ImageNet's layout, e.g. a Monet-styled copy of val",
                                 needs_root=True),
    # Robustness sets, labelled in ImageNet-1k's 1000 classes (ibnnet/data/datasets/robustness.py)
    "imagenet_c": DatasetEntry("classification", _imagenet_c, "imagenet-c", "center_crop",
                               "ImageNet-C: 15 corruptions x 5 severities of val (224 px; mCE), and the 4 extras",
                               expand=_expand_imagenet_c, absent=_imagenet_c_absent),
    "imagenet_r": DatasetEntry("classification", _imagenet_r, "imagenet-r", "imagenet",
                               "ImageNet-R: renditions of 200 classes (scored on those 200 logits)"),
    "imagenet_sketch": DatasetEntry("classification", _imagenet_sketch, "imagenet-sketch", "imagenet",
                                    "ImageNet-Sketch: 50 sketches of each of the 1000 classes"),
    "cityscapes": DatasetEntry("segmentation", _cityscapes, "cityscapes", "segmentation", "Cityscapes gtFine",
                               cityscapes_target=True),
    "gta5": DatasetEntry("segmentation", _gta5, "gta5", "segmentation", "GTA5 (Playing for Data)"),
    "bdd100k": DatasetEntry("segmentation", _bdd100k, "bdd100k", "segmentation",
                            "BDD100K 10k semantic segmentation (19 Cityscapes classes)", cityscapes_target=True),
    "mapillary": DatasetEntry("segmentation", _mapillary, "mapillary", "segmentation",
                              "Mapillary Vistas v1.2/v2.0, mapped to the 19 Cityscapes classes",
                              cityscapes_target=True),
    "ade20k": DatasetEntry("segmentation", _ade20k, "ade20k", "segmentation",
                           "ADE20K SceneParsing (ADEChallengeData2016), 150 classes, label 0 ignored"),
    "synthia": DatasetEntry("segmentation", _synthia, "synthia", "segmentation",
                            "SYNTHIA-RAND-CITYSCAPES (its models scored over 16 / 13 classes)",
                            class_subsets=_synthia_subsets),
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


def absent_reason(spec, data_root: str | Path) -> str | None:
    """Why an optional evaluation set is skipped (its files are missing), or None when it is read."""
    root = dataset_root(spec, data_root)
    if root is None:
        return None
    entry = DATASETS[spec.dataset]
    if entry.absent is not None:
        return entry.absent(spec, root)
    return None if root.exists() else f"{root} does not exist"


def class_subsets(train_dataset: str | None, eval_dataset: str) -> dict[str, tuple[int, ...]]:
    """Extra mIoU keys (metric name -> train ids) for a model trained on ``train_dataset`` and evaluated on
    ``eval_dataset``.

    SYNTHIA's mIoU-16/13 are the numbers of SYNTHIA-trained models on Cityscapes val (AdaptSegNet Table 2,
    DAFormer). They are given on BDD100K and Mapillary too: these share Cityscapes' 19 train ids, and the
    subsets are fixed by what the source can teach (no terrain, truck, train), not by the target, so the three
    targets' numbers stay comparable; the 19-class ``miou`` is kept beside them. An evaluation on SYNTHIA
    itself gets none (its own classes are all a model could learn there).
    """
    source, target = DATASETS.get(train_dataset or ""), DATASETS.get(eval_dataset)
    if source is None or source.class_subsets is None or target is None or not target.cityscapes_target:
        return {}
    return source.class_subsets()


def build_dataset(spec, data_root: str | Path, data) -> Dataset:
    """The raw dataset of ``spec``; ``data`` is the run's data config (image size, class subset)."""
    return DATASETS[spec.dataset].build(spec, dataset_root(spec, data_root), data)
