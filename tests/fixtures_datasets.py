"""Writers of tiny dataset folders in the real on-disk formats (PNG/JPEG/split.mat), for tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

# Every Cityscapes label id that fits in a byte, plus 255 (a wrapped -1 / ignore).
ALL_LABEL_VALUES = list(range(34)) + [255]

# Two palette indices with the same colour: colour-based mapping cannot tell road (7) from sidewalk (8).
COLLIDING_IDS = (7, 8)


def all_ids_label(h: int = 5, w: int = 8, shift: int = 0) -> np.ndarray:
    """A uint8 label map containing every value of ALL_LABEL_VALUES (needs h * w >= 35)."""
    values = np.array(ALL_LABEL_VALUES, dtype=np.uint8)
    flat = np.resize(np.roll(values, shift), h * w)
    return flat.reshape(h, w)


def rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_cityscapes(
    root: Path,
    layout: str = "official",
    splits: dict[str, dict[str, int]] | None = None,
    size: tuple[int, int] = (8, 5),
    labels_for: tuple[str, ...] = ("train", "val"),
) -> dict[str, list[tuple[Path, Path | None]]]:
    """Write ``leftImg8bit``/``gtFine`` trees; returns split -> [(image, label or None)] in sorted order."""
    splits = splits or {"train": {"aachen": 3, "bochum": 2}, "val": {"frankfurt": 2}, "test": {"berlin": 1}}
    w, h = size
    img_root = root / "leftImg8bit" if layout == "official" else root / "leftImg8bit_trainvaltest" / "leftImg8bit"
    lab_root = root / "gtFine" if layout == "official" else root / "gtFine_trainvaltest" / "gtFine"
    out: dict[str, list[tuple[Path, Path | None]]] = {}
    k = 0
    for split, cities in splits.items():
        out[split] = []
        for city, n in sorted(cities.items()):
            for i in range(n):
                stem = f"{city}_{i:06d}_{19 + i:06d}"
                img = img_root / split / city / f"{stem}_leftImg8bit.png"
                img.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rgb(h, w, k)).save(img)
                label = None
                if split in labels_for:
                    label = lab_root / split / city / f"{stem}_gtFine_labelIds.png"
                    label.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(all_ids_label(h, w, shift=k)).save(label)  # 2-D uint8 -> mode "L"
                out[split].append((img, label))
                k += 1
    return out


def gta5_palette() -> list[int]:
    """768-entry palette: distinct colours per index except the deliberately colliding pair."""
    pal = []
    for i in range(256):
        pal += [(37 * i) % 256, (91 * i + 13) % 256, (173 * i + 29) % 256]
    a, b = COLLIDING_IDS
    pal[3 * b: 3 * b + 3] = pal[3 * a: 3 * a + 3]
    return pal


def write_palette_label(path: Path, ids: np.ndarray) -> None:
    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
    im.putpalette(gta5_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def write_gta5(root: Path, n: int = 8, size: tuple[int, int] = (8, 5)) -> list[str]:
    """Write ``images/NNNNN.png`` and palette ``labels/NNNNN.png`` for frames 1..n; returns the stems."""
    w, h = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    stems = []
    for i in range(1, n + 1):
        stem = f"{i:05d}"
        Image.fromarray(rgb(h, w, 100 + i)).save(root / "images" / f"{stem}.png")
        write_palette_label(root / "labels" / f"{stem}.png", all_ids_label(h, w, shift=i))
        stems.append(stem)
    return stems


def write_split_mat(root: Path, train: list[int], val: list[int], test: list[int]) -> Path:
    """The official format: 1-based frame numbers as column vectors."""
    path = root / "split.mat"
    scipy.io.savemat(
        path,
        {k: np.asarray(v, dtype=np.float64).reshape(-1, 1) for k, v in
         (("trainIds", train), ("valIds", val), ("testIds", test))},
    )
    return path


def write_jpeg(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if mode is not None:
        im = im.convert(mode)
    im.save(path, format="JPEG", quality=95)


def write_imagenet(root: Path, split: str, wnids: list[str], per_class: int, size: tuple[int, int] = (20, 16)) -> None:
    """Class folders of small smooth JPEGs (smooth so JPEG round trips stay close)."""
    w, h = size
    for c, wnid in enumerate(wnids):
        for i in range(per_class):
            arr = np.zeros((h, w, 3), np.uint8)
            arr[..., 0] = 40 + 10 * c
            arr[..., 1] = 60 + 5 * i
            arr[..., 2] = 120
            write_jpeg(root / split / wnid / f"{wnid}_{i}.JPEG", arr)
