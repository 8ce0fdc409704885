"""ImageNet robustness sets: ImageNet-C, ImageNet-R and ImageNet-Sketch, with their evaluation protocols.

Every set is labelled in ImageNet-1k's label space: a class is the index of its wnid among the 1000 sorted
ILSVRC-2012 wnids (timm's ``ImageNetInfo``, the order torchvision's ImageFolder gives the real val), so a
model trained on ImageNet is scored without any relabelling, and a partial copy shifts nothing.

ImageNet-C (Hendrycks & Dietterich, ICLR 2019; github.com/hendrycks/robustness)
    Layout ``<root>/<corruption>/<severity>/<wnid>/*.JPEG`` as the released tars unpack (``noise.tar``,
    ``blur.tar``, ``weather.tar``, ``digital.tar``), or with the four category folders kept
    (``<root>/noise/gaussian_noise/1/...``). Their images are 224x224 (val resized to 256, centre crop 224,
    corrupted, JPEG quality 85: ``ImageNet-C/create_c/make_imagenet_c.py``), and the authors' evaluation
    (``ImageNet-C/test.py``) only centre-crops them to 224: no second resize (policy ``center_crop``).
    ``ibnnet data corrupt`` makes the same layout from a val folder (:mod:`ibnnet.data.tools.corruptions`).
    Metrics (:func:`imagenet_c_summary`): CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c}, mCE = mean_c CE_c;
    relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean).
    The four extra corruptions (:data:`EXTRA_CORRUPTIONS`: speckle noise, gaussian blur, spatter, saturate;
    ``extra.tar`` of the same release, same layout, also under an ``extra/`` folder) are the authors' held-out
    validation corruptions: read like the 15, reported as plain errors, never part of the mCE.

ImageNet-R (Hendrycks et al., ICCV 2021, "The Many Faces of Robustness"; github.com/hendrycks/imagenet-r)
    Layout ``<root>/<wnid>/*.jpg`` (``imagenet-r.tar`` unpacks to ``imagenet-r/``), 200 of the 1000 classes.
    The authors' ``eval.py`` scores a 1000-class model on the 200 classes' logits only
    (``output[:, imagenet_r_mask]``): the set's ``logit_classes`` restrict the prediction to those classes.
    Evaluation transform: resize 256, centre crop 224 (theirs).

ImageNet-Sketch (Wang et al., NeurIPS 2019; github.com/HaohanWang/ImageNet-Sketch)
    Layout ``<root>/sketch/<wnid>/*.JPEG`` (the release unpacks to ``sketch/``) or ``<root>/<wnid>/*``;
    50 sketches for each of the 1000 classes; resize 256, centre crop 224.
"""
from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...errors import DataError

# The 15 corruptions of ImageNet-C's mCE, in the order of the paper's tables and the authors' test.py.
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
CORRUPTION_CATEGORIES = {
    "noise": CORRUPTIONS[0:3], "blur": CORRUPTIONS[3:7], "weather": CORRUPTIONS[7:11], "digital": CORRUPTIONS[11:15],
}
# The four held-out corruptions of the release (``extra.tar``): the authors' package calls them "validation
# corruptions", their test.py evaluates them after the 15, and no mCE includes them.
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: tuple[str, ...] = CORRUPTIONS + EXTRA_CORRUPTIONS
EXTRA_CATEGORY = "extra"   # their folder when the tar's top folder is kept, beside noise/ blur/ weather/ digital/
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# AlexNet's top-1 error on each corruption, averaged over the 5 severities (fractions): the normaliser of
# the mCE, as published with the benchmark (hendrycks/robustness, ImageNet-C; the same numbers are in the
# AugMix authors' google-research/augmix imagenet.py). The average suffices: sum_s E / sum_s E^A is the
# ratio of the means.
ALEXNET_ERRORS: dict[str, float] = dict(zip(CORRUPTIONS, (
    0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360,
    0.866816, 0.826572, 0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500,
)))
# No published AlexNet errors for the four extras were found: the paper's tables and the AugMix list cover the
# 15, and the authors' test.py prints unnormalised errors only, extras included. Without a published
# normaliser the extras get no CE (none is made up): their plain top-1 error is reported.

# AlexNet's clean top-1 error, for the relative mCE: the published 43.5 % (Hendrycks & Dietterich, ICLR 2019,
# the AlexNet row of their ImageNet-C table). Their code has no relative mCE and no more precise value.
ALEXNET_CLEAN_ERROR = 0.435

# ImageNet-R's 200 wnids (sorted). Checked equal to the `imagenet_r_wnids` of the authors' eval.py and to
# timm's data/_info/imagenet_r_synsets.txt.
IMAGENET_R_WNIDS: tuple[str, ...] = tuple("""
n01443537 n01484850 n01494475 n01498041 n01514859 n01518878 n01531178 n01534433 n01614925 n01616318
n01630670 n01632777 n01644373 n01677366 n01694178 n01748264 n01770393 n01774750 n01784675 n01806143
n01820546 n01833805 n01843383 n01847000 n01855672 n01860187 n01882714 n01910747 n01944390 n01983481
n01986214 n02007558 n02009912 n02051845 n02056570 n02066245 n02071294 n02077923 n02085620 n02086240
n02088094 n02088238 n02088364 n02088466 n02091032 n02091134 n02092339 n02094433 n02096585 n02097298
n02098286 n02099601 n02099712 n02102318 n02106030 n02106166 n02106550 n02106662 n02108089 n02108915
n02109525 n02110185 n02110341 n02110958 n02112018 n02112137 n02113023 n02113624 n02113799 n02114367
n02117135 n02119022 n02123045 n02128385 n02128757 n02129165 n02129604 n02130308 n02134084 n02138441
n02165456 n02190166 n02206856 n02219486 n02226429 n02233338 n02236044 n02268443 n02279972 n02317335
n02325366 n02346627 n02356798 n02363005 n02364673 n02391049 n02395406 n02398521 n02410509 n02423022
n02437616 n02445715 n02447366 n02480495 n02480855 n02481823 n02483362 n02486410 n02510455 n02526121
n02607072 n02655020 n02672831 n02701002 n02749479 n02769748 n02793495 n02797295 n02802426 n02808440
n02814860 n02823750 n02841315 n02843684 n02883205 n02906734 n02909870 n02939185 n02948072 n02950826
n02951358 n02966193 n02980441 n02992529 n03124170 n03272010 n03345487 n03372029 n03424325 n03452741
n03467068 n03481172 n03494278 n03495258 n03498962 n03594945 n03602883 n03630383 n03649909 n03676483
n03710193 n03773504 n03775071 n03888257 n03930630 n03947888 n04086273 n04118538 n04133789 n04141076
n04146614 n04147183 n04192698 n04254680 n04266014 n04275548 n04310018 n04325704 n04347754 n04389033
n04409515 n04465501 n04487394 n04522168 n04536866 n04552348 n04591713 n07614500 n07693725 n07695742
n07697313 n07697537 n07714571 n07714990 n07718472 n07720875 n07734744 n07742313 n07745940 n07749582
n07753275 n07753592 n07768694 n07873807 n07880968 n07920052 n09472597 n09835506 n10565667 n12267677
""".split())


@lru_cache(maxsize=1)
def imagenet1k_wnids() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 wnids in label order (sorted, as ImageFolder orders the real val)."""
    from timm.data import ImageNetInfo
    return tuple(ImageNetInfo("imagenet-1k").label_names())


def corruption_folder(root: str | os.PathLike, corruption: str, severity: int) -> Path:
    """``<root>/<corruption>/<severity>``, or under its category folder (``<root>/blur/defocus_blur/3``,
    ``<root>/extra/spatter/2``)."""
    root = Path(root)
    flat = root / corruption / str(severity)
    if flat.is_dir():
        return flat
    categories = dict(CORRUPTION_CATEGORIES, **{EXTRA_CATEGORY: EXTRA_CORRUPTIONS})
    for category, members in categories.items():
        if corruption in members and (root / category / corruption / str(severity)).is_dir():
            return root / category / corruption / str(severity)
    return flat   # missing: the reader's error names the flat layout


def check_corruption_axes(corruptions: Sequence[str] | None, severities: Sequence[int] | None,
                          where: str = "") -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The corruptions and severities of an ImageNet-C spec (None = the 15 of the mCE, all 5 severities),
    validated; the extras are read only when named."""
    cs = tuple(corruptions) if corruptions else CORRUPTIONS
    ss = tuple(int(s) for s in severities) if severities else SEVERITIES
    unknown = [c for c in cs if c not in ALL_CORRUPTIONS]
    if unknown:
        raise DataError(f"{where}unknown ImageNet-C corruption(s) {unknown}; the benchmark's are "
                        f"{', '.join(CORRUPTIONS)}; the extras (outside the mCE) {', '.join(EXTRA_CORRUPTIONS)}")
    repeated = sorted({c for c in cs if cs.count(c) > 1})
    if repeated:
        raise DataError(f"{where}ImageNet-C corruption(s) {repeated} listed twice")
    bad = [s for s in ss if s not in SEVERITIES]
    if bad:
        raise DataError(f"{where}ImageNet-C severities are 1..5, got {bad}")
    return cs, ss


def imagenet_c_sets(spec) -> list[tuple[str, str, int]]:
    """``(evaluation-set name, corruption, severity)`` of each folder an ImageNet-C spec reads."""
    cs, ss = check_corruption_axes(spec.corruptions, spec.severities, f"data.val {spec.name}: ")
    return [(f"{spec.name}/{c}/{s}", c, s) for c in cs for s in ss]


def imagenet_c_absent(spec, root: str | os.PathLike) -> str | None:
    """Why an optional ImageNet-C spec is skipped: none of its folders exists under ``root`` (e.g. the extras
    when only the 15 were unpacked), or None. A spec with some of its folders is read, and the reader names
    the missing ones: a partial benchmark is an error, not a silently smaller one."""
    root = Path(root)
    if not root.is_dir():
        return f"{root} does not exist"
    if any(corruption_folder(root, c, s).is_dir() for _, c, s in imagenet_c_sets(spec)):
        return None
    cs, _ = check_corruption_axes(spec.corruptions, spec.severities)
    return f"none of its corruption folders ({', '.join(cs)}) is in {root}"


def _in_label_space(folder: Path, what: str) -> None:
    from .imagenet import list_class_folders
    if not folder.is_dir():
        return   # the reader's error names it
    unknown = sorted(set(list_class_folders(folder)) - set(imagenet1k_wnids()))
    if unknown:
        raise DataError(f"{what} {folder} has class folders that are not ImageNet-1k wnids: {unknown[:5]}"
                        + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))


def imagenet_c(root: str | os.PathLike, corruption: str, severity: int, *, class_subset: int = 0,
               fraction: float = 1.0, seed: int = 0):
    """One corruption at one severity of ImageNet-C, labelled in ImageNet-1k's label space."""
    check_corruption_axes([corruption], [severity])
    folder = corruption_folder(root, corruption, severity)
    what = f"ImageNet-C {corruption}/{severity}"
    _in_label_space(folder, what)
    return _subset_reader(folder, what, class_subset, fraction, seed)


def _subset_reader(folder: Path, what: str, class_subset: int, fraction: float, seed: int):
    from .imagenet import ImageNet
    # Folders outside the first K classes are simply not read under a class subset.
    return ImageNet(folder, split="val", fraction=fraction, seed=seed, classes=list(imagenet1k_wnids()),
                    classes_source="ImageNet-1k's 1000 wnids", num_classes_subset=class_subset, folder=folder,
                    what=what)


def imagenet_r(root: str | os.PathLike, *, class_subset: int = 0, fraction: float = 1.0, seed: int = 0):
    """ImageNet-R: 1000-class labels, and ``logit_classes``: the label indices of its 200 classes."""
    folder = Path(root)
    if (folder / "imagenet-r").is_dir():   # the folder the tar was unpacked in
        folder = folder / "imagenet-r"
    what = "ImageNet-R"
    _in_label_space(folder, what)
    from .imagenet import list_class_folders
    if folder.is_dir():
        extra = sorted(set(list_class_folders(folder)) - set(IMAGENET_R_WNIDS))
        if extra:
            raise DataError(f"{what} {folder} has class folders outside its 200 classes: {extra[:5]} (another "
                            "set in this folder?)")
    ds = _subset_reader(folder, what, class_subset, fraction, seed)
    ds.logit_classes = [ds.class_to_idx[w] for w in IMAGENET_R_WNIDS if w in ds.class_to_idx]
    return ds


def imagenet_sketch(root: str | os.PathLike, *, class_subset: int = 0, fraction: float = 1.0, seed: int = 0):
    folder = Path(root)
    if (folder / "sketch").is_dir():
        folder = folder / "sketch"
    what = "ImageNet-Sketch"
    _in_label_space(folder, what)
    return _subset_reader(folder, what, class_subset, fraction, seed)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _by_severity(errors: Mapping[tuple[str, int], float], prefix: str) -> dict[str, float]:
    by_s: dict[int, list[float]] = {}
    for (_, s), e in errors.items():
        by_s.setdefault(s, []).append(e)
    return {f"{prefix}{s}": _mean(v) for s, v in sorted(by_s.items())}


def imagenet_c_summary(errors: Mapping[tuple[str, int], float], clean_error: float | None = None,
                       num_classes: int = 1000, top5: Mapping[tuple[str, int], float] | None = None) -> dict[str, Any]:
    """ImageNet-C's metrics from top-1 errors in % (``errors[(corruption, severity)]``).

    Always: ``top1_err`` (and ``top5_err``), the mean error over every benchmark corruption and severity
    (the unnormalised mCE), ``err_<corruption>`` (mean over severities) and ``err_severity_<s>`` (mean over
    the benchmark corruptions). With all 5 severities of a
    corruption and a 1000-class model: ``ce_<corruption>`` (CE, %, AlexNet = 100); with all 15 corruptions
    too: ``mce``; with ``clean_error`` as well: ``relative_mce`` and ``rel_ce_<corruption>``. AlexNet's
    errors are those of the 1000-way task: a class subset has no published normaliser, so none is made up.

    The extras (:data:`EXTRA_CORRUPTIONS`) change none of these: they get ``err_<corruption>`` and their own
    means ``extra_err`` (``extra_top5_err``) and ``extra_err_severity_<s>``, and no CE (AlexNet's errors on
    them are not published). A spec of extras only has no benchmark corruption: its ``top1_err``,
    ``top5_err`` and ``err_severity_<s>`` are then the extras' means, so it reads like any evaluation set.
    """
    extra = {k: e for k, e in errors.items() if k[0] in EXTRA_CORRUPTIONS}
    bench = {k: e for k, e in errors.items() if k[0] not in EXTRA_CORRUPTIONS} or extra
    out: dict[str, Any] = {"top1_err": _mean(list(bench.values()))}
    if top5:
        out["top5_err"] = _mean([top5[k] for k in bench])
    out.update(_by_severity(bench, "err_severity_"))
    if extra:
        out["extra_err"] = _mean(list(extra.values()))
        if top5:
            out["extra_top5_err"] = _mean([top5[k] for k in extra])
        out.update(_by_severity(extra, "extra_err_severity_"))
    by_c: dict[str, dict[int, float]] = {}
    for (c, s), e in errors.items():
        by_c.setdefault(c, {})[s] = e
    ce, rel = {}, {}
    for c, per_s in by_c.items():
        mean = _mean(list(per_s.values()))
        out[f"err_{c}"] = mean
        if c not in ALEXNET_ERRORS or num_classes != 1000 or set(per_s) != set(SEVERITIES):
            continue
        ce[c] = 100 * (mean / 100) / ALEXNET_ERRORS[c]
        if clean_error is not None and math.isfinite(clean_error):
            rel[c] = 100 * (mean - clean_error) / 100 / (ALEXNET_ERRORS[c] - ALEXNET_CLEAN_ERROR)
    out.update({f"ce_{c}": v for c, v in ce.items()})
    out.update({f"rel_ce_{c}": v for c, v in rel.items()})
    if set(ce) == set(CORRUPTIONS):
        out["mce"] = _mean([ce[c] for c in CORRUPTIONS])
        if set(rel) == set(CORRUPTIONS):
            out["relative_mce"] = _mean([rel[c] for c in CORRUPTIONS])
    return out


__all__ = ["ALEXNET_CLEAN_ERROR", "ALEXNET_ERRORS", "ALL_CORRUPTIONS", "CORRUPTIONS", "EXTRA_CORRUPTIONS",
           "IMAGENET_R_WNIDS", "SEVERITIES", "corruption_folder", "imagenet1k_wnids", "imagenet_c", "imagenet_c_absent",
           "imagenet_c_sets", "imagenet_c_summary", "imagenet_r", "imagenet_sketch"]
