"""IBN Table 1 appearance transforms.

The paper names them only: "RGB+50", "R+50", "std ×1.5" (Table 1), described as "shift in color,
brightness, contrast" (IBN sec. 4.1, "Generalization to Appearance Transforms"). Our reading, in 0-255
pixel units:

* ``"rgb+50"``: +50 on all three channels (brightness shift);
* ``"r+50"``:   +50 on the red channel only (colour shift);
* ``"std1.5"``: contrast x1.5 about the mean: ``mean + 1.5 * (x - mean)``, mean per image and channel;
* ``"none"``:   the input, unchanged.

Default: unclipped, on the float network input. ``std ×1.5`` leaves IBN-Net50-b exactly at its origin
numbers in the paper (23.64/6.86, drop "0.00/0.00"). That only happens if the transform is an exact affine
map of the network input with one gain for all channels (``a * x + b_c``): after the bias-free conv1 it is a
gain and a per-channel constant, which the stem IN removes (up to conv1's zero-padded border). So the
default kinds act on the float image AFTER resize/crop and BEFORE normalisation, without rounding or
clipping, with the std1.5 mean taken over exactly the pixels the network sees (:func:`apply_appearance_float`;
``+50`` becomes ``+50/255`` on the [0, 1] scale).

Named variants ``"rgb+50_clip"``, ``"r+50_clip"``, ``"std1.5_clip"``: the photo-editor reading, on the
decoded uint8 image before resizing: float arithmetic (means in float64), rounded to the nearest integer
(ties to even) and clipped to [0, 255] (:func:`apply_appearance` on uint8). Clipping saturates bright pixels,
so the realised gain is below 1.5 and the shift below 50 on bright images, and IBN-b is no longer invariant.
(Note: unclipped, IBN-b's stem IN also cancels RGB+50 and R+50, both per-channel offsets; the paper still
reports drops of 0.18 and 1.46 top-1 for them, so its pipeline was not an exact affine map for those two,
saturation being one explanation. The paper does not say; the ``_clip`` variants let you evaluate both.)

The "Monet" row needs no transform: a CycleGAN/Monet-styled copy of val in the same class-folder layout
(``ibnnet data stylize``, :mod:`ibnnet.data.tools.stylize`) is read as an ``image_folder`` evaluation set whose
labels are mapped by folder name to the real val's classes (``classes_root``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors

APPEARANCES: tuple[str, ...] = ("none", "rgb+50", "r+50", "std1.5")   # Table 1's, unclipped float (default)
CLIPPED_APPEARANCES: tuple[str, ...] = ("rgb+50_clip", "r+50_clip", "std1.5_clip")  # uint8, rounded + clipped
ALL_APPEARANCES: tuple[str, ...] = APPEARANCES + CLIPPED_APPEARANCES
OFFSET = 50.0       # "+50" in 0-255 pixel units
CONTRAST = 1.5      # "std x1.5"


def is_clipped(kind: str) -> bool:
    """Whether ``kind`` is a uint8 (rounded, clipped) variant applied to the decoded image."""
    if kind not in ALL_APPEARANCES:
        raise ValueError(f"unknown appearance {kind!r}; choose from {ALL_APPEARANCES}")
    return kind in CLIPPED_APPEARANCES


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
    """Apply one of :data:`ALL_APPEARANCES` to a uint8 ``[3,H,W]`` / ``[N,3,H,W]`` RGB tensor.

    A uint8 result is necessarily rounded and clipped, so ``"std1.5"`` and ``"std1.5_clip"`` give the same
    here; the default (unclipped) pipeline uses :func:`apply_appearance_float` instead.
    """
    is_clipped(kind)
    _check_image(img)
    kind = kind.removesuffix("_clip")
    if kind == "none":
        return img
    if kind == "rgb+50":
        return add_offset(img, OFFSET)
    if kind == "r+50":
        return add_offset(img, OFFSET, channels=(0,))
    return scale_contrast(img, CONTRAST)


def apply_appearance_float(x: torch.Tensor, kind: str, scale: float = 255.0) -> torch.Tensor:
    """The unclipped transform on a float ``[3,H,W]`` / ``[N,3,H,W]`` RGB image whose white is ``scale``.

    Exact affine maps, no rounding or clipping: ``x + 50 * scale / 255`` on the chosen channels, and
    ``mean + 1.5 * (x - mean)`` with the mean per image and channel over H and W (accumulated in float64).
    Returns a new tensor (``"none"`` returns ``x`` itself).
    """
    if kind not in APPEARANCES:
        raise ValueError(f"apply_appearance_float: {kind!r} is not an unclipped appearance; choose from "
                         f"{APPEARANCES}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"expected a float tensor, got {type(x).__name__} {getattr(x, 'dtype', '')}")
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected [3,H,W] or [N,3,H,W] RGB, got shape {tuple(x.shape)}")
    if kind == "none":
        return x
    if kind in ("rgb+50", "r+50"):
        offset = torch.zeros(3, 1, 1, dtype=x.dtype, device=x.device)
        offset[:] = OFFSET * scale / 255.0
        if kind == "r+50":
            offset[1:] = 0
        return x + offset
    mean = x.to(torch.float64).mean(dim=(-2, -1), keepdim=True).to(x.dtype)
    return mean + CONTRAST * (x - mean)


class Appearance:
    """Callable wrapper of :func:`apply_appearance` (uint8 images, rounded and clipped)."""

    def __init__(self, kind: str) -> None:
        is_clipped(kind)
        self.kind = kind

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return apply_appearance(img, self.kind)

    def __repr__(self) -> str:
        return f"Appearance({self.kind!r})"


__all__ = ["ALL_APPEARANCES", "APPEARANCES", "Appearance", "CLIPPED_APPEARANCES", "add_offset", "apply_appearance",
           "apply_appearance_float", "is_clipped", "scale_contrast"]
