"""Training and evaluation pipelines (torchvision.transforms.v2, joint image/mask for segmentation).

- ImageNet (both papers): RandomResizedCrop(224) + flip; eval resize 256, centre crop 224.
- Built-in data: rendered at the final size; flip only.
- Segmentation (IBN Table 6 protocol): random scale and aspect ratio, random crop (padded with the
  ignore label), mirror; evaluation at full resolution.
Every pipeline starts with the optional fixed resize of the dataset spec (GTA5 -> 1024x563) and the
appearance transform of IBN Table 1, applied to the uint8 image.

Workers hand over uint8 images (and uint8 masks): conversion to float and ImageNet normalisation run on the
device (:func:`normalize_batch`, called by the task's ``on_after_batch_transfer``), as timm's prefetcher does.
That moves a quarter of the bytes through worker queues and pinned memory and takes the float work off the
CPU cores (``bench/loader.py`` measures it). The result is bit-identical to normalising in the worker
(``normalize=True``), because the device runs the same torchvision kernels in the same order.

All randomness comes from torch's global RNG (torchvision v2 transforms and ``torch.rand``), never Python's
``random`` or NumPy's, so seeding torch per sample fixes every augmentation.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


class RandomScaleAspect(v2.Transform):
    """Resize by a random scale and a random aspect-ratio change (log-uniform), image and mask together."""

    def __init__(self, scale_range: Sequence[float], aspect_range: Sequence[float]):
        super().__init__()
        self.scale_range = tuple(scale_range)
        self.log_aspect = (math.log(aspect_range[0]), math.log(aspect_range[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        # torch's global RNG, like every v2 transform: one seed fixes the whole augmentation.
        lo, hi = self.scale_range
        s = lo + (hi - lo) * float(torch.rand(()))
        la, lb = self.log_aspect
        a = math.exp(la + (lb - la) * float(torch.rand(())))
        return dict(size=[max(1, round(h * s / math.sqrt(a))), max(1, round(w * s * math.sqrt(a)))])

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # Masks are resized with nearest neighbour by torchvision's Mask kernel.
        return self._call_kernel(TF.resize, inpt, size=params["size"], antialias=True)


class Appearance(v2.Transform):
    """IBN Table 1 appearance change on the uint8 image (see :mod:`ibnnet.data.appearance`)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image):
            from .appearance import apply_appearance
            return tv_tensors.wrap(apply_appearance(inpt.as_subclass(torch.Tensor), self.kind), like=inpt)
        return inpt


def _prefix(spec) -> list[v2.Transform]:
    steps: list[v2.Transform] = []
    if spec.resize is not None:
        w, h = spec.resize
        steps.append(v2.Resize([h, w], antialias=True))
    if spec.appearance != "none":
        steps.append(Appearance(spec.appearance))
    return steps


def _to_float() -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
        v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ]


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 images ``[..., 3, H, W]`` -> float32, scaled to [0, 1] and ImageNet-normalised, on their device.

    The same torchvision kernels as the worker-side ``ToDtype(scale=True)`` + ``Normalize``, so the result is
    bit-identical to the old float pipeline. Float input is returned unchanged (already normalised).
    """
    if images.is_floating_point():
        return images
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 or already normalised float images, got {images.dtype}")
    x = TF.to_dtype(images.as_subclass(torch.Tensor), torch.float32, scale=True)
    return TF.normalize(x, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, inplace=True)


def prepare_batch(batch):
    """A batch as the workers hand it over -> what the model and losses take (on the batch's device).

    ``(uint8 images, targets)``: images via :func:`normalize_batch`; uint8 segmentation masks -> int64 (the
    loss and confusion matrix index with them; uint8 keeps them 8x smaller until here).
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        return batch
    x, y = batch
    if isinstance(x, torch.Tensor):
        x = normalize_batch(x)
    if isinstance(y, torch.Tensor) and y.dtype == torch.uint8:
        y = y.long()
    return (x, y) if isinstance(batch, tuple) else [x, y]


def build_transform(spec, policy: str, augment, train: bool, normalize: bool = False) -> v2.Compose:
    """The pipeline of one dataset spec. Output: uint8 image (and uint8 mask), to be normalised on the device
    by :func:`prepare_batch`; ``normalize=True`` gives the old worker-side float32 output instead."""
    steps = _prefix(spec)
    if policy == "imagenet":
        if train:
            steps += [v2.RandomResizedCrop(augment.image_size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            steps += [v2.Resize(augment.eval_resize, antialias=True), v2.CenterCrop(augment.image_size)]
    elif policy == "light":
        if train:
            steps += [v2.RandomHorizontalFlip()]
    elif policy == "segmentation":
        if train:
            steps += [
                RandomScaleAspect(augment.scale_range, augment.aspect_range),
                v2.RandomCrop(list(augment.crop_size), pad_if_needed=True,
                              fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}),
            ]
            if augment.hflip:
                steps.append(v2.RandomHorizontalFlip())
    else:
        raise ValueError(f"unknown augmentation policy {policy!r}")
    steps += _to_float() if normalize else []
    return v2.Compose(steps or [v2.Identity()])  # e.g. segmentation eval: nothing to do before the device


class TransformedDataset(Dataset):
    """A raw dataset (uint8 image, label or mask) seen through a transform, returning plain tensors."""

    def __init__(self, dataset: Dataset, transform: v2.Compose):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        image, target = self.transform(image, target)
        image = image.as_subclass(torch.Tensor)
        if isinstance(target, torch.Tensor):
            target = target.as_subclass(torch.Tensor)
        return image, target
