"""Training and evaluation pipelines (torchvision.transforms.v2, joint image/mask for segmentation).

- ImageNet (both papers): RandomResizedCrop(224) + flip; eval resize 256, centre crop 224.
- Built-in data: rendered at the final size; flip only.
- Segmentation (IBN Table 6 protocol): random scale and aspect ratio, random crop (padded with the
  ignore label), mirror; evaluation at full resolution.
Every pipeline starts with the optional fixed resize of the dataset spec (GTA5 -> 1024x563). IBN Table 1's
appearance transforms act on the float network input just before normalisation (unclipped, the default),
or, for the ``*_clip`` variants, on the decoded uint8 image (see :mod:`ibnnet.data.appearance`).
"""
from __future__ import annotations

import math
import random
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
        s = random.uniform(*self.scale_range)
        a = math.exp(random.uniform(*self.log_aspect))
        return dict(size=[max(1, round(h * s / math.sqrt(a))), max(1, round(w * s * math.sqrt(a)))])

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # Masks are resized with nearest neighbour by torchvision's Mask kernel.
        return self._call_kernel(TF.resize, inpt, size=params["size"], antialias=True)


class Appearance(v2.Transform):
    """IBN Table 1 appearance change of the image (see :mod:`ibnnet.data.appearance`): the ``*_clip``
    kinds on uint8 images (rounded, clipped), the others on float images in [0, 1] (exact, unclipped)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image):
            from .appearance import apply_appearance, apply_appearance_float, is_clipped
            x = inpt.as_subclass(torch.Tensor)
            out = apply_appearance(x, self.kind) if is_clipped(self.kind) else apply_appearance_float(x, self.kind, 1.0)
            return tv_tensors.wrap(out, like=inpt)
        return inpt


def _prefix(spec) -> list[v2.Transform]:
    steps: list[v2.Transform] = []
    if spec.resize is not None:
        w, h = spec.resize
        steps.append(v2.Resize([h, w], antialias=True))
    if spec.appearance.endswith("_clip"):
        steps.append(Appearance(spec.appearance))
    return steps


def _to_float(appearance: str = "none") -> list[v2.Transform]:
    # The unclipped appearance acts on the float input the network sees (after crop, before normalising):
    # an exact affine map of it, as IBN Table 1's std x1.5 result for IBN-b requires.
    exact = [Appearance(appearance)] if appearance != "none" and not appearance.endswith("_clip") else []
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
        *exact,
        v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ]


def build_transform(spec, policy: str, augment, train: bool) -> v2.Compose:
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
    return v2.Compose(steps + _to_float(spec.appearance))


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
