"""Pre-flight checks of dataset folders: counts, missing labels, size mismatches, bad label values.

``check_dataset(name, root)`` never raises on a broken dataset; it returns a :class:`CheckReport` whose
``problems`` make ``ok`` False (things that would make a loader raise, misalign class indices, or hide a
corrupt pair behind the loaders' tolerant resize) and whose ``warnings`` do not (counts that differ from
the official ones: reduced copies are legitimate). ``hints`` say what to do.

Speed: image/label sizes come from PNG headers (``PIL.Image.open(...).size``, no pixel decoding).
Label values do need decoding; every label file is decoded (about 5-10 ms per full-size label, i.e.
under a minute for Cityscapes and a few minutes for GTA5); pass ``check_label_values=False`` to skip.
Each kind of problem lists at most ``max_listed`` files, then a count of the rest.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import ConfigError, DataError, DataNotFoundError
from ...progress import progress_bar
from ..datasets.cityscapes import (
    CITYSCAPES_SPLITS,
    cityscapes_label_path,
    find_cityscapes_dir,
    list_cityscapes_images,
)
from ..datasets.gta5 import SPLIT_URL, list_frames, read_gta5_splits
from ..datasets.imagenet import list_class_folders, list_images
from ..labels import KNOWN_LABEL_VALUES

EXPECTED = {
    "cityscapes": {"train": 2975, "val": 500, "test": 1525},
    "gta5": {"all": 24966, "train": 12403, "val": 6382, "test": 6181},
    "imagenet": {"train_classes": 1000, "val_classes": 1000, "train": 1281167, "val": 50000},
    "bdd100k": {"train": 7000, "val": 1000},
    "mapillary": {"train": 18000, "val": 2000},
    "synthia": {"all": 9400},
    "ade20k": {"train": 20210, "val": 2000},
    # per corruption and severity; the 200 classes of ImageNet-R; 1000 classes x ~50 sketches
    "imagenet_c": {"per_set": 50000},
    "imagenet_r": {"images": 30000, "classes": 200},
    "imagenet_sketch": {"images": 50889, "classes": 1000},
}
DATASETS = tuple(EXPECTED)


@dataclass
class CheckReport:
    name: str
    root: str
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def hint(self, text: str) -> None:
        if text not in self.hints:
            self.hints.append(text)

    def render(self) -> str:
        status = "OK" if self.ok else f"{len(self.problems)} PROBLEM(S)"
        lines = [f"{self.name} at {self.root}: {status}"]
        if self.counts:
            expected = EXPECTED.get(self.name, {})
            lines.append("counts:")
            for key, n in self.counts.items():
                ref = f"  (official {expected[key]})" if key in expected else ""
                lines.append(f"  {key}: {n}{ref}")
        for title, items in (("problems", self.problems), ("warnings", self.warnings), ("what to fix", self.hints)):
            if items:
                lines.append(f"{title}:")
                lines.extend(f"  - {item}" for item in items)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class _Capped:
    """Collects one kind of issue, keeping the first ``limit`` messages and a count of the rest."""

    def __init__(self, what: str, limit: int) -> None:
        self.what, self.limit, self.items, self.total = what, limit, [], 0

    def add(self, message: str) -> None:
        self.total += 1
        if len(self.items) < self.limit:
            self.items.append(message)

    def flush(self, out: list[str]) -> None:
        out.extend(self.items)
        if self.total > len(self.items):
            out.append(f"... and {self.total - len(self.items)} more {self.what}")


class _PairChecker:
    """Checks (image, label) pairs: header sizes always, label mode and values when asked."""

    def __init__(self, limit: int, check_values: bool) -> None:
        self.check_values = check_values
        self.unreadable = _Capped("unreadable files", limit)
        self.mismatch = _Capped("image/label size mismatches", limit)
        self.bad_mode = _Capped("labels that are not 8-bit label-id images", limit)
        self.bad_values = _Capped("labels with unknown values", limit)

    def check(self, image: Path, label: Path) -> None:
        try:
            with Image.open(image) as im:
                image_size = im.size
        except Exception as exc:  # noqa: BLE001  (any decoder error means the file is unusable)
            self.unreadable.add(f"cannot read image {image}: {exc}")
            return
        try:
            with Image.open(label) as lab:
                if lab.size != image_size:
                    self.mismatch.add(
                        f"size mismatch: {label} is {lab.size[0]}x{lab.size[1]}, "
                        f"image {image.name} is {image_size[0]}x{image_size[1]}"
                    )
                if lab.mode not in ("L", "P") and not lab.mode.startswith("I"):
                    self.bad_mode.add(f"{label}: mode {lab.mode!r}, expected 8-bit label ids ('L' or palette 'P')")
                    return
                if self.check_values:
                    values = np.unique(np.asarray(lab))
                    unknown = [int(v) for v in values if int(v) not in KNOWN_LABEL_VALUES]
                    if unknown:
                        shown = ", ".join(map(str, unknown[:8])) + (" ..." if len(unknown) > 8 else "")
                        self.bad_values.add(f"{label}: values outside Cityscapes label ids 0..33/255: {shown}")
        except Exception as exc:  # noqa: BLE001
            self.unreadable.add(f"cannot read label {label}: {exc}")

    def flush(self, report: CheckReport) -> None:
        for bucket in (self.unreadable, self.mismatch, self.bad_mode, self.bad_values):
            bucket.flush(report.problems)
        if self.unreadable.total:
            report.hint("unreadable files: re-extract them from the original archives")
        if self.mismatch.total:
            report.hint(
                f"{self.mismatch.total} image/label size mismatches: the loaders resize such labels with nearest "
                "neighbour and warn once per file; re-extract those files, or delete the pairs, to fix"
            )
        if self.bad_mode.total:
            report.hint(
                "labels must be the 8-bit label-id PNGs (Cityscapes *_gtFine_labelIds.png, GTA5 palette PNGs as "
                "shipped); colour-converted or re-saved RGB labels cannot be mapped reliably"
            )
        if self.bad_values.total:
            report.hint(
                "label values above 33 are not Cityscapes label ids: make sure the files are *_labelIds (not "
                "trainIds/colour/instanceIds) and were not resized with interpolation"
            )


def _compare(report: CheckReport, key: str, n: int, what: str) -> None:
    expected = EXPECTED[report.name].get(key)
    if expected is not None and n != expected:
        report.warnings.append(f"{what}: {n}, official {expected} (fine for a reduced copy)")


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _check_cityscapes(report: CheckReport, root: Path, limit: int, check_values: bool, progress: bool = False) -> None:
    images_root = find_cityscapes_dir(root, "leftImg8bit")
    labels_root = find_cityscapes_dir(root, "gtFine")
    if images_root is None:
        report.problems.append(
            f"leftImg8bit not found (looked for {root / 'leftImg8bit'} and "
            f"{root / 'leftImg8bit_trainvaltest' / 'leftImg8bit'})"
        )
        report.hint(f"leftImg8bit missing: download leftImg8bit_trainvaltest.zip and unpack into {root}")
    if labels_root is None:
        report.problems.append(
            f"gtFine not found (looked for {root / 'gtFine'} and {root / 'gtFine_trainvaltest' / 'gtFine'})"
        )
        report.hint(f"gtFine missing: download gtFine_trainvaltest.zip and unpack into {root}")
    if images_root is None:
        return

    pairs = _PairChecker(limit, check_values)
    missing = _Capped("images without labels", limit)
    for split in CITYSCAPES_SPLITS:
        # Test labels are withheld by the benchmark, so a missing test folder is only a warning.
        sink = report.warnings if split == "test" else report.problems
        img_dir = images_root / split
        if not img_dir.is_dir():
            report.counts[split] = 0
            sink.append(f"{_rel(img_dir, root)} missing")
            report.hint(f"{_rel(img_dir, root)} missing: download leftImg8bit_trainvaltest.zip and unpack into {root}")
            continue
        images = list_cityscapes_images(img_dir)
        report.counts[split] = len(images)
        if not images:
            sink.append(f"{_rel(img_dir, root)} has no <city>/*_leftImg8bit.png files")
            continue
        _compare(report, split, len(images), f"{split} images")
        if labels_root is None:
            continue
        lab_dir = labels_root / split
        if not lab_dir.is_dir():
            note = " (test labels are withheld anyway)" if split == "test" else ""
            sink.append(f"{_rel(lab_dir, root)} missing{note}")
            report.hint(f"{_rel(lab_dir, root)} missing: download gtFine_trainvaltest.zip and unpack into {root}")
            continue
        n_labels = n_missing_test = 0
        expected_labels = set()
        for img in progress_bar(images, enabled=progress, desc=f"cityscapes {split}", unit="img"):
            lp = cityscapes_label_path(lab_dir, img)
            expected_labels.add(lp.name)
            if lp.is_file():
                n_labels += 1
                pairs.check(img, lp)
            elif split == "test":
                n_missing_test += 1
            else:
                missing.add(f"missing label {lp}")
        report.counts[f"{split}_labels"] = n_labels
        if n_missing_test:
            report.warnings.append(f"{n_missing_test} test images have no label file (test labels are withheld)")
        orphans = sum(1 for p in lab_dir.glob("*/*_gtFine_labelIds.png") if p.name not in expected_labels)
        if orphans:
            report.warnings.append(f"{orphans} {split} label files have no image in {_rel(img_dir, root)}")
    missing.flush(report.problems)
    if missing.total:
        report.hint(
            f"{missing.total} images have no *_gtFine_labelIds.png: re-unpack gtFine_trainvaltest.zip into {root} "
            "(the labelIds files ship in that archive)"
        )
    pairs.flush(report)


def _check_gta5(report: CheckReport, root: Path, limit: int, check_values: bool, progress: bool = False) -> None:
    images_dir, labels_dir = root / "images", root / "labels"
    for folder, what in ((images_dir, "images"), (labels_dir, "labels")):
        if not folder.is_dir():
            report.problems.append(f"{what}/ missing: {folder}")
            report.hint(f"{what}/ missing: unpack the GTA5 {what} archives so that {folder / '00001.png'} exists")
    frames = list_frames(images_dir) if images_dir.is_dir() else {}
    labels = list_frames(labels_dir) if labels_dir.is_dir() else {}
    report.counts["all"] = len(frames)
    report.counts["labels"] = len(labels)
    if images_dir.is_dir() and not frames:
        report.problems.append(f"{images_dir} has no image files")
    if frames:
        _compare(report, "all", len(frames), "frames")

    try:
        splits, source = read_gta5_splits(root)
    except Exception as exc:  # noqa: BLE001  (a corrupt split.mat must not hide the rest of the report)
        report.problems.append(f"cannot read split files in {root}: {exc}")
        splits, source = {}, "error"
    if source is None:
        report.warnings.append("no split.mat or train/val/test.txt: split=train/val/test stop with an error "
                               "(unless data.gta5_allow_no_split=true); split=all uses every frame")
        report.hint(
            f"split.mat not found: all {len(frames)} frames will be used for split=all, and split=train/val/test "
            f"fail; download {SPLIT_URL}, unzip it and put its split.mat at {root / 'split.mat'}"
        )
    elif splits:
        if not source.endswith("split.mat"):
            report.warnings.append(f"splits come from text lists ({source}), not the official split.mat")
        for split in ("train", "val", "test"):
            if split not in splits:
                report.problems.append(f"{source} defines no {split} split")
                continue
            listed = set(splits[split])
            report.counts[split] = len(listed)
            _compare(report, split, len(listed), f"{split} frames listed")
            absent = len(listed - frames.keys())
            if absent and frames:
                msg = f"{absent} of {len(listed)} {split} frames listed in {source} are not in images/"
                if absent == len(listed):
                    report.problems.append(msg)
                else:
                    report.warnings.append(msg + " (skipped by the loader; fine for a reduced copy)")
        names = [s for s in ("train", "val", "test") if s in splits]
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                both = set(splits[a]) & set(splits[b])
                if both:
                    report.problems.append(f"{len(both)} frames are in both {a} and {b} (e.g. {min(both)})")

    pairs = _PairChecker(limit, check_values)
    missing = _Capped("images without labels", limit)
    for stem in progress_bar(sorted(frames), enabled=progress, desc="gta5 frames", unit="img"):
        label = labels.get(stem)
        if label is None or label.suffix.lower() != ".png":
            missing.add(f"missing label {labels_dir / (stem + '.png')}")
        else:
            pairs.check(frames[stem], label)
    missing.flush(report.problems)
    if missing.total:
        report.hint(f"{missing.total} frames have no label: unpack the GTA5 label archives into {labels_dir}")
    orphans = len(labels.keys() - frames.keys())
    if orphans and frames:
        report.warnings.append(f"{orphans} label files have no image in images/")
    pairs.flush(report)


WNID = re.compile(r"n\d{8}")
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")   # JPEG; PNG (one ImageNet train ".JPEG" is a PNG)


def _unreadable_image(path: Path, decode: bool) -> str | None:
    """Why ``path`` cannot be read as an image (None if it can): empty, not a JPEG/PNG at all (an HTML error
    page saved by a failed download), or, with ``decode``, a file the decoder rejects (truncated)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        if not head:
            return "empty file"
        if not head.startswith(_IMAGE_MAGIC):
            return f"not a JPEG or PNG (starts with {head[:8]!r})"
        if decode:
            with Image.open(path) as im:
                im.load()
    except (OSError, SyntaxError, ValueError) as e:   # PIL's errors for damaged files
        return f"cannot be decoded ({type(e).__name__}: {str(e)[:80]})"
    return None


def _check_imagenet(report: CheckReport, root: Path, limit: int, progress: bool = False,
                    decode: bool = False) -> None:
    fixes = {
        "train": f"train/ missing: unpack ILSVRC2012_img_train.tar (and the per-class tars in it) into "
                 f"{root / 'train'}/<wnid>/ (not needed for evaluation-only use such as IBN Table 1)",
        "val": f"val/ missing: unpack ILSVRC2012_img_val.tar into {root / 'val'} and sort it into <wnid>/ folders "
               "with the devkit ground truth",
    }
    class_sets: dict[str, list[str]] = {}
    for split in ("train", "val"):
        d = root / split
        if not d.is_dir():
            report.problems.append(f"{split}/ missing: {d}")
            report.hint(fixes[split])
            continue
        classes = list_class_folders(d)
        if not classes:
            loose = list_images(d)
            if loose:
                report.problems.append(f"{d} holds {len(loose)} images but no <wnid>/ class folders")
                report.hint(f"{split}/ is flat: reorganise it into {d}/<wnid>/ folders (val: use the devkit labels)")
            else:
                report.problems.append(f"{d} is empty")
                report.hint(fixes[split])
            continue
        class_sets[split] = classes
        not_wnids = [c for c in classes if not WNID.fullmatch(c)]
        if not_wnids:   # each folder is a class: a stray one shifts every class index after it
            report.problems.append(f"{split}/: {len(not_wnids)} class folder(s) are not WordNet ids (ImageNet's look "
                                   f"like n01440764): {', '.join(not_wnids[:limit])}")
            report.hint(f"remove the folders that are not wnids from {d} (or move their images into the right "
                        "<wnid>/ folders): every folder becomes a class")
        empty = _Capped(f"empty {split} class folders", limit)
        bad = _Capped(f"unreadable {split} images", limit)
        n_images = n_other = 0
        for wnid in progress_bar(classes, enabled=progress, desc=f"imagenet {split}", unit="class"):
            with os.scandir(d / wnid) as it:
                names = [e.name for e in it if e.is_file()]
            images = [name for name in names if name.lower().endswith((".jpeg", ".jpg", ".png"))]
            n_images += len(images)
            n_other += len(names) - len(images)
            if not images:
                empty.add(f"{split}/{wnid} has no images")
            for name in images:
                why = _unreadable_image(d / wnid / name, decode)
                if why:
                    bad.add(f"{split}/{wnid}/{name}: {why}")
        report.counts[f"{split}_classes"] = len(classes)
        report.counts[split] = n_images
        _compare(report, f"{split}_classes", len(classes), f"{split} classes")
        _compare(report, split, n_images, f"{split} images")
        empty.flush(report.warnings)
        if bad.total:
            bad.flush(report.problems)
            report.hint("unreadable images would stop a training run when they are sampled: extract them again from "
                        "the release tars, or delete them")
        if n_other:
            report.warnings.append(f"{n_other} non-image files under {d} are ignored")
    if len(class_sets) == 2 and class_sets["train"] != class_sets["val"]:
        only_train = sorted(set(class_sets["train"]) - set(class_sets["val"]))
        only_val = sorted(set(class_sets["val"]) - set(class_sets["train"]))
        report.problems.append(
            f"train and val class folders differ ({len(only_train)} only in train, {len(only_val)} only in val, "
            f"e.g. {(only_train + only_val)[:3]}): sorted-wnid class indices would not match"
        )
        report.hint("give train and val the same class folders, or pass classes=ImageNet(root, 'train').classes "
                    "when reading val")


# The domain-generalization targets: the splits to check, and the label values their files may hold.
_DG_SPLITS = {"bdd100k": ("train", "val"), "mapillary": ("train", "val"), "synthia": ("all",)}
_DG_VALUES = {"bdd100k": set(range(19)) | {255}, "mapillary": set(range(66)), "synthia": set(range(23))}
_DG_LABEL_KIND = {"bdd100k": "8-bit train-id PNGs (labels/sem_seg/masks, not the colour maps)",
                  "mapillary": "8-bit palette PNGs of the v1.2 class ids",
                  "synthia": "16-bit PNGs of GT/LABELS (class id in the first channel)"}


def _dg_reader(name: str):
    from ..datasets.bdd100k import BDD100K
    from ..datasets.mapillary import MapillaryVistas
    from ..datasets.synthia import SynthiaRandCityscapes
    return {"bdd100k": BDD100K, "mapillary": MapillaryVistas, "synthia": SynthiaRandCityscapes}[name]


def _raw_label_ids(name: str, path: str) -> np.ndarray:
    """The ids stored in a label file (before mapping), checking the file's kind."""
    if name == "synthia":
        from ..datasets.synthia import read_synthia_ids
        return read_synthia_ids(path).numpy()
    with Image.open(path) as lab:
        if lab.mode not in ("L", "P"):
            raise DataError(f"{path}: mode {lab.mode!r}, expected {_DG_LABEL_KIND[name]}")
        return np.asarray(lab)


def _check_dg_target(report: CheckReport, root: Path, limit: int, check_values: bool, progress: bool) -> None:
    """BDD100K, Mapillary, SYNTHIA: the reader's own layout checks per split, then every label file."""
    name = report.name
    reader = _dg_reader(name)
    for split in _DG_SPLITS[name]:
        try:
            ds = reader(root, split=split)
        except (DataNotFoundError, DataError) as e:
            report.problems.append(str(e))
            report.hint(f"{name}: the expected layout is in the docstring of {reader.__module__} "
                        "(and docs/datasets.md)")
            continue
        report.counts[split] = len(ds)
        _compare(report, split, len(ds), f"{split} images")
        if not check_values:
            continue
        unreadable, bad_values, mismatch = (_Capped("unreadable labels", limit), _Capped("labels with unknown values",
                                            limit), _Capped("image/label size mismatches", limit))
        for image_path, label_path in progress_bar(ds.samples, desc=f"{name} {split}", unit="label",
                                                   enabled=progress):
            try:
                ids = _raw_label_ids(name, label_path)
                with Image.open(image_path) as im:
                    if im.size != (ids.shape[1], ids.shape[0]):
                        mismatch.add(f"size mismatch: {label_path} is {ids.shape[1]}x{ids.shape[0]}, image "
                                     f"{Path(image_path).name} is {im.size[0]}x{im.size[1]}")
            except Exception as exc:  # noqa: BLE001  (any decoder error means the file is unusable)
                unreadable.add(f"cannot read {label_path}: {exc}")
                continue
            unknown = sorted(int(v) for v in np.unique(ids) if int(v) not in _DG_VALUES[name])
            if unknown:
                bad_values.add(f"{label_path}: values {', '.join(map(str, unknown[:8]))} are not {name} label ids")
        for bucket in (unreadable, bad_values, mismatch):
            bucket.flush(report.problems)
        if unreadable.total or bad_values.total:
            report.hint(f"{name} labels must be the {_DG_LABEL_KIND[name]}; re-extract them from the original archive")
        if mismatch.total:
            report.hint("image/label size mismatches: re-extract those files, or delete the pairs")


def _check_ade20k(report: CheckReport, root: Path, limit: int, check_values: bool, progress: bool) -> None:
    """ADEChallengeData2016: images/ and annotations/ per split, one label per image (and no label without one),
    8-bit labels of the same size holding 0..150 only."""
    from ..datasets.ade20k import (
        ADE20K_URL,
        NUM_ADE20K_CLASSES,
        ade20k_dirs,
        list_ade20k_images,
    )
    missing, orphans = _Capped("images without labels", limit), _Capped("labels without images", limit)
    unreadable, bad_mode = _Capped("unreadable files", limit), _Capped("labels that are not 8-bit", limit)
    bad_values, mismatch = _Capped("labels with values above 150", limit), _Capped("size mismatches", limit)
    for split in ("train", "val"):
        images_dir, labels_dir = ade20k_dirs(root, split)
        absent = [d for d in (images_dir, labels_dir) if not d.is_dir()]
        for d in absent:
            report.problems.append(f"{_rel(d, root)} missing: {d}")
        if absent:
            report.counts[split] = 0
            report.hint(f"download {ADE20K_URL}, unzip it and give its ADEChallengeData2016 folder as the root "
                        "(it holds images/ and annotations/)")
            continue
        images = list_ade20k_images(images_dir)
        report.counts[split] = len(images)
        if not images:
            report.problems.append(f"{_rel(images_dir, root)} has no *.jpg files")
            continue
        _compare(report, split, len(images), f"{split} images")
        stems = {p.stem for p in images}
        labels = {p.stem: p for p in labels_dir.iterdir() if p.suffix.lower() == ".png"}
        report.counts[f"{split}_labels"] = len(labels)
        for stem in sorted(labels.keys() - stems):
            orphans.add(f"label without image: {labels[stem]}")
        for img in progress_bar(images, enabled=progress, desc=f"ade20k {split}", unit="img"):
            label = labels.get(img.stem)
            if label is None:
                missing.add(f"missing label {labels_dir / (img.stem + '.png')}")
                continue
            try:
                with Image.open(img) as im:
                    image_size = im.size
                with Image.open(label) as lab:
                    if lab.size != image_size:
                        mismatch.add(f"size mismatch: {label} is {lab.size[0]}x{lab.size[1]}, image {img.name} "
                                     f"is {image_size[0]}x{image_size[1]}")
                    if lab.mode not in ("L", "P"):
                        bad_mode.add(f"{label}: mode {lab.mode!r}, expected an 8-bit grayscale label PNG ('L')")
                        continue
                    if check_values:
                        top = int(np.asarray(lab).max(initial=0))
                        if top > NUM_ADE20K_CLASSES:
                            values = [int(v) for v in np.unique(np.asarray(lab)) if v > NUM_ADE20K_CLASSES]
                            bad_values.add(f"{label}: values {', '.join(map(str, values[:8]))} above "
                                           f"{NUM_ADE20K_CLASSES} (ADE20K labels are 0 = other, 1..150 = classes)")
            except Exception as exc:  # noqa: BLE001  (any decoder error means the file is unusable)
                unreadable.add(f"cannot read {img} / {label}: {exc}")
    for bucket in (missing, unreadable, bad_mode, bad_values, mismatch):
        bucket.flush(report.problems)
    orphans.flush(report.problems)
    if missing.total or orphans.total:
        report.hint("images and annotations/ labels must pair up by name (ADE_train_00000001.jpg <-> "
                    f"ADE_train_00000001.png): re-extract {ADE20K_URL.rsplit('/', 1)[1]}")
    if bad_mode.total or bad_values.total or unreadable.total:
        report.hint("labels must be the release's 8-bit grayscale PNGs (values 0..150), not colour renderings or "
                    "files re-saved with interpolation: re-extract them from the zip")
    if mismatch.total:
        report.hint("image/label size mismatches: re-extract those files, or delete the pairs")


def _check_robustness(report: CheckReport, root: Path, limit: int, progress: bool) -> None:
    """ImageNet-C (every corruption x severity folder; the 4 extras when present), ImageNet-R, ImageNet-Sketch:
    each read by its reader."""
    from ..datasets.robustness import (
        CORRUPTIONS,
        EXTRA_CORRUPTIONS,
        SEVERITIES,
        corruption_folder,
        imagenet_c,
        imagenet_r,
        imagenet_sketch,
    )
    name = report.name
    if name == "imagenet_c":
        missing = _Capped("missing ImageNet-C folders", limit)
        small: list[str] = []

        def count_sets(corruptions, missing: _Capped, prefix: str = "", note: str = "") -> None:
            """Each corruption x severity folder: present, readable, and its image count (for the warning)."""
            for c in corruptions:
                for s in SEVERITIES:
                    folder = corruption_folder(root, c, s)
                    if not folder.is_dir():
                        missing.add(f"missing: {_rel(folder, root)}/{note}")
                        continue
                    try:
                        n = len(imagenet_c(root, c, s))
                    except (DataNotFoundError, DataError) as e:
                        report.problems.append(str(e))
                        continue
                    report.counts[f"{prefix}{c}/{s}"] = n
                    if n != EXPECTED[name]["per_set"]:
                        small.append(f"{c}/{s}: {n}")
        count_sets(progress_bar(CORRUPTIONS, enabled=progress, desc="imagenet_c", unit="corruption"), missing)
        missing.flush(report.problems)
        if missing.total:
            report.hint("unpack the four released tars (noise, blur, weather, digital) into this folder, or make the "
                        "set with `ibnnet data corrupt <imagenet>/val " + str(root) + "`; or list the corruptions "
                        "you have in the spec's `corruptions:` (then there is no mCE)")
        # The extras (extra.tar) are optional: counted as extra/<corruption>/<severity> when any is there, and
        # then all 20 folders are needed, as the spec that reads them (imagenet_c_extra) lists all four.
        present = [c for c in EXTRA_CORRUPTIONS if any(corruption_folder(root, c, s).is_dir() for s in SEVERITIES)]
        extra_missing = _Capped("missing extra corruption folders", limit)
        count_sets(EXTRA_CORRUPTIONS if present else (), extra_missing, "extra/", " (extra corruption)")
        extra_missing.flush(report.problems)
        if extra_missing.total:
            report.hint("the extras are partly there: unpack the whole extra.tar into this folder, or make them with "
                        "`ibnnet data corrupt <imagenet>/val " + str(root) + " --extras` (they stay outside the mCE)")
        if small:
            report.warnings.append(f"{len(small)} sets do not have the 50000 images of the full benchmark, e.g. "
                                   + ", ".join(small[:3]) + " (a reduced set made with --fraction is fine)")
        return
    reader = imagenet_r if name == "imagenet_r" else imagenet_sketch
    try:
        ds = reader(root)
    except (DataNotFoundError, DataError) as e:
        report.problems.append(str(e))
        report.hint(f"{name}: the expected layout is in ibnnet/data/datasets/robustness.py (and docs/datasets.md)")
        return
    report.counts["images"] = len(ds)
    report.counts["classes"] = len({label for _, label in ds.samples})
    _compare(report, "images", len(ds), "images")
    _compare(report, "classes", report.counts["classes"], "classes")


def check_dataset(
    name: str, root: str | os.PathLike, *, check_label_values: bool = True, max_listed: int = 20,
    progress: bool = False, decode_images: bool = False,
) -> CheckReport:
    """Check a dataset folder; ``name`` is one of :data:`DATASETS` (imagenet, cityscapes, gta5, bdd100k,
    mapillary, synthia, ade20k, imagenet_c, imagenet_r, imagenet_sketch).

    ``progress``: a progress bar (stderr) over the images or class folders read. ImageNet: every image's first
    bytes are checked (a JPEG or PNG, not empty); ``decode_images`` also decodes each one (slow: truncated files)."""
    key = name.lower()
    if key not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose from {DATASETS}")
    root = Path(root)
    report = CheckReport(name=key, root=str(root))
    if not root.is_dir():
        report.problems.append(f"root folder does not exist: {root}")
        report.hint(f"point the {key} root at the folder you unpacked the dataset into")
        return report
    if key == "cityscapes":
        _check_cityscapes(report, root, max_listed, check_label_values, progress)
    elif key == "gta5":
        _check_gta5(report, root, max_listed, check_label_values, progress)
    elif key in _DG_SPLITS:
        _check_dg_target(report, root, max_listed, check_label_values, progress)
    elif key == "ade20k":
        _check_ade20k(report, root, max_listed, check_label_values, progress)
    elif key.startswith("imagenet_"):
        _check_robustness(report, root, max_listed, progress)
    else:
        _check_imagenet(report, root, max_listed, progress, decode=decode_images)
    return report


__all__ = ["CheckReport", "DATASETS", "EXPECTED", "check_dataset"]
