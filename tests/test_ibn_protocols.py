"""IBN tables' protocols (issue 8): Table 1's appearance transforms, the CycleGAN Monet set, styled folders'
labels, GTA5's split, final vs best metrics, the segmentation validation cadence."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchvision import tv_tensors

import ibnnet.models  # noqa: F401  (registers the IBN models with timm)
from ibnnet.config.schema import AugmentConfig, DatasetSpec
from ibnnet.data.appearance import ALL_APPEARANCES, apply_appearance_float
from ibnnet.data.transforms import build_transform

import fixtures_datasets as fx

# ---------------------------------------------------------------- IBN Table 1: appearance transforms


def _bright_image(size: int, seed: int = 0) -> tv_tensors.Image:
    """A smooth photo-like image with highlights near 255, so clipping at 255 matters."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 10, 10, generator=g)
    img = F.interpolate(base, size=(size + size // 8, size + size // 4), mode="bicubic", align_corners=False)[0]
    return tv_tensors.Image((img.clamp(0, 1) * 215 + 40).round().to(torch.uint8))


def _network_input(img, kind: str, size: int) -> torch.Tensor:
    spec = OmegaConf.structured(DatasetSpec(appearance=kind))
    aug = OmegaConf.structured(AugmentConfig(image_size=size, eval_resize=size + size // 8))
    x, _ = build_transform(spec, "imagenet", aug, train=False)(img, 0)
    return x.as_subclass(torch.Tensor)


def test_unclipped_appearance_is_an_exact_affine_map_of_the_network_input():
    img = _bright_image(64)
    x = _network_input(img, "none", 64)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for kind, gain in (("std1.5", 1.5), ("rgb+50", 1.0), ("r+50", 1.0)):
        y = _network_input(img, kind, 64)
        # y = gain * x + c per channel, exactly (to float rounding): what the stem IN of IBN-b cancels
        c = (y - gain * x).flatten(1)
        assert (c.max(1).values - c.min(1).values).max() < 1e-5, kind
        if kind == "rgb+50":
            assert torch.allclose(c[:, 0], 50 / 255 / std.flatten(), atol=1e-5)
        if kind == "r+50":
            assert torch.allclose(c[:, 0], torch.tensor([50 / 255 / 0.229, 0.0, 0.0]), atol=1e-5)
    # std1.5's mean is that of the pixels the network sees: the channel means are unchanged
    assert torch.allclose(_network_input(img, "std1.5", 64).mean((1, 2)), x.mean((1, 2)), atol=1e-5)
    # the clipped variant saturates the highlights: not affine any more
    c = (_network_input(img, "std1.5_clip", 64) - 1.5 * x).flatten(1)
    assert (c.max(1).values - c.min(1).values).max() > 0.1
    assert set(ALL_APPEARANCES) == {"none", "rgb+50", "r+50", "std1.5", "rgb+50_clip", "r+50_clip", "std1.5_clip"}


def test_apply_appearance_float_values_and_errors():
    x = torch.tensor([[0.2, 0.4], [0.0, 1.0], [0.5, 0.5]]).reshape(3, 1, 2)
    out = apply_appearance_float(x, "std1.5", scale=1.0)
    assert torch.allclose(out.flatten(), torch.tensor([0.15, 0.45, -0.25, 1.25, 0.5, 0.5]))  # unclipped
    assert torch.allclose(apply_appearance_float(x * 255, "r+50"), x * 255 + torch.tensor([50.0, 0, 0]).view(3, 1, 1))
    batch = torch.stack([x, 2 * x])
    assert torch.allclose(apply_appearance_float(batch, "std1.5", 1.0)[1], apply_appearance_float(2 * x, "std1.5", 1.0))
    with pytest.raises(ValueError, match="not an unclipped appearance"):
        apply_appearance_float(x, "std1.5_clip")
    with pytest.raises(TypeError, match="float"):
        apply_appearance_float((x * 255).to(torch.uint8), "std1.5")


@torch.no_grad()
def test_ibn_b_is_invariant_to_std_x1_5_and_resnet50_is_not():
    """IBN Table 1: IBN-Net50-b under std x1.5 equals its origin numbers ("0.00/0.00")."""
    img = _bright_image(64, seed=3)
    inputs = {k: _network_input(img, k, 64)[None] for k in ("none", "std1.5", "std1.5_clip")}
    change = {}
    for name in ("resnet50_ibn_b", "resnet50_bn"):
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=10).eval()
        ref = model(inputs["none"])
        for kind in ("std1.5", "std1.5_clip"):
            change[name, kind] = float((model(inputs[kind]) - ref).norm() / ref.norm())
    print(change)
    # What is left for IBN-b comes from conv1's zero padding at the image border (64 px: 2 of 32 rows).
    assert change["resnet50_ibn_b", "std1.5"] < 0.08
    assert change["resnet50_bn", "std1.5"] > 5 * change["resnet50_ibn_b", "std1.5"]
    # the uint8 clipped variant breaks the invariance
    assert change["resnet50_ibn_b", "std1.5_clip"] > 1.5 * change["resnet50_ibn_b", "std1.5"]
