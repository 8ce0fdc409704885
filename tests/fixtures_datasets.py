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


def write_png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG (3 channels: colour type 2, or grey) as SYNTHIA's GT/LABELS files are; PIL cannot write these."""
    import struct
    import zlib
    arr = np.asarray(arr, dtype=">u2")
    h, w = arr.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))   # filter type 0 per row
    header = struct.pack(">IIBBBBB", w, h, 16, 2 if arr.ndim == 3 else 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) +
                     chunk(b"IEND", b""))


def write_bdd100k(root: Path, splits: dict[str, int] | None = None, size: tuple[int, int] = (8, 5)) -> None:
    """``images/10k/<split>/*.jpg`` and 8-bit train-id masks ``labels/sem_seg/masks/<split>/*.png``
    (every train id, 255, and one out-of-range value 19)."""
    w, h = size
    values = np.array(list(range(20)) + [255], dtype=np.uint8)
    for split, n in (splits or {"train": 3, "val": 2}).items():
        for i in range(n):
            name = f"{split[0]}{i:04d}abcd-{i:04d}"
            img = root / "images" / "10k" / split / f"{name}.jpg"
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb(h, w, i)).save(img, quality=90)
            mask = root / "labels" / "sem_seg" / "masks" / split / f"{name}.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.resize(np.roll(values, i), h * w).reshape(h, w)).save(mask)


def write_mapillary(root: Path, version: str = "v1.2", splits: dict[str, int] | None = None,
                    size: tuple[int, int] = (12, 9)) -> None:
    """A Mapillary Vistas release: images, palette labels holding every v1.2 class id 0..65, config json(s)."""
    import json
    w, h = size
    values = np.arange(66, dtype=np.uint8)
    cfg = {"labels": [{"name": f"class-{i}", "readable": f"Class {i}", "color": [i, 2 * i, 3 * i]}
                      for i in range(66)]}
    if version == "v1.2":
        (root / "config.json").parent.mkdir(parents=True, exist_ok=True)
        (root / "config.json").write_text(json.dumps(cfg))
    else:
        root.mkdir(parents=True, exist_ok=True)
        (root / "config_v1.2.json").write_text(json.dumps(cfg))
        (root / "config_v2.0.json").write_text(json.dumps({"labels": cfg["labels"] + cfg["labels"][:58]}))
    for split, n in (splits or {"training": 2, "validation": 2}).items():
        for i in range(n):
            img = root / split / "images" / f"key{i:03d}.jpg"
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb(h, w, 50 + i)).save(img, quality=90)
            ids = np.resize(np.roll(values, 7 * i), h * w).reshape(h, w)
            labels = root / split / ("labels" if version == "v1.2" else "v1.2/labels")
            write_palette_label(labels / f"key{i:03d}.png", ids)
            if version == "v2.0":   # the 124-class labels, which the reader must not read
                write_palette_label(root / split / "v2.0" / "labels" / f"key{i:03d}.png", (ids + 58) % 124)


def write_synthia(root: Path, n: int = 3, size: tuple[int, int] = (8, 5)) -> None:
    """``RGB/NNNNNNN.png`` and 16-bit 3-channel ``GT/LABELS/NNNNNNN.png`` holding class ids 0..22 (plus
    instance ids in channel 1 that must not be read)."""
    w, h = size
    values = np.arange(23, dtype=np.uint16)
    for i in range(n):
        stem = f"{i:07d}"
        img = root / "RGB" / f"{stem}.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb(h, w, 90 + i)).save(img)
        label = np.zeros((h, w, 3), dtype=np.uint16)
        label[..., 0] = np.resize(np.roll(values, i), h * w).reshape(h, w)
        label[..., 1] = 1000 + i   # instance ids above 255: a reader that took 8 bits or channel 1 would be wrong
        write_png16(root / "GT" / "LABELS" / f"{stem}.png", label)
