"""A reduced-resolution copy of an ImageNet folder tree for low-resolution training (FFCV-style).

``ibnnet data shrink imagenet SRC DST --short-side N`` writes ``DST/<split>/<wnid>/<name>`` for every image
of ``SRC/<split>/<wnid>/``: same folders and file names (so labels and the sorted class order are
unchanged), each image resized so that its shorter side is ``N`` (aspect ratio kept) and re-encoded as
an RGB JPEG. What changes in the data is documented in ``data/README.md``; in short:

* Resampling: Pillow's JPEG draft mode (libjpeg's DCT-domain downscale, only while the image stays at
  least twice the target size, as ``Image.thumbnail`` does) then antialiased bilinear resize, the same
  triangle filter torchvision's ``Resize(antialias=True)`` uses in training.
* Re-encoding: baseline JPEG at ``quality`` (default 90, FFCV's and ImageNet's typical quality), 4:2:0.
  Images whose shorter side is already <= N are copied byte for byte when they are RGB or grey JPEGs
  (no second lossy encode); others (CMYK JPEGs, PNGs named .JPEG) are re-encoded at their size as RGB.
  Files with a non-JPEG extension get ``.JPEG`` instead.

Resumable: every file is written to a temporary name and renamed, so an existing destination file is
complete and is skipped on the next run. No fsync per image (1.28M of them would dominate the run time
on network file systems); the rename alone protects against a killed process, which is the case that
matters. ``DST/ibnnet_shrink.json`` records the settings and which splits are complete; the training
loader (``data.shrunk_short_side``) uses only a copy whose split is marked complete.
"""
from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from PIL import Image

from ...errors import ConfigError, DataError, DataNotFoundError
from ...files import atomic_write_bytes, atomic_write_json, read_json
from ..datasets.imagenet import SHRUNK_MARKER as MARKER, list_class_folders, list_images

log = logging.getLogger("ibnnet")

SPLITS = ("train", "val")
FORMAT = "ibnnet-shrink-v1"
RESAMPLE = "Pillow draft (DCT downscale while >= 2x target) + antialiased bilinear"


@dataclass
class ShrinkSummary:
    written: int = 0          # resized and re-encoded
    copied: int = 0           # already small enough: copied byte for byte
    skipped: int = 0          # present from an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def target_size(w: int, h: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the shorter side ``short_side`` (never enlarged), aspect ratio kept to the pixel."""
    s = min(w, h)
    if s <= short_side:
        return w, h
    if w <= h:
        return short_side, max(1, round(h * short_side / w))
    return max(1, round(w * short_side / h)), short_side


def dest_name(name: str) -> str:
    return name if name.lower().endswith((".jpeg", ".jpg")) else Path(name).stem + ".JPEG"


def _write_atomic(path: Path, data: bytes) -> None:
    # No fsync per image: a crash leaves no partial file and the copy is resumable; 1.28M fsyncs would cost
    # more than the re-encoding on network file systems.
    atomic_write_bytes(path, data, fsync=False)


def shrink_file(src: Path, dst: Path, short_side: int, quality: int = 90) -> str:
    """Write the reduced copy of one image; returns ``"written"`` or ``"copied"``."""
    with Image.open(src) as im:
        w, h = im.size
        size = target_size(w, h, short_side)
        if size == (w, h) and im.format == "JPEG" and im.mode in ("RGB", "L"):
            _write_atomic(dst, Path(src).read_bytes())
            return "copied"
        if size != (w, h):
            im.draft("RGB", (2 * size[0], 2 * size[1]))  # libjpeg scaled decode, still >= 2x the target
        rgb = im.convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, Image.BILINEAR)  # Pillow's bilinear is antialiased when it shrinks
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=quality)
    _write_atomic(dst, buf.getvalue())
    return "written"


def _job(args: tuple[str, str, int, int]) -> tuple[str, str, str]:
    src, dst, short_side, quality = args
    try:
        return shrink_file(Path(src), Path(dst), short_side, quality), src, ""
    except Exception as e:  # one unreadable file must not stop a 1.28M-image copy: reported at the end
        return "failed", src, f"{type(e).__name__}: {e}"


def _plan(src_split: Path, dst_split: Path) -> tuple[list[tuple[Path, Path]], int]:
    """(to do, already done): destination folders are created, stale temporaries removed."""
    todo, done = [], 0
    for wnid in list_class_folders(src_split):
        out = dst_split / wnid
        out.mkdir(parents=True, exist_ok=True)
        with os.scandir(out) as it:
            existing = set()
            for e in it:
                if e.name.endswith(".tmp") and e.name.startswith("."):
                    Path(e.path).unlink(missing_ok=True)  # left by a killed run
                else:
                    existing.add(e.name)
        for name in list_images(src_split / wnid):
            target = dest_name(name)
            if target in existing:
                done += 1
            else:
                todo.append((src_split / wnid / name, out / target))
    return todo, done


def _check_marker(dst: Path, short_side: int, quality: int) -> dict:
    marker = read_json(dst / MARKER)
    if marker is None:
        if dst.is_dir() and any(dst.iterdir()):
            raise DataError(f"{dst} exists, is not empty and has no {MARKER}: not a copy made by "
                                  f"'ibnnet data shrink'; choose an empty or new folder")
        return {}
    if marker.get("short_side") != short_side or marker.get("quality") != quality:
        raise DataError(f"{dst / MARKER}: this copy was made with short side {marker.get('short_side')}, "
                         f"quality {marker.get('quality')}; resuming with short side {short_side}, quality "
                         f"{quality} would mix two resolutions. Use the same settings or another folder")
    return marker


def shrink_imagenet(src: str | os.PathLike, dst: str | os.PathLike, short_side: int, quality: int = 90,
                    workers: int = 1, splits: tuple[str, ...] | None = None,
                    progress: bool = True) -> dict[str, ShrinkSummary]:
    """Copy ``src/<split>/<wnid>/*`` to ``dst`` at short side ``short_side`` (see the module docstring).

    ``splits``: default every one of train/val present under ``src``. Resumes a partial copy; a split is
    marked complete in ``dst/ibnnet_shrink.json`` only when all of its files were written.
    """
    from tqdm import tqdm

    src, dst = Path(src), Path(dst)
    if short_side < 16:
        raise ConfigError(f"--short-side must be >= 16 pixels, got {short_side}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"--quality must be in 1..100, got {quality}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if src.resolve() == dst.resolve():
        raise ConfigError(f"source and destination are the same folder: {src}")
    if splits is None:
        splits = tuple(s for s in SPLITS if (src / s).is_dir())
        if not splits:
            raise DataNotFoundError(f"{src} has neither train/ nor val/ (expected {src}/train/<wnid>/*.JPEG)")
    for s in splits:
        if s not in SPLITS:
            raise ConfigError(f"unknown split {s!r}; ImageNet has {SPLITS}")
        if not (src / s).is_dir():
            raise DataNotFoundError(f"ImageNet {s} folder not found: {src / s}")
    marker = _check_marker(dst, short_side, quality)
    marker.update(format=FORMAT, source=str(src.resolve()), short_side=short_side, quality=quality,
                  resample=RESAMPLE)
    marker.setdefault("splits", {})
    results: dict[str, ShrinkSummary] = {}
    pool = get_context("fork").Pool(workers) if workers > 1 else None
    try:
        for split in splits:
            t0 = time.perf_counter()
            todo, done = _plan(src / split, dst / split)
            summary = ShrinkSummary(skipped=done)
            marker["splits"][split] = {"images": done + len(todo), "complete": False}
            atomic_write_json(dst / MARKER, marker)
            jobs = [(str(a), str(b), short_side, quality) for a, b in todo]
            it = (pool.imap_unordered(_job, jobs, chunksize=16) if pool else map(_job, jobs))
            bar = tqdm(it, total=done + len(todo), initial=done, desc=f"shrink {split}", unit="img",
                       disable=not progress, smoothing=0.05)
            for status, path, err in bar:
                if status == "failed":
                    summary.failed.append((path, err))
                else:
                    setattr(summary, status, getattr(summary, status) + 1)
            bar.close()
            summary.seconds = time.perf_counter() - t0
            marker["splits"][split]["complete"] = summary.ok
            atomic_write_json(dst / MARKER, marker)
            results[split] = summary
    finally:
        if pool is not None:
            pool.terminate()
    return results




__all__ = ["MARKER", "ShrinkSummary", "dest_name", "shrink_file", "shrink_imagenet",
           "target_size"]
