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
    "ImageNet": "datasets.imagenet",
    "Cityscapes": "datasets.cityscapes",
    "GTA5": "datasets.gta5",
    "SyntheticShapes": "datasets.synthetic",
    "SyntheticScenes": "datasets.synthetic",
    "DataModule": "datamodule",
    "DATASETS": "registry",
    "build_dataset": "registry",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from .datasets.cityscapes import Cityscapes
    from .datamodule import DataModule
    from .datasets.gta5 import GTA5
    from .datasets.imagenet import ImageNet
    from .registry import DATASETS, build_dataset
    from .datasets.synthetic import SyntheticScenes, SyntheticShapes


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
