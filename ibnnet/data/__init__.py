"""Datasets, transforms and the Lightning data module.

    from ibnnet.data import Cityscapes, GTA5, ImageNet, SyntheticShapes, SyntheticScenes, DataModule

The names are imported on first use (a module-level ``__getattr__``): ``import ibnnet`` and
``import ibnnet.data`` stay cheap, and only ``DataModule`` brings in Lightning, only ``GTA5`` SciPy.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> submodule that defines it
_LAZY = {
    "ImageNet": "imagenet",
    "Cityscapes": "cityscapes",
    "GTA5": "gta5",
    "SyntheticShapes": "synthetic",
    "SyntheticScenes": "synthetic",
    "DataModule": "datamodule",
    "DATASETS": "registry",
    "build_dataset": "registry",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from .cityscapes import Cityscapes
    from .datamodule import DataModule
    from .gta5 import GTA5
    from .imagenet import ImageNet
    from .registry import DATASETS, build_dataset
    from .synthetic import SyntheticScenes, SyntheticShapes


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
