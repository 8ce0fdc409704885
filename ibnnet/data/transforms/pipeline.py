"""Training and evaluation pipelines (torchvision.transforms.v2, joint image/mask for segmentation).

- ImageNet (both papers): RandomResizedCrop(224) + flip; eval resize 256, centre crop 224.
- Built-in data: rendered at the final size; flip only.
- Segmentation (IBN Table 6 protocol): random scale and aspect ratio, random crop (padded with the
  ignore label), mirror; evaluation at full resolution.
Every pipeline starts with the optional fixed resize of the dataset spec (GTA5 -> 1024x563). IBN Table 1's
appearance transforms act on the float network input just before normalisation (unclipped, the default),
or, for the ``*_clip`` variants, on the decoded uint8 image (see :mod:`ibnnet.data.transforms.appearance`).

Workers hand over uint8 images (and uint8 masks): conversion to float and ImageNet normalisation run on the
device (:func:`normalize_batch`, called by the task's ``on_after_batch_transfer``), as timm's prefetcher does.
That moves a quarter of the bytes through worker queues and pinned memory and takes the float work off the
CPU cores (``bench/loader.py`` measures it). The result is bit-identical to normalising in the worker
(``normalize=True``), because the device runs the same torchvision kernels in the same order.

All randomness comes from torch's global RNG (torchvision v2 transforms and ``torch.rand``), never Python's
``random`` or NumPy's, so seeding torch per sample fixes every augmentation. An unclipped appearance change
needs the float image, so the (evaluation) sets that have one are normalised in the worker: float batches
pass through :func:`normalize_batch` unchanged.
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
    """IBN Table 1 appearance change of the image (see :mod:`ibnnet.data.transforms.appearance`): the ``*_clip``
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


class PCALighting(v2.Transform):
    """AlexNet-style PCA lighting (Krizhevsky et al. 2012; fb.resnet.torch, which He et al. 2016 train with;
    the official SN code's ColorAugmentation): add sum_i alpha_i * eigval_i * eigvec_i, alpha_i ~ N(0, std),
    one RGB offset per image, to the image in [0, 1] (uint8 input is converted; no clipping, as theirs).
    Eigen-decomposition of ImageNet's RGB pixel covariance; columns of ``EIGVEC`` are the eigenvectors."""

    EIGVAL = (0.2175, 0.0188, 0.0045)
    EIGVEC = ((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))

    def __init__(self, std: float):
        super().__init__()
        if std < 0:
            raise ValueError(f"data.augment.pca_lighting must be >= 0, got {std}")
        self.std = std

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        alpha = torch.randn(3) * self.std   # global torch RNG: seeded per worker like every other augmentation
        offset = torch.tensor(self.EIGVEC) @ (alpha * torch.tensor(self.EIGVAL))
        return dict(offset=offset)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        image = TF.to_dtype(inpt.as_subclass(torch.Tensor), torch.float32, scale=True)
        return tv_tensors.wrap(image + params["offset"].view(3, 1, 1), like=inpt)


def pca_lighting(augment) -> list[v2.Transform]:
    """[PCALighting] when ``augment.pca_lighting`` > 0 (SN Table 2's ImageNet training), else nothing."""
    std = getattr(augment, "pca_lighting", 0.0) or 0.0
    return [PCALighting(std)] if std > 0 else []


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

    ``(uint8 images, targets, ...)``: images via :func:`normalize_batch`; uint8 segmentation masks -> int64 (the
    loss and confusion matrix index with them; uint8 keeps them 8x smaller until here).
    """
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        return batch
    x, y, *rest = batch   # rest: the sample indices (TransformedDataset)
    if isinstance(x, torch.Tensor):
        x = normalize_batch(x)
    if isinstance(y, torch.Tensor) and y.dtype == torch.uint8:
        y = y.long()
    return (x, y, *rest) if isinstance(batch, tuple) else [x, y, *rest]


def build_transform(spec, policy: str, augment, train: bool, normalize: bool = False) -> v2.Compose:
    """The pipeline of one dataset spec. Output: uint8 image (and uint8 mask), to be normalised on the device
    by :func:`prepare_batch`; ``normalize=True`` gives the old worker-side float32 output instead."""
    steps = _prefix(spec)
    if policy == "imagenet":
        if train:
            steps += [v2.RandomResizedCrop(augment.image_size, antialias=True), v2.RandomHorizontalFlip()]
            steps += pca_lighting(augment)   # float image in [0, 1] from here: normalised below, in the worker
        else:
            steps += [v2.Resize(augment.eval_resize, antialias=True), v2.CenterCrop(augment.image_size)]
    elif policy == "center_crop":
        # Sets stored already resized and cropped (ImageNet-C's 224 px images): the authors' evaluation
        # (hendrycks/robustness ImageNet-C/test.py) only centre-crops them, a second resize would zoom in.
        if train:
            raise ValueError(f"{spec.name}: an evaluation-only set (centre crop) cannot be a training set")
        steps += [v2.CenterCrop(augment.image_size)]
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
    # Steps that make the image float (PCA lighting, an unclipped appearance change) normalise in the worker
    # too: float batches pass through normalize_batch unchanged, so they must arrive normalised.
    float_appearance = spec.appearance != "none" and not spec.appearance.endswith("_clip")
    floats = any(isinstance(t, PCALighting) for t in steps)
    steps += _to_float(spec.appearance) if normalize or float_appearance or floats else []
    return v2.Compose(steps or [v2.Identity()])  # e.g. segmentation eval: nothing to do before the device


class TransformedDataset(Dataset):
    """A raw dataset (uint8 image, label or mask) seen through a transform: ``(image, target, index)``.

    Items are addressed by ``index`` or by ``(epoch, index)`` (what :class:`~ibnnet.data.sampling.
    EpochBatchSampler` yields). The transform's randomness is drawn from torch's and Python's global RNGs
    re-seeded from (seed, epoch, index) for this one sample and restored afterwards, so a sample's
    augmentation does not depend on which worker loads it, on the worker count, or on a restart.
    The index comes back with the sample so that what each training step saw can be recorded.
    """

    def __init__(self, dataset: Dataset, transform: v2.Compose, seed: int = 0):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        from ..sampling import sample_seed, seed_torch
        epoch, index = item if isinstance(item, (tuple, list)) else (-1, item)
        image, target = self.dataset[index]
        s = sample_seed(self.seed, epoch, index)
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            seed_torch(s)
            random.seed(s)
            try:
                image, target = self.transform(image, target)
            finally:
                random.setstate(py_state)
        image = image.as_subclass(torch.Tensor)
        if isinstance(target, torch.Tensor):
            target = target.as_subclass(torch.Tensor)
        return image, target, index
