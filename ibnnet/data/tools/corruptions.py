"""``ibnnet data corrupt``: ImageNet-C made locally from an ImageNet val folder with ``imagecorruptions``.

The recipe of the benchmark's authors (hendrycks/robustness ``ImageNet-C/create_c/make_imagenet_c.py``): each
val image resized to 256 (shorter side, bilinear) and centre-cropped to 224 with torchvision's transforms,
corrupted, converted with ``np.uint8`` and saved as JPEG quality 85 (``optimize=True``) under
``<dst>/<corruption>/<severity>/<wnid>/<name>``. The corruption functions are bethgelab's ``imagecorruptions``
package, the authors' code packaged for any image size; its motion blur (also inside "snow") is a
reimplementation without ImageMagick, so a generated set is close to, not byte-identical with, the released
one: report numbers on the released ImageNet-C when comparing with papers (docs/datasets.md).

The 15 corruptions of the mCE are made by default; the 4 extras of the release (speckle noise, gaussian blur,
spatter, saturate: the authors' held-out validation corruptions, in ``imagecorruptions`` too) only on request
(``corruptions=``, ``--corruption NAME`` or ``--extras``), into the same folder. The settings marker calls a
set ``complete`` when the 15 are done, whatever the extras.

Reproducible and resumable: every output image draws its noise from NumPy's global RNG seeded by a hash of
(seed, corruption, severity, wnid/name), so it does not depend on the worker count, on the order, on a
restart or on how the work is split; files already written are skipped (writes are atomic);
``ibnnet_corrupt.json`` records the settings, and resuming with other settings is refused rather than mixing
two recipes in one folder.

Cost: about 6.4 CPU-seconds per val image for the 75 sets (4.8 of them in glass blur's per-pixel Python loop),
i.e. ~90 CPU-hours for the 50,000 images; the 20 sets of the four extras add about 0.15 CPU-second
per image (~2 CPU-hours). ``shard=(k, n)`` makes only every n-th class folder from the k-th,
so n SLURM array tasks can share the work (``ibnnet data corrupt ... --shard $SLURM_ARRAY_TASK_ID/n``); a last
run without a shard then finds every file done and marks the set complete.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
import time
import types
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

from ...errors import ConfigError, DataError, DataNotFoundError
from ...files import atomic_write_bytes, atomic_write_json, read_json
from ..datasets.imagenet import list_class_folders, list_images, select_fraction
from ..datasets.robustness import CORRUPTIONS, SEVERITIES, check_corruption_axes

MARKER = "ibnnet_corrupt.json"
FORMAT = 1


def _imagecorruptions():
    """``imagecorruptions.corrupt``, made to run on today's stack.

    Its last release (1.1.2, 2020) imports ``pkg_resources`` (gone from setuptools >= 81), passes
    ``multichannel=`` to scikit-image's ``gaussian`` (removed in scikit-image 0.21: glass blur fails) and uses
    ``np.float_`` (removed in NumPy 2: fog fails). The three are bridged here, in its module only, instead of
    pinning old versions of setuptools, scikit-image and NumPy for the whole environment; the arithmetic is
    unchanged (``channel_axis=-1`` is what ``multichannel=True`` meant, ``float_`` was ``float64``).
    """
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        shim = types.ModuleType("pkg_resources")
        # Called with a module name ("imagecorruptions.corruptions"): files beside that module, as pkg_resources did.
        shim.resource_filename = lambda module, name: str(Path(sys.modules[module].__file__).parent / name)
        sys.modules["pkg_resources"] = shim
    import numpy as np
    import imagecorruptions
    import imagecorruptions.corruptions as module
    if not getattr(module, "_ibnnet_compat", False):
        from skimage.filters import gaussian as skimage_gaussian

        def gaussian(image, *args, multichannel=None, **kwargs):
            if multichannel:
                kwargs.setdefault("channel_axis", -1)
            return skimage_gaussian(image, *args, **kwargs)

        class NumpyCompat(types.ModuleType):
            float_ = np.float64

            def __getattr__(self, name):
                return getattr(np, name)

        module.gaussian = gaussian
        module.np = NumpyCompat("numpy")
        module._ibnnet_compat = True
    return imagecorruptions.corrupt


def image_seed(seed: int, corruption: str, severity: int, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{corruption}\0{severity}\0{key}".encode(),
                                          digest_size=4).digest(), "little")


def preprocess(path: str | os.PathLike, resize: int = 256, crop: int = 224):
    """The authors' ``trn.Resize(256), trn.CenterCrop(224)`` on the PIL image; uint8 HxWx3 array."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import functional as F
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    return np.asarray(F.center_crop(F.resize(rgb, resize), crop))


def corrupt_image(array, corruption: str, severity: int, seed: int, quality: int = 85) -> bytes:
    """One corrupted image as JPEG bytes, its randomness fixed by ``seed``."""
    import numpy as np
    from PIL import Image
    corrupt = _imagecorruptions()
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        out = corrupt(array, corruption_name=corruption, severity=severity)
    finally:
        np.random.set_state(state)
    buf = io.BytesIO()
    Image.fromarray(np.uint8(out)).save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _dest_name(name: str) -> str:
    return name if name.lower().endswith((".jpeg", ".jpg")) else Path(name).stem + ".JPEG"


@dataclass
class CorruptSummary:
    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def _job(job) -> tuple[int, str, str]:
    src, targets, resize, crop, quality, seed = job
    written = 0
    try:
        array = preprocess(src, resize, crop)
        for out, corruption, severity, key in targets:
            atomic_write_bytes(Path(out), corrupt_image(array, corruption, severity,
                                                        image_seed(seed, corruption, severity, key), quality),
                               fsync=False)
            written += 1
        return written, src, ""
    except Exception as e:  # one unreadable image must not stop 3.75 million: reported at the end
        return written, src, f"{type(e).__name__}: {e}"


def _marker_tmp(name: str) -> bool:
    """The temporary file of a marker being written (files.atomic_output), e.g. by a shard started beside this one."""
    return name.startswith(f".{MARKER}.") and name.endswith(".tmp")


def _check_marker(dst: Path, settings: dict) -> dict:
    marker = read_json(dst / MARKER)
    if marker is None:
        others = [p.name for p in dst.iterdir() if not _marker_tmp(p.name)] if dst.is_dir() else []
        # Shards started together: another one may have renamed its marker into place (and made folders after
        # it) since the first read; the marker is always in place before anything else of a set is written.
        marker = read_json(dst / MARKER)
    if marker is None:
        if (dst / MARKER).exists():
            raise DataError(f"{dst / MARKER}: unreadable (not JSON); if this folder is a set made by 'ibnnet data "
                            "corrupt', delete the file and run again with the same settings")
        if others:
            raise DataError(f"{dst} exists, is not empty and has no {MARKER}: not a set made by 'ibnnet data "
                            f"corrupt' (it has {', '.join(sorted(others)[:3])}); choose an empty or new folder")
        return {}
    differ = {k: (marker.get(k), v) for k, v in settings.items() if marker.get(k) != v}
    if differ:
        detail = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in differ.items())
        raise DataError(f"{dst / MARKER}: this set was made with other settings ({detail}); resuming would mix "
                        "two recipes. Use the same settings or another folder")
    return marker


def corrupt_imagenet(src: str | os.PathLike, dst: str | os.PathLike, *, corruptions: Sequence[str] | None = None,
                     severities: Sequence[int] | None = None, fraction: float = 1.0, seed: int = 0,
                     resize: int = 256, crop: int = 224, quality: int = 85, workers: int = 1,
                     shard: tuple[int, int] | None = None, progress: bool = True) -> CorruptSummary:
    """Write ImageNet-C for the class folders of ``src`` (ImageNet val) to ``dst`` (see the module docstring).

    ``fraction`` < 1 keeps that share of each class's images (the seeded, nested subset of
    :func:`~ibnnet.data.datasets.imagenet.select_fraction`, the same images for every corruption). ``shard=(k, n)``:
    only the class folders ``k, k + n, k + 2n, ...`` (sorted), for n processes or array tasks side by side.
    """
    from tqdm import tqdm

    src, dst = Path(src), Path(dst)
    cs, ss = check_corruption_axes(corruptions, severities)
    if not 1 <= quality <= 100:
        raise ConfigError(f"--quality must be in 1..100, got {quality}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if not (32 <= crop <= resize):
        raise ConfigError(f"--crop must be >= 32 (imagecorruptions' minimum) and <= --resize, got {crop}/{resize}")
    if not 0 < fraction <= 1:
        raise ConfigError(f"--fraction must be in (0, 1], got {fraction}")
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ConfigError(f"--shard must be K/N with 0 <= K < N, got {shard[0]}/{shard[1]}")
    if not src.is_dir():
        raise DataNotFoundError(f"ImageNet val folder not found: {src} (expected {src}/<wnid>/*.JPEG)")
    classes = list_class_folders(src)
    if not classes:
        raise DataNotFoundError(f"{src} has no class folders (expected {src}/<wnid>/*.JPEG, the val sorted by class)")
    _imagecorruptions()   # fail early (not in 3.75 million workers) if the package is missing
    import imagecorruptions
    settings = {"format": FORMAT, "resize": resize, "crop": crop, "quality": quality, "seed": seed,
                "imagecorruptions": getattr(imagecorruptions, "__version__", "1.1.2")}
    marker = _check_marker(dst, settings)
    marker.update(settings, source=str(src.resolve()))
    marker.setdefault("done", [])
    # Written before any folder: a shard starting beside this one then finds the settings, not an unknown folder.
    dst.mkdir(parents=True, exist_ok=True)
    atomic_write_json(dst / MARKER, dict(marker, complete=False))

    summary = CorruptSummary()
    t0 = time.perf_counter()
    jobs = []
    for wnid in classes if shard is None else classes[shard[0]::shard[1]]:
        names = list_images(src / wnid)
        if fraction < 1:
            names = [names[i] for i in select_fraction([f"{wnid}/{n}" for n in names], fraction, seed)]
        outs = {}
        for c in cs:
            for s in ss:
                folder = dst / c / str(s) / wnid
                folder.mkdir(parents=True, exist_ok=True)
                existing = set()
                with os.scandir(folder) as it:
                    for e in it:
                        if e.name.startswith(".") and e.name.endswith(".tmp"):
                            Path(e.path).unlink(missing_ok=True)   # left by a killed run
                        else:
                            existing.add(e.name)
                outs[(c, s)] = existing
        for name in names:
            target = _dest_name(name)
            todo = []
            for (c, s), existing in outs.items():
                if target in existing:
                    summary.skipped += 1
                else:
                    todo.append((str(dst / c / str(s) / wnid / target), c, s, f"{wnid}/{name}"))
            if todo:
                jobs.append((str(src / wnid / name), todo, resize, crop, quality, seed))
    total = summary.skipped + sum(len(j[1]) for j in jobs)
    # forkserver, not fork: this process may already run threads (torch's OpenMP pool, OpenCV's, a progress
    # bar's), and a child forked while one of them held a lock waited on it forever (seen in the test suite)
    pool = get_context("forkserver").Pool(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        it = pool.imap_unordered(_job, jobs, chunksize=4) if pool else map(_job, jobs)
        with tqdm(total=total, initial=summary.skipped, desc="ImageNet-C", unit="img", disable=not progress,
                  smoothing=0.05) as bar:
            for written, path, err in it:
                if err:
                    summary.failed.append((path, err))
                summary.written += written
                bar.update(written or 0)
    finally:
        if pool is not None:
            pool.terminate()
    summary.seconds = time.perf_counter() - t0
    if shard is not None:   # a part of the work: the run without a shard records what is done
        return summary
    marker["done"] = sorted(set(marker["done"]) | ({f"{c}/{s}" for c in cs for s in ss} if not summary.failed
                                                   else set()))
    atomic_write_json(dst / MARKER, dict(marker, complete=not summary.failed and
                                         set(marker["done"]) >= {f"{c}/{s}" for c in CORRUPTIONS for s in SEVERITIES},
                                         fraction=max(fraction, marker.get("fraction", 0.0))))
    return summary


__all__ = ["MARKER", "CorruptSummary", "corrupt_image", "corrupt_imagenet", "preprocess"]
