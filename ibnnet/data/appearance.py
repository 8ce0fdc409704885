"""IBN Table 1 appearance transforms on uint8 RGB images (``[3,H,W]`` or ``[N,3,H,W]``).

* ``"rgb+50"``: +50 on all three channels of the 0-255 image;
* ``"r+50"``:   +50 on the red channel only;
* ``"std1.5"``: contrast x1.5 about the mean: ``mean + 1.5 * (x - mean)``;
* ``"none"``:   the input, unchanged (returned as is, not copied).

Choices the paper leaves open:

* The mean for ``std1.5`` is taken per image and per channel (over H and W). A per-image gray mean would
  also shift hue on colourful images; per channel only stretches each channel, the closest reading of
  "contrast". In a batch every image uses its own means.
* Arithmetic is done in float32 (means in float64), rounded to the nearest integer (ties to even,
  ``torch.round``) and clipped to [0, 255]. Clipping is unavoidable for a uint8 result; it saturates bright
  pixels, so the realised std gain is below 1.5 and ``+50`` is below 50 on bright images, as it would be
  for any photo editor.
* The transforms act on whatever uint8 image they are given; the evaluation pipeline should apply them to
  the decoded image before resizing/cropping/normalising, so that the +50 is in 0-255 pixel units.

The "Monet" row needs no transform: a CycleGAN/Monet-styled copy of val in the same class-folder layout is
read with ``ImageNet(<styled_root>, split="val")`` (see :mod:`ibnnet.data.imagenet`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors

APPEARANCES: tuple[str, ...] = ("none", "rgb+50", "r+50", "std1.5")


def _check_image(img: torch.Tensor) -> None:
    if not isinstance(img, torch.Tensor) or img.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 tensor, got {type(img).__name__} {getattr(img, 'dtype', '')}")
    if img.ndim not in (3, 4) or img.shape[-3] != 3:
        raise ValueError(f"expected [3,H,W] or [N,3,H,W] RGB, got shape {tuple(img.shape)}")


def _to_uint8(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out = x.round_().clamp_(0, 255).to(torch.uint8)
    # Keep the tv_tensors type (e.g. Image) so downstream v2 transforms still dispatch on it.
    return tv_tensors.wrap(out, like=like) if isinstance(like, tv_tensors.TVTensor) else out


def add_offset(img: torch.Tensor, offset: float, channels: Sequence[int] = (0, 1, 2)) -> torch.Tensor:
    """Add ``offset`` (0-255 units) to the given channels, round and clip to uint8."""
    _check_image(img)
    x = img.as_subclass(torch.Tensor).to(torch.float32)
    idx = list(channels)
    x[..., idx, :, :] += offset
    return _to_uint8(x, img)


def scale_contrast(img: torch.Tensor, factor: float, per_channel: bool = True) -> torch.Tensor:
    """``mean + factor * (x - mean)`` per image (per channel by default), rounded and clipped."""
    _check_image(img)
    x = img.as_subclass(torch.Tensor).to(torch.float32)
    dims = (-2, -1) if per_channel else (-3, -2, -1)
    mean = x.to(torch.float64).mean(dim=dims, keepdim=True).to(torch.float32)
    return _to_uint8(mean + factor * (x - mean), img)


def apply_appearance(img: torch.Tensor, kind: str) -> torch.Tensor:
    """Apply one of :data:`APPEARANCES` to a uint8 ``[3,H,W]`` / ``[N,3,H,W]`` RGB tensor."""
    if kind not in APPEARANCES:
        raise ValueError(f"unknown appearance {kind!r}; choose from {APPEARANCES}")
    _check_image(img)
    if kind == "none":
        return img
    if kind == "rgb+50":
        return add_offset(img, 50.0)
    if kind == "r+50":
        return add_offset(img, 50.0, channels=(0,))
    return scale_contrast(img, 1.5)


class Appearance:
    """Callable wrapper, e.g. as the first step of an evaluation transform pipeline."""

    def __init__(self, kind: str) -> None:
        if kind not in APPEARANCES:
            raise ValueError(f"unknown appearance {kind!r}; choose from {APPEARANCES}")
        self.kind = kind

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return apply_appearance(img, self.kind)

    def __repr__(self) -> str:
        return f"Appearance({self.kind!r})"


__all__ = ["APPEARANCES", "Appearance", "add_offset", "apply_appearance", "scale_contrast"]
