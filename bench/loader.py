"""Images per second per CPU core of our training loaders against torchvision's classic PIL pipeline.

ImageNet (classification). The script writes JPEGs with ImageNet's size and quality distribution
(landscape 500x375 / 500x333 and portrait 375x500 shapes around the 500x375 mode, with a log-normal size
spread and some small images; quality 90; photo-like content: 1/f colour noise, gradients, shapes,
sensor noise, ~110 KB per image, ImageNet train's average (138 GB / 1.28M)), then times, on the same files, with the same
worker count and batch size, in rotated rounds (the median is reported):

  torchvision      ImageFolder + PIL + RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize
  ibnnet (float)   our decoder and v2 uint8 transforms, normalised in the workers (the old path)
  ibnnet           the same, workers hand over uint8, normalised by ``prepare_batch`` on the device
  ibnnet reduced   ``ibnnet`` at 128 px on the copy made by ``ibnnet data shrink`` (short side 160)

The device-side normalisation is timed too: on a CPU-only machine it runs on the main process's core,
which this benchmark counts (conservative; on a GPU it costs the CPU nothing).

Segmentation. Cityscapes-size (2048x1024) PNG images and label-id PNGs in Cityscapes' layout: PIL decode
of both + random scale + crop 512x1024 + flip + ToTensor/Normalize against our Cityscapes dataset and
segmentation pipeline (uint8 out). Reported, no target.

"Per core" = images/s divided by the number of processes doing the work (workers, or 1 with
``--workers 0``); every torch op runs single-threaded. Files are read from the page cache.

    uv run python bench/loader.py                      # 2 workers, 1024 reads of 256 JPEGs, 5 rounds
    uv run python bench/loader.py --workers 0 --images 128 --rounds 7
"""
from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision import datasets
from torchvision import transforms as T
from torchvision.transforms import functional as TVF

from ibnnet.config.schema import AugmentConfig, DatasetSpec
from ibnnet.data.datasets.cityscapes import Cityscapes
from ibnnet.data.datasets.imagenet import ImageNet
from ibnnet.data.labels import label_lut
from ibnnet.data.tools.shrink import shrink_imagenet
from ibnnet.data.transforms.pipeline import TransformedDataset, build_transform, prepare_batch

SHRUNK_SIDE = 160


# ----------------------------------------------------------------------------------------------------------
# Synthetic photo-like images


def photo_like(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [h, w, 3]: 1/f colour noise + a gradient + a few shapes + sensor noise (JPEGs decode like photos;
    flat colour would compress to a few KB and decode unrealistically fast)."""
    img = np.zeros((h, w, 3), np.float32)
    for octave in range(1, 9):  # ~1/f spectrum, like natural images
        cells = min(2 ** octave, max(h, w) // 2)
        coarse = rng.standard_normal((cells + 1, cells + 1, 3)).astype(np.float32)
        up = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((w, h), Image.BICUBIC)) for c in range(3)], -1)
        img += up * (45.0 / octave ** 0.5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    img += (np.cos(angle) * xx / w + np.sin(angle) * yy / h)[..., None] * rng.uniform(-60, 60, 3)
    for _ in range(rng.integers(3, 8)):  # shapes with hard edges (object boundaries)
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.3) * min(h, w)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r if rng.random() < 0.5 else \
            (abs(yy - cy) < r) & (abs(xx - cx) < r * rng.uniform(0.5, 2))
        img[mask] = img[mask] * 0.3 + rng.uniform(-80, 80, 3)
    img += rng.normal(0, 13, img.shape)  # sensor noise / fine texture
    return np.clip(img + 120, 0, 255).astype(np.uint8)


def imagenet_size(rng: np.random.Generator) -> tuple[int, int]:
    """(w, h): ImageNet's common shapes with a log-normal size spread (mean ~ 470x390)."""
    w, h = [(500, 375), (500, 333), (375, 500), (500, 375), (500, 400), (333, 500)][rng.integers(6)]
    s = float(np.clip(rng.lognormal(0.0, 0.2), 0.5, 1.6))
    return max(64, round(w * s)), max(64, round(h * s))


def write_imagenet_like(root: Path, n: int, classes: int = 8, seed: int = 0, quality: int = 90) -> dict:
    rng = np.random.default_rng(seed)
    sizes, nbytes = [], 0
    for i in range(n):
        w, h = imagenet_size(rng)
        folder = root / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(photo_like(h, w, rng)).save(buf, "JPEG", quality=quality)
        (folder / f"img_{i:05d}.JPEG").write_bytes(buf.getvalue())
        sizes.append((w, h))
        nbytes += buf.tell()
    ws, hs = zip(*sizes)
    return {"images": n, "mean_w": statistics.mean(ws), "mean_h": statistics.mean(hs), "mean_kb": nbytes / n / 1024}


def write_cityscapes_like(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split in ("train",):
        for i in range(n):
            city = "benchcity"
            stem = f"{city}_{i:06d}_000019"
            img_dir = root / "leftImg8bit" / split / city
            lab_dir = root / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            lab_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo_like(1024, 2048, rng)).save(img_dir / f"{stem}_leftImg8bit.png")
            # Label ids in large regions (as in real annotations, which PNG compresses well).
            coarse = rng.integers(0, 34, (16, 32)).astype(np.uint8)
            ids = np.asarray(Image.fromarray(coarse).resize((2048, 1024), Image.NEAREST))
            Image.fromarray(ids).save(lab_dir / f"{stem}_gtFine_labelIds.png")


# ----------------------------------------------------------------------------------------------------------
# Baselines


def torchvision_imagenet(root: Path, size: int) -> Dataset:
    return datasets.ImageFolder(str(root / "train"), transform=T.Compose([
        T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
        T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]))


class PILCityscapes(Dataset):
    """The classic PIL segmentation pipeline: decode image and label ids, map to train ids, random scale
    (bilinear / nearest), random crop padded with the ignore label, flip, ToTensor + Normalize."""

    def __init__(self, raw: Cityscapes, crop=(512, 1024), scale=(0.5, 2.0), aspect=(0.8, 1.25)):
        self.items = [(str(p), str(q)) for p, q in raw.samples]
        self.crop, self.scale, self.log_aspect = crop, scale, (math.log(aspect[0]), math.log(aspect[1]))
        self.lut = label_lut()

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        ip, lp = self.items[i]
        img = Image.open(ip).convert("RGB")
        lab = Image.fromarray(self.lut[np.asarray(Image.open(lp))])
        w, h = img.size
        s = float(torch.empty(()).uniform_(*self.scale))
        a = math.exp(float(torch.empty(()).uniform_(*self.log_aspect)))
        nw, nh = max(1, round(w * s * math.sqrt(a))), max(1, round(h * s / math.sqrt(a)))
        img, lab = img.resize((nw, nh), Image.BILINEAR), lab.resize((nw, nh), Image.NEAREST)
        ch, cw = self.crop
        if nh < ch or nw < cw:
            img = TVF.pad(img, [0, 0, max(0, cw - nw), max(0, ch - nh)], fill=0)
            lab = TVF.pad(lab, [0, 0, max(0, cw - nw), max(0, ch - nh)], fill=255)
        y0 = int(torch.randint(0, img.size[1] - ch + 1, ()))
        x0 = int(torch.randint(0, img.size[0] - cw + 1, ()))
        img, lab = img.crop((x0, y0, x0 + cw, y0 + ch)), lab.crop((x0, y0, x0 + cw, y0 + ch))
        if torch.rand(()) < 0.5:
            img, lab = img.transpose(Image.FLIP_LEFT_RIGHT), lab.transpose(Image.FLIP_LEFT_RIGHT)
        x = TVF.normalize(TVF.to_tensor(img), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        return x, torch.from_numpy(np.array(lab, dtype=np.int64))


# ----------------------------------------------------------------------------------------------------------
# Timing


def ours(root: Path, size: int, normalize: bool = False) -> Dataset:
    spec = DatasetSpec(name="bench", dataset="imagenet", split="train")
    aug = AugmentConfig(image_size=size, eval_resize=round(size * 256 / 224))
    return TransformedDataset(ImageNet(root, "train"), build_transform(spec, "imagenet", aug, True, normalize))


def timed_epoch(loader: DataLoader, device: torch.device) -> float:
    """Seconds for one pass, device-side normalisation included."""
    t0 = time.perf_counter()
    for batch in loader:
        prepare_batch([t.to(device, non_blocking=True) for t in batch])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(pipelines: dict[str, Dataset], workers: int, batch: int, rounds: int, device: torch.device,
            samples: int, warmup: int = 1) -> dict[str, float]:
    """Median images/s per pipeline over rotated rounds (round r starts with pipeline r mod k)."""
    # Each round reads `samples` items (the files reshuffled as often as needed): long enough that the
    # workers' ramp-up and drain at the ends of a pass do not dominate the fast pipelines.
    loaders = {k: DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=workers > 0,
                             sampler=RandomSampler(ds, num_samples=samples,
                                                   generator=torch.Generator().manual_seed(0)))
               for k, ds in pipelines.items()}
    names = list(loaders)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            t = timed_epoch(loaders[k], device)
            if r >= warmup:
                times[k].append(t)
    del loaders
    return {k: samples / statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for every pipeline (0: in-process)")
    ap.add_argument("--images", type=int, default=256, help="distinct JPEGs written")
    ap.add_argument("--samples", type=int, default=1024, help="images read per pipeline per round")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seg-images", type=int, default=8, help="Cityscapes-size pairs (0: skip segmentation)")
    ap.add_argument("--seg-rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", help="folder for the generated data (default: a temporary folder); reused if present")
    args = ap.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    cores = max(1, args.workers)
    tmp = None
    if args.data:
        base = Path(args.data)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ibnnet-bench-loader-")
        base = Path(tmp.name)
    src, small = base / "imagenet", base / f"imagenet-{SHRUNK_SIDE}"
    if not (src / "train").is_dir():
        stats = write_imagenet_like(src, args.images)
        print(f"wrote {stats['images']} JPEGs (q90, mean {stats['mean_w']:.0f}x{stats['mean_h']:.0f}, "
              f"{stats['mean_kb']:.0f} KB)")
    shrink_imagenet(src, small, short_side=SHRUNK_SIDE, workers=max(1, args.workers), progress=False)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, workers={args.workers}, batch={args.batch}, "
          f"device={device}, load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    rates = measure({
        "torchvision 224": torchvision_imagenet(src, 224),
        "ibnnet (float in workers) 224": ours(src, 224, normalize=True),
        "ibnnet 224": ours(src, 224),
        "torchvision 128": torchvision_imagenet(src, 128),
        f"ibnnet 128, shrunk copy (short side {SHRUNK_SIDE})": ours(small, 128),
    }, args.workers, args.batch, args.rounds, device, args.samples)
    base224, base128 = rates["torchvision 224"], rates["torchvision 128"]
    print(f"\nImageNet training pipeline, {args.samples} reads of {args.images} JPEGs per round, median of "
          f"{args.rounds} rotated rounds")
    print("| pipeline | images/s | per core | vs torchvision 224 | vs torchvision 128 |")
    print("|---|---|---|---|---|")
    for k, v in rates.items():
        print(f"| {k} | {v:.0f} | {v / cores:.0f} | {v / base224:.2f}x | {v / base128:.2f}x |")

    if args.seg_images > 0:
        seg = base / "cityscapes"
        if not (seg / "leftImg8bit").is_dir():
            write_cityscapes_like(seg, args.seg_images)
        raw = Cityscapes(seg, split="train")
        spec = DatasetSpec(name="bench", dataset="cityscapes", split="train")
        ours_seg = TransformedDataset(raw, build_transform(spec, "segmentation", AugmentConfig(), True))
        srates = measure({"PIL": PILCityscapes(raw), "ibnnet": ours_seg}, args.workers, 2, args.seg_rounds, device,
                         samples=args.seg_images)
        print(f"\nCityscapes-size training pipeline (2048x1024 PNG + label, scale 0.5-2, crop 512x1024, flip), "
              f"{args.seg_images} pairs, median of {args.seg_rounds} rounds")
        print("| pipeline | images/s | per core | vs PIL |")
        print("|---|---|---|---|")
        for k, v in srates.items():
            print(f"| {k} | {v:.2f} | {v / cores:.2f} | {v / srates['PIL']:.2f}x |")
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
