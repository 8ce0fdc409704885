"""Named models, their official weights, and their registration in timm's registry.

``import ibnnet`` registers every name below, so ``timm.create_model('resnet50_ibn_a', pretrained=True)``
and ``timm.list_models('*ibn*')`` work.  Official release files are verified against the sha256 prefix in
their names before loading; see :mod:`ibnnet.models.weights` for the formats accepted from local files
(``pretrained_cfg_overlay=dict(file=...)``).
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    get_arch_pretrained_cfgs,
    is_model,
    model_entrypoint,
    register_model,
)

from .densenet import DenseNetIBN
from .resnet import ResNet
from .weights import WeightsError, checkpoint_filter_fn, expected_hash_prefix

IBN_RELEASE_URL = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/"
IBN_ORIGIN = "https://github.com/XingangPan/IBN-Net"
SN_ORIGIN = "https://github.com/switchablenorms/Switchable-Normalization"
TV_URL = "https://download.pytorch.org/models/"
TV_ORIGIN = "https://github.com/pytorch/vision"
_LICENSES = {IBN_ORIGIN: "mit", SN_ORIGIN: "cc-by-nc-4.0", TV_ORIGIN: "bsd-3-clause"}
_PAPERS = {IBN_ORIGIN: "arXiv:1807.09441", SN_ORIGIN: "arXiv:1806.10779", TV_ORIGIN: "arXiv:1512.03385"}

ARCHS: dict[str, dict[str, Any]] = {
    "resnet18": dict(block="basic", layers=(2, 2, 2, 2)),
    "resnet34": dict(block="basic", layers=(3, 4, 6, 3)),
    "resnet50": dict(block="bottleneck", layers=(3, 4, 6, 3)),
    "resnet101": dict(block="bottleneck", layers=(3, 4, 23, 3)),
    "resnet152": dict(block="bottleneck", layers=(3, 8, 36, 3)),
    "resnext101": dict(block="bottleneck", layers=(3, 4, 23, 3), cardinality=32, base_width=4),
    "se_resnet101": dict(block="bottleneck", layers=(3, 4, 23, 3), se_reduction=16),
    # DenseNet-BC (the official densenet_ibn.py: 64 stem features = 2 x growth rate, bottleneck 4 x growth)
    "densenet121": dict(growth_rate=32, block_config=(6, 12, 24, 16)),
    "densenet169": dict(growth_rate=32, block_config=(6, 12, 32, 32)),
}
DENSENET_ARCHS = ("densenet121", "densenet169")

VARIANTS: dict[str, dict[str, Any]] = {
    "bn": dict(),
    # GroupNorm with 32 groups (get_norm_layer's default, Wu & He's and the SN paper's GN baseline).  Named
    # gn32, not gn: timm has its own resnet50_gn, and ours must not replace it (nor a later timm's resnet18_gn).
    "gn32": dict(norm="gn"),
    # The official SN ResNet v1: SN everywhere, zero-initialised last gamma, dropout 0.5 before fc.
    "sn": dict(norm="sn", zero_init_last=True, drop_rate=0.5),
    "ibn_a": dict(ibn="a"),
    "ibn_b": dict(ibn="b"),
    "ibn_c": dict(ibn="c"),
    "ibn_d": dict(ibn="d"),
    "ibn_ad": dict(ibn="ad"),
    "ibn_a2": dict(ibn="a2"),
}

MODELS: dict[str, tuple[str, str]] = {}
for _depth in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    for _v in ("bn", "gn32", "sn", "ibn_a", "ibn_b"):
        MODELS[f"{_depth}_{_v}"] = (_depth, _v)
for _v in ("ibn_c", "ibn_d", "ibn_ad", "ibn_a2"):
    MODELS[f"resnet50_{_v}"] = ("resnet50", _v)
MODELS["resnext101_ibn_a"] = ("resnext101", "ibn_a")
MODELS["se_resnet101_ibn_a"] = ("se_resnet101", "ibn_a")
for _depth in DENSENET_ARCHS:
    MODELS[f"{_depth}_ibn_a"] = (_depth, "ibn_a")

# Ours whose layout is that of a timm model with ImageNet weights: ours offer those weights too (timm's
# standard loader fetches them, from the Hugging Face hub or timm's URL, through our checkpoint_filter_fn).
TIMM_WEIGHTS: dict[str, str] = {"resnet50_gn32": "resnet50_gn"}


@dataclass(frozen=True)
class Release:
    """One published weight file."""
    model: str
    file: str
    tag: str = "official_in1k"
    top1: float | None = None  # published ImageNet val accuracy, %
    top5: float | None = None
    url_base: str | None = IBN_RELEASE_URL
    origin: str = IBN_ORIGIN
    note: str = ""

    @property
    def url(self) -> str | None:
        return self.url_base + self.file if self.url_base else None

    @property
    def sha256_prefix(self) -> str | None:
        return expected_hash_prefix(self.file)

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"


RELEASES: list[Release] = [
    Release("resnet18_ibn_a", "resnet18_ibn_a-2f571257.pth"),
    Release("resnet18_ibn_b", "resnet18_ibn_b-bc2f3c11.pth"),
    Release("resnet34_ibn_a", "resnet34_ibn_a-94bc1577.pth"),
    Release("resnet34_ibn_b", "resnet34_ibn_b-04134c37.pth"),
    Release("resnet50_ibn_a", "resnet50_ibn_a-d9d0bb7b.pth", top1=77.46, top5=93.68),
    Release("resnet50_ibn_b", "resnet50_ibn_b-9ca61e85.pth"),
    Release("resnet101_ibn_a", "resnet101_ibn_a-59ea0ac6.pth", top1=78.61, top5=94.41),
    Release("resnet101_ibn_b", "resnet101_ibn_b-c55f6dba.pth"),
    Release("resnext101_ibn_a", "resnext101_ibn_a-6ace051d.pth", top1=79.12, top5=94.58),
    Release("se_resnet101_ibn_a", "se_resnet101_ibn_a-fabed4e2.pth", top1=78.75, top5=94.49),
    # top-1/5 = 100 - the official README's DenseNet IBN-Net errors (24.47/7.25, 23.25/6.51)
    Release("densenet121_ibn_a", "densenet121_ibn_a-e4af5cc1.pth", top1=75.53, top5=92.75),
    Release("densenet169_ibn_a", "densenet169_ibn_a-9f32c161.pth", top1=76.75, top5=93.49),
    # SN's releases live on Google Drive only (no stable direct URL): download them by hand and pass
    # pretrained_cfg_overlay=dict(file=...); the checkpoint_filter_fn converts their layout.
    Release("resnet50_sn", "resnet50_sn_8x32_step.pth", tag="official_8x32_in1k", top1=76.92, url_base=None,
            origin=SN_ORIGIN, note="(8,32), 100 epochs, step lr; manual download from the SN model zoo"),
    Release("resnet101_sn", "resnet101_sn_8x32.pth", tag="official_8x32_in1k", top1=78.54, url_base=None,
            origin=SN_ORIGIN, note="(8,32); manual download from the SN model zoo"),
    # The plain-BN baselines: torchvision's original ImageNet weights have our *_bn layout key for key.
    Release("resnet18_bn", "resnet18-f37072fd.pth", tag="tv_in1k", top1=69.758, top5=89.078, url_base=TV_URL,
            origin=TV_ORIGIN),
    Release("resnet34_bn", "resnet34-b627a593.pth", tag="tv_in1k", top1=73.314, top5=91.42, url_base=TV_URL,
            origin=TV_ORIGIN),
    Release("resnet50_bn", "resnet50-0676ba61.pth", tag="tv_in1k", top1=76.13, top5=92.862, url_base=TV_URL,
            origin=TV_ORIGIN),
    Release("resnet101_bn", "resnet101-63fe2227.pth", tag="tv_in1k", top1=77.374, top5=93.546, url_base=TV_URL,
            origin=TV_ORIGIN),
    Release("resnet152_bn", "resnet152-394f9c45.pth", tag="tv_in1k", top1=78.312, top5=94.046, url_base=TV_URL,
            origin=TV_ORIGIN),
]


def releases_for(name: str) -> list[Release]:
    return [r for r in RELEASES if r.model == name]


def _cfg(url: str = "", **kwargs) -> dict[str, Any]:
    # Official evaluation: resize 256, centre crop 224 (crop_pct 0.875), bilinear, ImageNet mean/std.
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bilinear", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1", "classifier": "fc", "custom_load": True, **kwargs,
    }


def _layout(name: str) -> dict[str, str]:
    """The first conv's and the classifier's module names of model ``name``."""
    if MODELS[name][0] in DENSENET_ARCHS:
        return dict(first_conv="features.conv0", classifier="classifier")
    return dict(first_conv="conv1", classifier="fc")


def _release_cfg(r: Release) -> dict[str, Any]:
    license_, paper = _LICENSES[r.origin], _PAPERS[r.origin]
    notes = [n for n in (r.note, f"top1 {r.top1}" if r.top1 else "", f"top5 {r.top5}" if r.top5 else "") if n]
    # A release without a URL is expected at its cache path, where the user saves the manual download.
    file = "" if r.url else str(manual_weights_path(r))
    return _cfg(url=r.url or "", file=file, license=license_, origin_url=r.origin, paper_ids=paper,
                notes=tuple(notes), **_layout(r.model))


def manual_weights_path(r: Release) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / r.file


def _build_default_cfgs() -> dict:
    cfgs: dict[str, Any] = {}
    for r in RELEASES:
        cfgs[r.name] = _release_cfg(r)
    for name in MODELS:
        if not any(k.startswith(name + ".") for k in cfgs):
            inherited = _timm_pretrained_cfgs(name, TIMM_WEIGHTS[name]) if name in TIMM_WEIGHTS else {}
            cfgs.update(inherited or {name: _cfg(**_layout(name))})
    return generate_default_cfgs(cfgs)


def _timm_pretrained_cfgs(name: str, timm_name: str) -> dict[str, Any]:
    """timm's pretrained cfgs of ``timm_name`` (copies, read through timm's public API) under our ``name``.

    The source stays timm's: its ``hf_hub_id`` (``timm/resnet50_gn.a1h_in1k``) and URL, and the notes name
    it.  No ``custom_load``: timm's own loader reads these files (it also handles the hub), then passes the
    state_dict through our ``checkpoint_filter_fn``.
    """
    out = {}
    for full_name, cfg in get_arch_pretrained_cfgs(timm_name).items():
        tag = full_name.partition(".")[2]
        d = {k: v for k, v in cfg.to_dict().items() if k not in ("architecture", "tag")}
        d["notes"] = (*(d.get("notes") or ()), f"timm's {full_name} weights (the same layout, loaded unchanged)")
        out[f"{name}.{tag}" if tag else name] = dict(d, custom_load=False)
    return out


default_cfgs = _build_default_cfgs()


class WeightsUnavailableError(WeightsError):
    """pretrained=True on a machine that cannot download the file (a compute node without internet)."""


def _network_failure(e: BaseException) -> BaseException | None:
    """The network error behind ``e`` (through its causes), if a download is what failed."""
    import socket
    import urllib.error
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (urllib.error.URLError, socket.gaierror, ConnectionError, TimeoutError)) or \
                type(e).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):   # huggingface_hub's
            return e
        e = e.__cause__ or e.__context__
    return None


def _unavailable(variant: str, pretrained_cfg: Any, error: BaseException) -> WeightsUnavailableError:
    name = variant.partition(".")[0]
    cfg = pretrained_cfg or {}
    cfg = cfg if isinstance(cfg, dict) else cfg.to_dict()
    reason = str(getattr(error, "reason", "") or error).splitlines()[0][:120]
    if cfg.get("hf_hub_id"):
        where = f"the Hugging Face cache ({os.environ.get('HF_HOME') or Path.home() / '.cache' / 'huggingface'})"
        fix = (f"on a machine with internet, run `python -c \"import ibnnet, timm; timm.create_model('{name}', "
               f"pretrained=True)\"` with the same HF_HOME")
    else:
        where = str(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.get("url") or name))
        fix = f"on a machine with internet (a login node), run `ibnnet weights download {name}` with the same TORCH_HOME"
    return WeightsUnavailableError(f"{name}: pretrained weights are not at {where} and cannot be downloaded here "
                                   f"({type(error).__name__}: {reason}); {fix}")


def _create_model(variant: str, pretrained: bool = False, **kwargs) -> ResNet | DenseNetIBN:
    try:
        return _build(variant, pretrained, **kwargs)
    except Exception as e:
        failure = _network_failure(e) if pretrained else None
        if failure is None:
            raise
        from timm.models import get_pretrained_cfg
        raise _unavailable(variant, get_pretrained_cfg(variant), failure) from None


def _build(variant: str, pretrained: bool = False, **kwargs) -> ResNet | DenseNetIBN:
    overlay = kwargs.get("pretrained_cfg_overlay")
    if overlay and (overlay.get("file") or overlay.get("url")):
        # timm resets custom_load for a new source; our loader reads every known format (and verifies
        # hash-named files), so keep it for local files and mirrors too.
        kwargs["pretrained_cfg_overlay"] = dict(overlay, custom_load=overlay.get("custom_load", True))
    arch, flavour = MODELS[variant]
    model_args = dict(ARCHS[arch], **VARIANTS[flavour])
    if arch in DENSENET_ARCHS:
        # features_only's default class needs the dense blocks at the top level, as timm's own DenseNets
        return build_model_with_cfg(DenseNetIBN, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                    feature_cfg=dict(flatten_sequential=True), **dict(model_args, **kwargs))
    return build_model_with_cfg(ResNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                **dict(model_args, **kwargs))


def _make_entrypoint(name: str) -> Callable[..., ResNet | DenseNetIBN]:
    arch, flavour = MODELS[name]

    def entrypoint(pretrained: bool = False, **kwargs) -> ResNet | DenseNetIBN:
        return _create_model(name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = model_doc(name)
    return entrypoint


# What each entry point is, for its docstring: the architecture, the variant with its paper, where the
# papers' tables use it, and its weights.
IBN_PAPER = "IBN-Net (Pan et al., ECCV 2018, arXiv:1807.09441)"
SN_PAPER = "Switchable Normalization (Luo et al., ICLR 2019, arXiv:1806.10779)"
_ARCH_DOCS = {
    "resnet18": "ResNet-18 (basic blocks 2-2-2-2)",
    "resnet34": "ResNet-34 (basic blocks 3-4-6-3)",
    "resnet50": "ResNet-50 (bottlenecks 3-4-6-3)",
    "resnet101": "ResNet-101 (bottlenecks 3-4-23-3)",
    "resnet152": "ResNet-152 (bottlenecks 3-8-36-3)",
    "resnext101": "ResNeXt-101 32x4d (bottlenecks 3-4-23-3, 32 groups of width 4)",
    "se_resnet101": "SE-ResNet-101 (bottlenecks 3-4-23-3, squeeze-and-excitation with reduction 16)",
    "densenet121": "DenseNet-121 (DenseNet-BC, growth rate 32, dense blocks 6-12-24-16; Huang et al., "
                   "arXiv:1608.06993)",
    "densenet169": "DenseNet-169 (DenseNet-BC, growth rate 32, dense blocks 6-12-32-32; Huang et al., "
                   "arXiv:1608.06993)",
}
_VARIANT_DOCS = {
    "bn": "BatchNorm everywhere: the plain ResNet (He et al., arXiv:1512.03385)",
    "gn32": "GroupNorm with 32 groups in place of every BatchNorm (Wu & He, ECCV 2018, arXiv:1803.08494)",
    "sn": f"{SN_PAPER} in place of every BatchNorm, as the official SN ResNet v1: the last norm of each block "
          "zero-initialised, dropout 0.5 before fc",
    "ibn_a": f"IBN-a of {IBN_PAPER}, sec. 3.2: instance normalization on half the channels of bn1 in every block "
             "of residual groups 1-3",
    "ibn_b": f"IBN-b of {IBN_PAPER}, sec. 3.2: instance normalization in the stem and after the residual addition "
             "of the last block of groups 1-2",
    "ibn_c": f"IBN-c of {IBN_PAPER}, sec. 3.2: IN and BN side by side on all channels of bn1, concatenated "
             "(groups 1-3); never released, our reading in docs/variants.md",
    "ibn_d": f"IBN-d of {IBN_PAPER}, sec. 3.2: IBN-b's placement with IN on half the channels (IBN in the stem, "
             "partial IN after the addition); never released, our reading in docs/variants.md",
    "ibn_ad": f"IBN-a&d of {IBN_PAPER}, sec. 3.2: IBN-a and IBN-d combined; never released, our reading in "
              "docs/variants.md",
    "ibn_a2": f"IBN-a x2 of {IBN_PAPER}, sec. 3.2: IBN-a with bn2 an IBN layer too; never released, our reading "
              "in docs/variants.md",
}
# IBN-a in a DenseNet is not the ResNet's placement: the official densenet_ibn.py's own.
_DENSENET_VARIANT_DOCS = {
    "ibn_a": f"IBN-a of {IBN_PAPER} as in the official densenet_ibn.py: BN on the first 60 % and instance "
             "normalization on the other 40 % of the channels of norm1 in every third dense layer (the 1st, 4th, "
             "7th ...) of dense blocks 1-3; PyTorch's default initialization (the official code sets none)",
}
# Where the papers' tables use a model (experiments/*.yaml build them, some from another name with
# overrides that make the same network; the segmentation tables with output_stride=8).
_PAPER_USE = {
    "resnet50_bn": "the ResNet50 of IBN-Net Tables 1-6 and 8 (Table 2: its re-implementation), the network of SN "
                   "Table 2's BN row and (as SyncBN) of SN Table 5's SyncBN column",
    "resnet101_bn": "the ResNet101 re-implementation of IBN-Net Table 2",
    "resnet50_gn32": "the network of SN Table 2's GN row and of SN Table 5's GN column",
    "resnet50_sn": "SN Table 2's SN row and SN Table 5's SN column",
    "resnet101_sn": "not in the SN paper's tables; the SN model zoo's ResNet-101 v1",
    "resnet50_ibn_a": "IBN-Net50-a of IBN-Net Tables 1-6 and 8 (Tables 4 and 5 vary its groups and IN ratio)",
    "resnet50_ibn_b": "IBN-Net50-b of IBN-Net Tables 1, 3 and 6",
    "resnet101_ibn_a": "the ResNet101 IBN-a of IBN-Net Table 2",
    "resnext101_ibn_a": "the ResNeXt101 IBN-a of IBN-Net Table 2 (with ibn='none' its re-implementation)",
    "se_resnet101_ibn_a": "the SE-ResNet101 IBN-a of IBN-Net Table 2 (with ibn='none' its re-implementation)",
    "densenet121_ibn_a": "the DenseNet121 IBN-a of IBN-Net Table 2 (with ibn='none' its re-implementation)",
    "densenet169_ibn_a": "the DenseNet169 IBN-a of IBN-Net Table 2 (with ibn='none' its re-implementation)",
    **{f"resnet50_{v}": f"IBN-{label} of IBN-Net Table 3"
       for v, label in (("ibn_c", "c"), ("ibn_d", "d"), ("ibn_ad", "a&d"), ("ibn_a2", "a x2"))},
}


def _weights_doc(name: str) -> list[str]:
    lines = []
    for r in releases_for(name):
        acc = ", ".join(f"{k} {v} %" for k, v in (("top-1", r.top1), ("top-5", r.top5)) if v)
        where = "downloaded and sha256-checked" if r.url else f"save it as <torch hub dir>/checkpoints/{r.file}"
        detail = "; ".join(x for x in (acc, r.note, where) if x)
        lines.append(f"{r.name}: {r.file} from {r.origin} ({detail})")
    if name in TIMM_WEIGHTS:
        for full_name, cfg in get_arch_pretrained_cfgs(TIMM_WEIGHTS[name]).items():
            lines.append(f"{name}.{cfg.tag}: timm's {full_name} ImageNet weights (hub {cfg.hf_hub_id}, else "
                         f"{cfg.url}); timm's training, not a release of the papers")
    return lines or ["none released (pretrained=True raises); pass pretrained_cfg_overlay=dict(file=...) for "
                     "a file of your own"]


def model_doc(name: str) -> str:
    """The docstring of entry point ``name``: what the variant is, its paper and table, its weights."""
    arch, flavour = MODELS[name]
    paper = _PAPER_USE.get(name, "not in the papers' tables")
    weights = "\n".join(f"    {line}" for line in _weights_doc(name))
    dense = arch in DENSENET_ARCHS
    variant = (_DENSENET_VARIANT_DOCS if dense else _VARIANT_DOCS)[flavour]
    return (f"{_ARCH_DOCS[arch]} with {variant}.\n\n"
            f"Paper: {paper}.\n"
            f"Weights:\n{weights}\n\n"
            f"Model arguments: {dict(ARCHS[arch], **VARIANTS[flavour])}; keyword arguments go to "
            f"{'DenseNetIBN' if dense else 'ResNet'}.\n")


def _register(fn: Callable[..., ResNet]) -> bool:
    """Register ``fn`` in timm unless that would replace a model that is not ours; False if skipped."""
    name = fn.__name__
    if is_model(name) and getattr(model_entrypoint(name), "__module__", None) != __name__:
        # Importing ibnnet must never change timm's own models.  Our names avoid timm's (a test checks this
        # against the locked timm); should a later timm take one, it keeps it.
        warnings.warn(f"timm already has a model named {name!r}; ibnnet's {name} is not registered "
                      f"(ibnnet.models.create_model({name!r}) raises)", RuntimeWarning, stacklevel=2)
        return False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Overwriting .* in registry")  # our own, re-imported
        register_model(fn)
    return True


# Our names that a timm model took (empty with the locked timm).
NOT_REGISTERED: list[str] = []


def _register_all() -> None:
    module = sys.modules[__name__]
    for name in MODELS:
        fn = _make_entrypoint(name)
        setattr(module, name, fn)
        if not _register(fn):
            NOT_REGISTERED.append(name)


_register_all()


def list_models(pattern: str = "*") -> list[str]:
    """Names this package registers (a subset of ``timm.list_models``), optionally glob-filtered."""
    import fnmatch
    return sorted(n for n in MODELS if fnmatch.fnmatch(n, pattern) and n not in NOT_REGISTERED)

