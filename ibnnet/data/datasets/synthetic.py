"""Procedurally generated two-domain datasets: a sanity benchmark, not the paper's data.

IBN-Net's claim is that instance normalization in early layers removes appearance variation
(colour, contrast, texture) so that a model trained in one domain (GTA5, game-engine renders)
transfers better to another (Cityscapes, photos). ImageNet, GTA5 and Cityscapes cannot be
downloaded everywhere, so this module renders small stand-ins that exercise the same mechanism
on a laptop CPU in minutes. Numbers obtained on them say whether the IN/BN machinery behaves as
expected; they are **not** a substitute for, nor comparable with, the paper's results.

Every sample exists in two appearance domains:

``"synthetic"``
    flat colours and clean, anti-aliased edges (the "game engine").
``"real"``
    the *same* scene with procedural texture on every region, a systematic colour cast,
    reduced contrast, a brightness offset, gamma, slight blur and sensor noise (the "camera").

Scene geometry, base colours and labels depend only on ``(seed, split, index)``; the domain
changes appearance only, so index ``i`` shows the identical scene (and has the identical label
or mask) in both domains. Appearance randomness depends on ``(seed, split, index)`` too, so
everything is deterministic: the same arguments give byte-identical images.

Two datasets:

* :class:`SyntheticShapes` -- classification of :data:`SHAPE_CLASSES`; position, size,
  rotation, object colour and background colour are random per index and colour is drawn
  independently of the class, so only the shape identifies it.
* :class:`SyntheticScenes` -- semantic segmentation of street-like scenes with
  :data:`SCENE_CLASSES`: sky above a horizon, a road in perspective at the bottom, sidewalks,
  buildings, trees, poles, people and cars; per-class colours vary per scene and per instance.

``num_samples=0`` selects :data:`DEFAULT_NUM_SAMPLES` for the split. The splits use disjoint
seed streams, so they do not share scenes.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .synthetic_render import (  # noqa: F401  (class names re-exported)
    BUILDING,
    CAR,
    GEOMETRY,
    PERSON,
    POLE,
    ROAD,
    SCENE_CLASSES,
    SHAPE_CLASSES,
    SIDEWALK,
    SKY,
    VEGETATION,
    render_scene,
    render_shape,
)

__all__ = [
    "SPLITS", "DOMAINS", "DEFAULT_NUM_SAMPLES", "SHAPE_CLASSES", "SCENE_CLASSES",
    "SyntheticShapes", "SyntheticScenes",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
DOMAINS: tuple[str, ...] = ("synthetic", "real")
#: Samples per split when ``num_samples=0``; sized so a ResNet-18 sees several epochs in a few CPU minutes.
DEFAULT_NUM_SAMPLES: dict[str, int] = {"train": 3000, "val": 500, "test": 500}

# Caches are capped in bytes so image_size=128 with a large num_samples cannot exhaust memory.
_CACHE_BYTES = 512 * 2**20


class _TwoDomainDataset(Dataset):
    """Shared machinery: argument checks, seed streams, the render cache, pickling.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; each has its own seed stream.
        domain: ``"synthetic"`` (flat) or ``"real"`` (textured, colour-shifted, noisy).
        num_samples: dataset length; 0 selects ``DEFAULT_NUM_SAMPLES[split]``.
        seed: base seed (>= 0); a different seed gives different scenes in every split.
        image_size: side of the square images in pixels (>= 16); geometry scales with it.
        transforms: optional callable applied as ``transforms(image, target)``
            (torchvision ``transforms.v2`` objects work and keep image and mask aligned).
        cache: keep rendered samples in memory (LRU, capped at 512 MiB per dataset).
    """

    _kind: int  # separates the seed streams of the two dataset types

    def __init__(
        self,
        split: str = "train",
        domain: str = "synthetic",
        num_samples: int = 0,
        seed: int = 0,
        image_size: int = 64,
        *,
        transforms: Callable[..., Any] | None = None,
        cache: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0 (0 = default), got {num_samples}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        self.split = split
        self.domain = domain
        self.num_samples = int(num_samples) or DEFAULT_NUM_SAMPLES[split]
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.transforms = transforms
        self.cache = cache
        self._cache: OrderedDict[int, tuple[torch.Tensor, Any]] = OrderedDict()
        per_sample = 4 * self.image_size**2  # image + mask, uint8
        self._cache_items = max(1, _CACHE_BYTES // per_sample)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, domain={self.domain!r}, "
                f"num_samples={self.num_samples}, seed={self.seed}, image_size={self.image_size})")

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._kind, SPLITS.index(self.split), index, stream])

    def _render(self, index: int) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def _wrap(self, image: torch.Tensor, target: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self!r}")
        return index

    def __getitem__(self, index: int):
        index = self._check_index(index)
        item = self._cache.get(index)
        if item is None:
            image, target = self._render(index)
            item = (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), target)
            if self.cache:
                self._cache[index] = item
                if len(self._cache) > self._cache_items:
                    self._cache.popitem(last=False)
        elif self.cache:
            self._cache.move_to_end(index)
        # Clones keep the cache immune to in-place edits by transforms or callers.
        image, target = self._wrap(item[0].clone(), item[1])
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def __getstate__(self) -> dict[str, Any]:
        # Workers re-render on demand; shipping the cache would only bloat the pickle.
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state


class SyntheticShapes(_TwoDomainDataset):
    """Classify one rendered shape per image into :data:`SHAPE_CLASSES`.

    ``dataset[i]`` is ``(tv_tensors.Image uint8 [3, H, W], int label)``. The label, position,
    size, rotation and both colours depend only on ``(seed, split, i)``; ``domain`` selects
    flat rendering (``"synthetic"``) or the textured, colour-shifted, noisy ``"real"`` look.
    ``transforms``, when given, is called as ``transforms(image, label)``.
    """

    _kind = 0
    classes = SHAPE_CLASSES
    num_classes = len(SHAPE_CLASSES)

    def label(self, index: int) -> int:
        """The label without rendering (cheap; useful for class-balanced samplers)."""
        return int(self._rng(self._check_index(index), GEOMETRY).integers(self.num_classes))

    def _render(self, index: int) -> tuple[np.ndarray, int]:
        return render_shape(lambda stream: self._rng(index, stream), self.image_size, self.domain)

    def _wrap(self, image: torch.Tensor, target: int) -> tuple[tv_tensors.Image, int]:
        return tv_tensors.Image(image), target


class SyntheticScenes(_TwoDomainDataset):
    """Semantic segmentation of street-like scenes into :data:`SCENE_CLASSES`.

    ``dataset[i]`` is ``(tv_tensors.Image uint8 [3, H, W], tv_tensors.Mask uint8 [H, W])`` with
    mask values in ``[0, num_classes)``. Layout has street structure (sky on top, road in
    perspective at the bottom, objects scaled by depth); per-class colours vary per scene and
    per instance (cars and people can be any colour), so colour alone does not give the class.
    ``transforms``, when given, is called as ``transforms(image, mask)``.
    """

    _kind = 1
    classes = SCENE_CLASSES
    num_classes = len(SCENE_CLASSES)

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return render_scene(lambda stream: self._rng(index, stream), self.image_size, self.domain)

    def _wrap(self, image: torch.Tensor, target: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        return tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(target.copy()))
