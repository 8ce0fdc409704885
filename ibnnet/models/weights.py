"""Reading weight files safely and fitting them to our models.

Every file is read with ``torch.load(weights_only=True)``: a checkpoint can never run code.  The
formats found in the wild are all accepted: a bare state_dict, ``{'state_dict': ...}`` / ``{'model': ...}``
wrappers (official IBN-Net and SN releases, Lightning checkpoints), ``module.`` / ``_orig_mod.`` / ``model.``
prefixes, the oldest IBN files with InstanceNorm running statistics, the official SN checkpoints
(``sn1/sn2/sn3`` names, (1,C,1,1) shapes) and torchvision's oldest DenseNet names (``denselayer1.norm.1``
for ``norm1``).  Files named like torch.hub releases (``name-<sha256 prefix>.pth``) are verified against
that prefix.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from timm.models import adapt_input_conv
from torch import Tensor, nn

from ..errors import UserError

HASH_RE = re.compile(r"-([a-f0-9]{8,64})\.[A-Za-z0-9]+$")
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "net")
_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 5


class WeightsError(UserError, RuntimeError):
    """A weight file cannot be used: unreadable, wrong hash, or made for another architecture."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def expected_hash_prefix(path: str | os.PathLike) -> str | None:
    """The sha256 prefix a torch.hub-style file name promises (``resnet50_ibn_a-d9d0bb7b.pth`` -> ``d9d0bb7b``)."""
    m = HASH_RE.search(Path(path).name)
    return m.group(1) if m else None


def verify_hash(path: str | os.PathLike, prefix: str | None = None) -> str:
    """Check the file against ``prefix`` (default: the one in its name); returns the full sha256."""
    prefix = prefix or expected_hash_prefix(path)
    if not Path(path).is_file():
        raise WeightsError(f"{path}: no such weight file")
    digest = sha256_file(path)
    if prefix and not digest.startswith(prefix):
        raise WeightsError(
            f"{path}: sha256 {digest[:len(prefix)]}... does not match the expected {prefix} "
            f"(truncated or corrupt download? delete the file and download it again)")
    return digest


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` (``mmap``: tensors memory-mapped, not read, where the file's
    format allows) and a one-line :class:`WeightsError` naming the file when it is not a checkpoint."""
    import zipfile
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weight file")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: not a checkpoint (empty file)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            # mmap needs torch.save's zip format; older (pickle-only) files are read whole
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as e:
        raise WeightsError(f"{path}: {load_problem(e)}") from e


def load_problem(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one line, and never torch's advice to load the file
    unsafely (``weights_only=False``): a safe load of a real checkpoint does not fail that way."""
    import pickle
    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (f"refused to load: not a checkpoint saved by ibnnet or by torch.save of tensors (it holds a "
                f"{found.group(1)} object, which a safe load does not unpickle since that could run code)")
    if "central directory" in text or isinstance(e, EOFError):
        return "not a readable PyTorch checkpoint: truncated or damaged (copy or download it again)"
    if isinstance(e, pickle.UnpicklingError) or "PytorchStreamReader" in text:
        return "not a checkpoint: neither the zip archive torch.save writes nor a pickle of tensors"
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    return f"not a readable PyTorch checkpoint: {type(e).__name__}: {first}".rstrip(": ")


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """The tensor mapping inside a checkpoint object, wrapper keys and module prefixes removed."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        keys = list(obj)[:_MAX_LISTED] if isinstance(obj, Mapping) else type(obj).__name__
        raise WeightsError(f"{source}: no state_dict found (top-level entries: {keys})")
    out = {}
    for k, v in obj.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def strip_common_prefix(state_dict: dict[str, Tensor], wanted: set[str]) -> dict[str, Tensor]:
    """Drop a wrapper prefix (``model.``, ``backbone.`` ...) if that makes the keys fit ``wanted``."""
    if not state_dict or any(k in wanted for k in state_dict):
        return state_dict
    first = next(iter(state_dict)).split(".", 1)[0] + "."
    if all(k.startswith(first) for k in state_dict):
        stripped = {k[len(first):]: v for k, v in state_dict.items()}
        if any(k in wanted for k in stripped):
            return stripped
    return state_dict


_SN_NAME = re.compile(r"^((?:layer\d+\.\d+\.)?)sn(\d)\.")
# torchvision's first DenseNet files: ``denselayer1.norm.1.weight`` where the module is ``norm1``.
_TV_DENSE_NAME = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


def head_and_stem(model: nn.Module) -> tuple[str, str]:
    """The classifier's and the first conv's module names: the pretrained cfg's, else ResNet's or DenseNet's."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    head = cfg.get("classifier") or ("fc" if hasattr(model, "fc") else "classifier")
    stem = cfg.get("first_conv") or ("conv1" if hasattr(model, "conv1") else "features.conv0")
    return head, stem


def adapt_state_dict(state_dict: Any, model: nn.Module) -> dict[str, Tensor]:
    """Map any known checkpoint layout onto ``model``'s key names and shapes (no validation)."""
    sd = unwrap_state_dict(state_dict)
    own = model.state_dict()
    sd = strip_common_prefix(sd, set(own))
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        k = _SN_NAME.sub(r"\1bn\2.", k)  # official SN: sn1/sn2/sn3 -> bn1/bn2/bn3
        k = _TV_DENSE_NAME.sub(r"\1\2.", k)  # torchvision's oldest DenseNet: norm.1 -> norm1
        if k not in own and k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked"):
            owner = _owner(model, k)
            if isinstance(owner, nn.InstanceNorm2d) and not owner.track_running_stats:
                continue  # the oldest IBN files carry IN running stats that modern torch refuses
        if k in own and v.shape != own[k].shape and v.numel() == own[k].numel() and v.dim() != own[k].dim():
            v = v.reshape(own[k].shape)  # official SN: (1,C,1,1) / (1,C,1) -> (C,)
        out[k] = v
    return out


def checkpoint_filter_fn(state_dict: Any, model: nn.Module, source: str | None = None,
                         num_classes: int | None = None) -> dict[str, Tensor]:
    """timm's ``pretrained_filter_fn``: adapt the layout, then insist that it fits ``model``.

    The classifier is left out when the checkpoint's class count (``num_classes``, default: the
    model's pretrained_cfg) differs from the model's; a stem conv with another input-channel count is
    left for timm's ``adapt_input_conv``.  Anything else that does not fit raises :class:`WeightsError`
    naming the source and the first mismatching keys.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    source = source or cfg.get("file") or cfg.get("url") or "state_dict"
    try:
        sd = adapt_state_dict(state_dict, model)
    except WeightsError as e:
        raise WeightsError(f"{source}: {e}") from None
    ckpt_classes = num_classes if num_classes is not None else cfg.get("num_classes")
    head, stem = head_and_stem(model)
    own_head, file_head = model.state_dict().get(head + ".weight"), sd.get(head + ".weight")
    if own_head is not None and file_head is not None and own_head.shape == file_head.shape:
        # The file's classifier fits the model (a fine-tuned file of the same label set): keep it, whatever
        # class count the pretrained cfg assumes. Dropping it would leave a random head without a word.
        ckpt_classes = getattr(model, "num_classes", ckpt_classes)
    ignore: list[str] = []
    if ckpt_classes is not None and getattr(model, "num_classes", ckpt_classes) != ckpt_classes:
        sd = {k: v for k, v in sd.items() if not k.startswith(head + ".")}
        ignore.append(head + ".")
    conv = _owner(model, stem + ".weight")
    w = sd.get(stem + ".weight")
    if isinstance(conv, nn.Conv2d) and w is not None and w.dim() == 4 and w.shape[1] != conv.in_channels:
        ignore.append(stem + ".weight")
    problem = describe_mismatch(sd, model, ignore=tuple(ignore))
    if problem:
        arch = cfg.get("architecture") or type(model).__name__
        raise WeightsError(f"{source}: does not fit {arch}: {problem}")
    return sd


def _owner(model: nn.Module, key: str) -> nn.Module | None:
    try:
        return model.get_submodule(key.rsplit(".", 1)[0])
    except AttributeError:
        return None


def describe_mismatch(state_dict: Mapping[str, Tensor], model: nn.Module,
                      ignore: tuple[str, ...] = ()) -> str | None:
    """None when ``state_dict`` fits ``model`` (keys starting with ``ignore`` aside), else the first mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.startswith(ignore)]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state_dict and state_dict[k].shape != own[k].shape and not k.startswith(ignore)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
            parts.append(f"{label}: {', '.join(items[:_MAX_LISTED])}{more}")
    return "; ".join(parts) or None


def load_weights(model: nn.Module, source: str | os.PathLike | Mapping, *, num_classes: int | None = None,
                 verify: bool = True) -> nn.Module:
    """Load a weight file (any supported format) or a state_dict into ``model``.

    ``num_classes``: classes of the checkpoint's head (default: the model's pretrained_cfg, else the
    model's own); when it differs from the model's (a new label set, or a headless backbone) the
    ``fc`` weights are skipped and left as initialised.  Everything else must fit exactly.
    """
    if isinstance(source, Mapping):
        name, raw = "state_dict", source
    else:
        name = str(source)
        if verify:
            verify_hash(source)
        raw = read_checkpoint(source)
    if num_classes is None and not (getattr(model, "pretrained_cfg", None) or {}).get("num_classes"):
        num_classes = getattr(model, "num_classes", None)
    sd = _adapt_input_conv(checkpoint_filter_fn(raw, model, source=name, num_classes=num_classes), model)
    head = head_and_stem(model)[0] + "."
    head_dropped = any(k.startswith(head) for k in model.state_dict()) and not any(k.startswith(head) for k in sd)
    model.load_state_dict(sd, strict=not head_dropped)
    return model


def load_pretrained_file(model: nn.Module, path: str | os.PathLike) -> None:
    """The models' ``load_pretrained`` (timm calls it for ``custom_load`` cfgs): ``path`` into ``model``,
    with the class count of its pretrained cfg."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not Path(path).is_file():
        hint = f"; download it from {cfg['origin_url']} and save it there" if cfg.get("origin_url") else ""
        raise WeightsError(f"{path}: no such weight file{hint}")
    load_weights(model, path, num_classes=cfg.get("num_classes"))


def _adapt_input_conv(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    key = head_and_stem(model)[1] + ".weight"
    conv = _owner(model, key)
    w = sd.get(key)
    if isinstance(conv, nn.Conv2d) and w is not None and w.shape[1] != conv.in_channels:
        sd = dict(sd, **{key: adapt_input_conv(conv.in_channels, w)})
    return sd
