"""IBN Tables 1 and 3's "Monet" set: ImageNet val translated by CycleGAN's photo->Monet generator.

The IBN paper evaluates on "style transform, which is realized using CycleGAN [33]" (sec. 4.1; CycleGAN:
Zhu, Park, Isola, Efros, "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks",
ICCV 2017). The authors' public PyTorch release (junyanz/pytorch-CycleGAN-and-pix2pix) ships the
photo->Monet generator as ``style_monet.pth``; its ``scripts/download_cyclegan_model.sh style_monet`` saves
it as ``checkpoints/style_monet_pretrained/latest_net_G.pth`` for ``test.py --model test --no_dropout``.

:class:`ResnetGenerator` re-implements that repository's ``ResnetGenerator`` (models/networks.py) with the
settings of the released model, so the checkpoint loads STRICTLY, key for key:

    ReflectionPad(3), Conv 7x7 3->64, IN, ReLU,                        model.0-3
    Conv 3x3/2 64->128, IN, ReLU, Conv 3x3/2 128->256, IN, ReLU,       model.4-9
    9 x ResnetBlock(256): [ReflectionPad(1), Conv 3x3, IN, ReLU,       model.10-18 (.conv_block.0-6)
                           ReflectionPad(1), Conv 3x3, IN] + identity
    ConvTranspose 3x3/2 256->128, IN, ReLU, ConvT 128->64, IN, ReLU,   model.19-24
    ReflectionPad(3), Conv 7x7 64->3, Tanh                             model.25-27

with ``InstanceNorm2d(affine=False, track_running_stats=False)`` (its ``--norm instance``), ``ngf=64``, no
dropout, and biases on every convolution (the official code sets ``use_bias`` when the norm is IN).

Input/output as its test pipeline: RGB scaled to [-1, 1] (``Normalize((0.5,)*3, (0.5,)*3)`` after
``ToTensor``), output ``(y + 1) / 2 * 255`` truncated to uint8 (``tensor2im``'s ``astype(np.uint8)``).
Its test script resizes to 256x256 by default; the IBN paper does not say what size it translated at. We
translate at the image's own size, so the styled copy keeps every file's size and the evaluation resize/crop
acts on it as on the original: each image is reflection-padded to a multiple of 4 (the generator downsamples
twice) and the output cropped back (the official ``--preprocess none`` instead resizes to a multiple of 4).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from ...errors import (
    ConfigError,
    DataError,
    DataNotFoundError,
    DownloadError,
    MissingPathError,
)
from ...files import atomic_output
from ..datasets.imagenet import list_class_folders, list_images
from ..images import decode_rgb

STYLE_MONET_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models/style_monet.pth"
# The official download script's layout: checkpoints/<name>_pretrained/latest_net_G.pth
STYLE_MONET_FILE = Path("style_monet_pretrained") / "latest_net_G.pth"
JPEG_QUALITY = 95
MIN_SIZE = 8   # ReflectionPad2d(1) at a quarter of the resolution needs 2 px there


def _norm(ch: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(ch, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), _norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), _norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator (9 blocks, IN, reflection padding); maps [-1, 1] RGB to [-1, 1] RGB."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=True), _norm(ngf),
                                   nn.ReLU(True)]
        for i in range(2):  # two stride-2 downsamplings
            c = ngf * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=True), _norm(2 * c), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=True),
                       _norm(c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _instance_norm_stat_keys(model: nn.Module, state: dict) -> list[str]:
    """Keys of old (PyTorch < 0.4) checkpoints that only exist because IN then kept running statistics."""
    norms = {name for name, m in model.named_modules() if isinstance(m, nn.InstanceNorm2d)}
    return [k for k in state
            if k.rpartition(".")[0] in norms and k.rpartition(".")[2] in ("running_mean", "running_var",
                                                                          "num_batches_tracked")]


def load_generator(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ResnetGenerator:
    """A :class:`ResnetGenerator` with the weights of ``path`` (the official ``latest_net_G.pth`` format).

    Loaded strictly: every key and shape must match. The only keys dropped are IN running statistics of
    checkpoints saved by PyTorch < 0.4, exactly as the official loader's ``__patch_instance_norm_state_dict``
    does; anything else that differs is an error naming the file and the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"CycleGAN generator weights not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: not a generator state_dict (expected a dict of tensors, as latest_net_G.pth)")
    if any(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    model = ResnetGenerator()
    for k in _instance_norm_stat_keys(model, state):
        del state[k]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                    for k, v in expected.items() if k in state and state[k].shape != v.shape)
    if missing or unexpected or shapes:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        parts = [f"missing keys: {few(missing)}" if missing else "",
                 f"unexpected keys: {few(unexpected)}" if unexpected else "",
                 f"shape mismatches: {few(shapes)}" if shapes else ""]
        raise DataError(f"{path} is not CycleGAN's ResNet-9-block generator (ngf 64, InstanceNorm, no dropout): "
                         + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)
    return model.eval()


def default_weights_path() -> Path:
    """Where :func:`download_style_monet` caches the weights (under torch.hub's folder, like timm's)."""
    return Path(torch.hub.get_dir()) / "cyclegan" / STYLE_MONET_FILE


def download_style_monet(dest: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The official photo->Monet generator, downloaded once to ``dest`` (default :func:`default_weights_path`)."""
    dest = Path(dest) if dest is not None else default_weights_path()
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # download_url_to_file writes a temporary file in the same folder and renames it: no partial file remains.
    try:
        torch.hub.download_url_to_file(STYLE_MONET_URL, str(dest), progress=progress)
    except Exception as e:
        raise DownloadError(f"could not download {STYLE_MONET_URL} to {dest} ({type(e).__name__}: {e}); download it "
                           f"by hand and pass --weights FILE") from e
    return dest


def to_generator_input(img: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float in [-1, 1], as ToTensor + Normalize((0.5,)*3, (0.5,)*3)."""
    return (img.float() / 255.0 - 0.5) / 0.5


def from_generator_output(y: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 [0, 255] as the official ``tensor2im``: ``(y + 1) / 2 * 255`` truncated."""
    return ((y.float() + 1.0) / 2.0 * 255.0).clamp_(0, 255).to(torch.uint8)


@torch.no_grad()
def stylize_images(generator: nn.Module, images: Sequence[torch.Tensor], device: str | torch.device = "cpu"
                   ) -> list[torch.Tensor]:
    """Translate uint8 ``[3, H, W]`` images; same sizes out. Images of one padded size run as one batch."""
    out: list[torch.Tensor | None] = [None] * len(images)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        h, w = img.shape[-2:]
        groups.setdefault((-(-h // 4) * 4, -(-w // 4) * 4), []).append(i)
    for (ph, pw), idx in groups.items():
        batch = []
        for i in idx:
            h, w = images[i].shape[-2:]
            if min(h, w) < MIN_SIZE:
                raise DataError(f"image of {w}x{h} px: the generator's reflection padding needs >= {MIN_SIZE} px")
            x = to_generator_input(images[i]).to(device)
            # pad <= 3 < size: one reflection pad reaches the multiple of 4
            batch.append(F.pad(x[None], (0, pw - w, 0, ph - h), mode="reflect")[0])
        y = generator(torch.stack(batch))
        for j, i in enumerate(idx):
            h, w = images[i].shape[-2:]
            out[i] = from_generator_output(y[j, :, :h, :w]).cpu()
    return out  # type: ignore[return-value]


@dataclass
class StylizePlan:
    todo: list[tuple[Path, Path]]   # (source, destination) still to write
    done: int                       # destinations already present (resume)
    classes: list[str]


def plan_folder(src: str | os.PathLike, dst: str | os.PathLike) -> StylizePlan:
    """Every image of the class-folder set ``src`` and its destination under ``dst`` (same relative path)."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DataNotFoundError(f"source folder not found: {src} (expected {src}/<class>/<image>)")
    if src.resolve() == dst.resolve():
        raise ConfigError(f"destination {dst} is the source folder: the styled copy needs its own folder")
    classes = list_class_folders(src)
    if not classes:
        raise DataNotFoundError(f"{src} has no class folders (expected {src}/<class>/<image>, e.g. ImageNet val "
                                f"sorted into <wnid>/ folders)")
    todo, done = [], 0
    for c in classes:
        for name in list_images(src / c):
            target = dst / c / name
            if target.is_file():
                done += 1
            else:
                todo.append((src / c / name, target))
    if not todo and not done:
        raise DataNotFoundError(f"no images under the class folders of {src}")
    return StylizePlan(todo, done, classes)


def _image_format(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in (".jpg", ".jpeg"):
        return "JPEG"
    if ext == ".png":
        return "PNG"
    raise DataError(f"{path}: cannot tell the image format from the extension (expected .jpeg/.jpg/.png)")


def save_image_atomic(img: torch.Tensor, path: Path, quality: int = JPEG_QUALITY) -> None:
    """Write uint8 ``[3, H, W]`` to ``path`` in the format its extension names, atomically."""
    fmt = _image_format(path)
    with atomic_output(path) as f:
        im = Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy()))
        im.save(f, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def stylize_folder(generator: nn.Module, src: str | os.PathLike, dst: str | os.PathLike, *, batch_size: int = 8,
                   device: str | torch.device = "cpu", progress: bool = True, quality: int = JPEG_QUALITY
                   ) -> dict[str, int]:
    """Write the styled copy of the class-folder set ``src`` to ``dst`` (same folder and file names, sizes).

    Resumable: files already in ``dst`` are skipped, and every file is written atomically, so an interrupted
    run leaves only complete images and the next run continues where it stopped. Returns counts.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    plan = plan_folder(src, dst)
    generator = generator.to(device).eval()
    bar = tqdm(total=len(plan.todo) + plan.done, initial=plan.done, unit="img", disable=not progress,
               desc=f"stylize {Path(src).name}")
    try:
        for chunk in _chunks(plan.todo, batch_size):
            images = [decode_rgb(s) for s, _ in chunk]
            for (s, _), img in zip(chunk, images):
                if min(img.shape[-2:]) < MIN_SIZE:
                    raise DataError(f"{s}: {img.shape[-1]}x{img.shape[-2]} px is too small to stylize "
                                     f"(>= {MIN_SIZE} px per side)")
            for (_, target), styled in zip(chunk, stylize_images(generator, images, device)):
                save_image_atomic(styled, target, quality)
            bar.update(len(chunk))
    finally:
        bar.close()
    return {"written": len(plan.todo), "skipped": plan.done, "classes": len(plan.classes)}


__all__ = ["JPEG_QUALITY", "STYLE_MONET_FILE", "STYLE_MONET_URL", "ResnetGenerator", "default_weights_path",
           "download_style_monet", "from_generator_output", "load_generator", "plan_folder", "save_image_atomic",
           "stylize_folder", "stylize_images", "to_generator_input"]
