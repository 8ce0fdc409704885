"""Procedurally generated two-domain datasets: a sanity benchmark, not the paper's data.

IBN-Net's claim is that instance normalization in early layers removes appearance variation
(colour, contrast, texture) so that a model trained in one domain (GTA5, game-engine renders)
transfers better to another (Cityscapes, photos). ImageNet, GTA5 and Cityscapes cannot be
downloaded everywhere, so this module renders small stand-ins that exercise the same mechanism
on a laptop CPU in minutes. Numbers obtained on them say whether the IN/BN machinery behaves as
expected; they are **not** a substitute for, nor comparable with, the paper's results.

Every sample exists in two appearance domains:

``"synthetic"``
    flat colours and clean, anti-aliased edges (the "game engine").
``"real"``
    the *same* scene with procedural texture on every region, a systematic colour cast,
    reduced contrast, a brightness offset, gamma, slight blur and sensor noise (the "camera").

Scene geometry, base colours and labels depend only on ``(seed, split, index)``; the domain
changes appearance only, so index ``i`` shows the identical scene (and has the identical label
or mask) in both domains. Appearance randomness depends on ``(seed, split, index)`` too, so
everything is deterministic: the same arguments give byte-identical images.

Two datasets:

* :class:`SyntheticShapes` -- classification of :data:`SHAPE_CLASSES`; position, size,
  rotation, object colour and background colour are random per index and colour is drawn
  independently of the class, so only the shape identifies it.
* :class:`SyntheticScenes` -- semantic segmentation of street-like scenes with
  :data:`SCENE_CLASSES`: sky above a horizon, a road in perspective at the bottom, sidewalks,
  buildings, trees, poles, people and cars; per-class colours vary per scene and per instance.

``num_samples=0`` selects :data:`DEFAULT_NUM_SAMPLES` for the split. The splits use disjoint
seed streams, so they do not share scenes.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

__all__ = [
    "SPLITS", "DOMAINS", "DEFAULT_NUM_SAMPLES", "SHAPE_CLASSES", "SCENE_CLASSES",
    "SyntheticShapes", "SyntheticScenes",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
DOMAINS: tuple[str, ...] = ("synthetic", "real")
#: Samples per split when ``num_samples=0``; sized so a ResNet-18 sees several epochs in a few CPU minutes.
DEFAULT_NUM_SAMPLES: dict[str, int] = {"train": 3000, "val": 500, "test": 500}

SHAPE_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "cross", "ring", "star", "crescent", "semicircle", "arrow", "bar",
)
SCENE_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "vegetation", "sky", "car", "person", "pole",
)
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, PERSON, POLE = range(len(SCENE_CLASSES))

# Stream ids inside one sample's seed: geometry must never depend on the domain, so the
# "real" camera draws from its own stream and cannot shift the geometry draws.
_GEOMETRY, _APPEARANCE = 0, 1
# Caches are capped in bytes so image_size=128 with a large num_samples cannot exhaust memory.
_CACHE_BYTES = 512 * 2**20


class _TwoDomainDataset(Dataset):
    """Shared machinery: argument checks, seed streams, the render cache, pickling.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; each has its own seed stream.
        domain: ``"synthetic"`` (flat) or ``"real"`` (textured, colour-shifted, noisy).
        num_samples: dataset length; 0 selects ``DEFAULT_NUM_SAMPLES[split]``.
        seed: base seed (>= 0); a different seed gives different scenes in every split.
        image_size: side of the square images in pixels (>= 16); geometry scales with it.
        transforms: optional callable applied as ``transforms(image, target)``
            (torchvision ``transforms.v2`` objects work and keep image and mask aligned).
        cache: keep rendered samples in memory (LRU, capped at 512 MiB per dataset).
    """

    _kind: int  # separates the seed streams of the two dataset types

    def __init__(
        self,
        split: str = "train",
        domain: str = "synthetic",
        num_samples: int = 0,
        seed: int = 0,
        image_size: int = 64,
        *,
        transforms: Callable[..., Any] | None = None,
        cache: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0 (0 = default), got {num_samples}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        self.split = split
        self.domain = domain
        self.num_samples = int(num_samples) or DEFAULT_NUM_SAMPLES[split]
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.transforms = transforms
        self.cache = cache
        self._cache: OrderedDict[int, tuple[torch.Tensor, Any]] = OrderedDict()
        per_sample = 4 * self.image_size**2  # image + mask, uint8
        self._cache_items = max(1, _CACHE_BYTES // per_sample)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, domain={self.domain!r}, "
                f"num_samples={self.num_samples}, seed={self.seed}, image_size={self.image_size})")

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._kind, SPLITS.index(self.split), index, stream])

    def _render(self, index: int) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def _wrap(self, image: torch.Tensor, target: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self!r}")
        return index

    def __getitem__(self, index: int):
        index = self._check_index(index)
        item = self._cache.get(index)
        if item is None:
            image, target = self._render(index)
            item = (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), target)
            if self.cache:
                self._cache[index] = item
                if len(self._cache) > self._cache_items:
                    self._cache.popitem(last=False)
        elif self.cache:
            self._cache.move_to_end(index)
        # Clones keep the cache immune to in-place edits by transforms or callers.
        image, target = self._wrap(item[0].clone(), item[1])
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def __getstate__(self) -> dict[str, Any]:
        # Workers re-render on demand; shipping the cache would only bloat the pickle.
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state


# --------------------------------------------------------------------------- shared helpers

def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in pixels, broadcastable to (size, size)."""
    c = np.arange(size, dtype=np.float32) + 0.5
    return c[:, None], c[None, :]


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 1) -> np.ndarray:
    """Smooth noise in roughly [-2, 2]: a random lattice, smoothstep-interpolated to (h, w, channels)."""
    lattice = rng.standard_normal((cells + 1, cells + 1, channels)).astype(np.float32)
    ys = (np.arange(h, dtype=np.float32) + 0.5) * (cells / h)
    xs = (np.arange(w, dtype=np.float32) + 0.5) * (cells / w)
    y0 = np.minimum(ys.astype(np.int64), cells - 1)
    x0 = np.minimum(xs.astype(np.int64), cells - 1)
    fy = ys - y0
    fx = xs - x0
    fy = (fy * fy * (3 - 2 * fy))[:, None, None]
    fx = (fx * fx * (3 - 2 * fx))[None, :, None]
    top = lattice[y0][:, x0] * (1 - fx) + lattice[y0][:, x0 + 1] * fx
    bottom = lattice[y0 + 1][:, x0] * (1 - fx) + lattice[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _fbm(rng: np.random.Generator, size: int, base_cells: int, octaves: int = 3, channels: int = 1) -> np.ndarray:
    """Fractal noise with unit-ish amplitude; cell counts are relative to the image so textures scale with it."""
    out = np.zeros((size, size, channels), np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        cells = min(base_cells * 2**o, size)
        out += amp * _value_noise(rng, size, size, cells, channels)
        norm += amp
        amp *= 0.5
    return out / norm


def _stripes(rng: np.random.Generator, size: int, cycles: tuple[float, float]) -> np.ndarray:
    """A sinusoidal grating with random orientation, phase and frequency (cycles per image)."""
    y, x = _grid(size)
    phi = rng.uniform(0, math.pi)
    f = rng.uniform(*cycles) * 2 * math.pi / size
    return np.sin(f * (x * math.cos(phi) + y * math.sin(phi)) + rng.uniform(0, 2 * math.pi))[..., None]


def _blur(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge padding: a slightly soft lens."""
    p = np.pad(img, ((1, 1), (0, 0), (0, 0)), mode="edge")
    img = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
    p = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
    return 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]


def _camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """The "real" domain's photometric pipeline on a float HxWx3 image in [0, 1].

    The shift is systematic (every real image is warmer, flatter and brighter than any
    synthetic one), with per-image jitter so the domain is a distribution, not one filter.
    """
    mean = img.mean(axis=(0, 1), keepdims=True)
    img = mean + rng.uniform(0.45, 0.7) * (img - mean)            # low contrast
    cast = np.array([1.0, 0.88, 0.68], np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    offset = np.array([0.16, 0.12, 0.08], np.float32) + rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    img = img * cast + offset                                      # warm cast, lifted blacks
    img = np.clip(img, 0, 1) ** rng.uniform(0.75, 1.0)           # brighter mid-tones
    img = _blur(img)
    img = img + rng.uniform(0.01, 0.02) * rng.standard_normal(img.shape, dtype=np.float32)
    return img


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- shapes

def _box(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    dx = np.abs(u) - a
    dy = np.abs(v) - b
    return np.hypot(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0)


def _convex(u: np.ndarray, v: np.ndarray, verts: list[tuple[float, float]]) -> np.ndarray:
    """Signed distance (exact near edges, a lower bound near outer corners) to a CCW convex polygon."""
    d = None
    n = len(verts)
    for k in range(n):
        (x0, y0), (x1, y1) = verts[k], verts[(k + 1) % n]
        ex, ey = x1 - x0, y1 - y0
        norm = math.hypot(ex, ey)
        nx, ny = ey / norm, -ex / norm  # outward for CCW vertices in a y-up frame
        e = (u - x0) * nx + (v - y0) * ny
        d = e if d is None else np.maximum(d, e)
    return d


def _regular(n: int, radius: float, phase: float = math.pi / 2) -> list[tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


_TRIANGLE = _regular(3, 1.0)
_ARROW_HEAD = [(1.0, 0.0), (0.15, 0.6), (0.15, -0.6)]


def _star(u: np.ndarray, v: np.ndarray, points: int = 5, inner: float = 0.42) -> np.ndarray:
    # Fold every point into the half-sector between an outer tip (angle 0) and an inner corner.
    sector = math.pi / points
    ang = np.abs(np.mod(np.arctan2(v, u) + sector, 2 * sector) - sector)
    rho = np.hypot(u, v)
    px, py = rho * np.cos(ang), rho * np.sin(ang)
    ex, ey = inner * math.cos(sector) - 1.0, inner * math.sin(sector)
    norm = math.hypot(ex, ey)
    return ((px - 1.0) * ey - py * ex) / norm


# Each maps unit-radius local coordinates to a signed distance in the same units; all shapes
# span roughly the unit disc so size does not give the class away.
_SHAPE_SDF: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: np.hypot(u, v) - 0.85,
    "square": lambda u, v: _box(u, v, 0.7, 0.7),
    "triangle": lambda u, v: _convex(u, v + 0.2, _TRIANGLE),
    "cross": lambda u, v: np.minimum(_box(u, v, 0.95, 0.3), _box(u, v, 0.3, 0.95)),
    "ring": lambda u, v: np.abs(np.hypot(u, v) - 0.68) - 0.24,
    "star": _star,
    "crescent": lambda u, v: np.maximum(np.hypot(u, v) - 0.92, 0.72 - np.hypot(u - 0.5, v)),
    "semicircle": lambda u, v: np.maximum(np.hypot(u, v + 0.35) - 0.95, -(v + 0.35)),
    "arrow": lambda u, v: np.minimum(_box(u + 0.35, v, 0.55, 0.2), _convex(u, v, _ARROW_HEAD)),
    "bar": lambda u, v: _box(u, v, 0.98, 0.3),
}
assert tuple(_SHAPE_SDF) == SHAPE_CLASSES


def _contrasting_pair(rng: np.random.Generator, min_dist: float = 0.45) -> tuple[np.ndarray, np.ndarray]:
    """Object and background colours far enough apart that the shape is always visible."""
    while True:
        fg, bg = rng.uniform(0, 1, (2, 3)).astype(np.float32)
        if np.linalg.norm(fg - bg) >= min_dist and abs(fg.mean() - bg.mean()) >= 0.12:
            return fg, bg


class SyntheticShapes(_TwoDomainDataset):
    """Classify one rendered shape per image into :data:`SHAPE_CLASSES`.

    ``dataset[i]`` is ``(tv_tensors.Image uint8 [3, H, W], int label)``. The label, position,
    size, rotation and both colours depend only on ``(seed, split, i)``; ``domain`` selects
    flat rendering (``"synthetic"``) or the textured, colour-shifted, noisy ``"real"`` look.
    ``transforms``, when given, is called as ``transforms(image, label)``.
    """

    _kind = 0
    classes = SHAPE_CLASSES
    num_classes = len(SHAPE_CLASSES)

    def label(self, index: int) -> int:
        """The label without rendering (cheap; useful for class-balanced samplers)."""
        return int(self._rng(self._check_index(index), _GEOMETRY).integers(self.num_classes))

    def _render(self, index: int) -> tuple[np.ndarray, int]:
        g = self._rng(index, _GEOMETRY)
        label = int(g.integers(self.num_classes))
        s = self.image_size
        r = g.uniform(0.2, 0.34) * s
        cx, cy = g.uniform(r, s - r, 2)
        theta = g.uniform(0, 2 * math.pi)
        fg, bg = _contrasting_pair(g)

        y, x = _grid(s)
        dx, dy = x - cx, cy - y  # y-up local frame so polygon vertex order stays CCW
        c, sn = math.cos(theta), math.sin(theta)
        u = (c * dx + sn * dy) / r
        v = (-sn * dx + c * dy) / r
        # Signed distance in pixels -> 1-pixel anti-aliased coverage: clean edges at any image_size.
        alpha = np.clip(0.5 - _SHAPE_SDF[SHAPE_CLASSES[label]](u, v) * r, 0, 1)[..., None]

        if self.domain == "synthetic":
            return _to_uint8(bg + (fg - bg) * alpha), label

        a = self._rng(index, _APPEARANCE)
        # Object and background get unrelated textures so texture edges compete with the shape's edge.
        # Amplitudes are calibrated: twice as strong makes the real domain near-chance for every model.
        bg_tex = bg * (1 + 0.175 * _fbm(a, s, 3, channels=3)) + 0.06 * _stripes(a, s, (4, 10))
        fg_tex = fg * (1 + 0.175 * _fbm(a, s, 6, channels=1)) + 0.05 * _stripes(a, s, (6, 14))
        img = bg_tex + (fg_tex - bg_tex) * alpha
        return _to_uint8(_camera(a, img)), label

    def _wrap(self, image: torch.Tensor, target: int) -> tuple[tv_tensors.Image, int]:
        return tv_tensors.Image(image), target


# --------------------------------------------------------------------------- scenes

def _jitter(rng: np.random.Generator, base: tuple[float, float, float], spread: float) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-spread, spread, 3).astype(np.float32), 0, 1)


_BUILDING_PALETTE = ((0.62, 0.32, 0.25), (0.78, 0.70, 0.56), (0.55, 0.55, 0.57), (0.42, 0.47, 0.55),
                     (0.85, 0.82, 0.75), (0.35, 0.30, 0.28))


class SyntheticScenes(_TwoDomainDataset):
    """Semantic segmentation of street-like scenes into :data:`SCENE_CLASSES`.

    ``dataset[i]`` is ``(tv_tensors.Image uint8 [3, H, W], tv_tensors.Mask uint8 [H, W])`` with
    mask values in ``[0, num_classes)``. Layout has street structure (sky on top, road in
    perspective at the bottom, objects scaled by depth); per-class colours vary per scene and
    per instance (cars and people can be any colour), so colour alone does not give the class.
    ``transforms``, when given, is called as ``transforms(image, mask)``.
    """

    _kind = 1
    classes = SCENE_CLASSES
    num_classes = len(SCENE_CLASSES)

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        g = self._rng(index, _GEOMETRY)
        s = self.image_size
        y, x = _grid(s)
        y = np.broadcast_to(y / s, (s, s))  # normalised [0, 1] coordinates, y down
        x = np.broadcast_to(x / s, (s, s))
        label = np.full((s, s), SKY, np.uint8)
        color = np.empty((s, s, 3), np.float32)

        def paint(mask: np.ndarray, cls: int, rgb: np.ndarray) -> None:
            label[mask] = cls
            color[mask] = rgb

        if g.random() < 0.6:
            sky = _jitter(g, (0.50, 0.68, 0.92), 0.1)
        else:  # overcast
            sky = np.full(3, g.uniform(0.62, 0.85), np.float32) + g.uniform(-0.03, 0.03, 3).astype(np.float32)
        color[:] = sky + (y[..., None] * 0.15)  # paler towards the horizon

        horizon = g.uniform(0.4, 0.52)
        van_x = g.uniform(0.35, 0.65)
        bottom_x = g.uniform(0.35, 0.65)
        road_w0, road_w1 = g.uniform(0.02, 0.04), g.uniform(0.28, 0.45)
        walk_w0, walk_w1 = g.uniform(0.01, 0.03), g.uniform(0.15, 0.3)

        def depth(yy):  # 0 at the horizon, 1 at the bottom edge
            return np.clip((yy - horizon) / (1 - horizon), 0, 1)

        def road_centre(t):
            return van_x + (bottom_x - van_x) * t

        def road_half(t):
            return road_w0 + (road_w1 - road_w0) * t

        def walk_outer(t):
            return road_half(t) + walk_w0 + (walk_w1 - walk_w0) * t

        # Behind the kerb: bushes at street level where the facades leave gaps.
        paint(y > horizon - g.uniform(0.0, 0.05), VEGETATION, _jitter(g, (0.25, 0.42, 0.2), 0.1))
        # Buildings: facades from a random roofline down to the kerb (the ground overwrites below it).
        bx = g.uniform(-0.1, 0.0)
        while bx < 1.0:
            w = g.uniform(0.12, 0.35)
            if g.random() < 0.85:
                top = g.uniform(0.03, horizon - 0.1)
                rgb = _jitter(g, _BUILDING_PALETTE[g.integers(len(_BUILDING_PALETTE))], 0.08)
                m = (x >= bx) & (x < bx + w) & (y >= top)
                paint(m, BUILDING, rgb)
                # Windows are geometry (same in both domains) and still "building".
                px, py = g.uniform(0.04, 0.07), g.uniform(0.05, 0.09)
                win = m & (np.mod(x - bx - 0.01, px) < px * 0.5) & (np.mod(y - top - 0.02, py) < py * 0.5)
                if win.any():
                    color[win] = _jitter(g, (0.2, 0.24, 0.3), 0.08)
            bx += w + (g.uniform(0.03, 0.12) if g.random() < 0.4 else 0.0)

        # Vegetation: tree crowns with trunks in front of the facades.
        for _ in range(g.integers(2, 6)):
            tx = g.uniform(0, 1)
            ty = g.uniform(horizon - 0.25, horizon - 0.05)
            rx, ry = g.uniform(0.06, 0.14), g.uniform(0.06, 0.14)
            rgb = _jitter(g, (0.22, 0.45, 0.18), 0.1)
            crown = ((x - tx) / rx) ** 2 + ((y - ty) / ry) ** 2 < 1
            trunk = (np.abs(x - tx) < 0.012) & (y > ty) & (y < horizon + 0.05)
            paint(crown | trunk, VEGETATION, rgb)

        # Ground in perspective.
        t = depth(y)
        off = np.abs(x - road_centre(t))
        below = y > horizon
        paint(below & (off < walk_outer(t)), SIDEWALK, _jitter(g, (0.62, 0.6, 0.56), 0.1))
        paint(below & (off < road_half(t)), ROAD, _jitter(g, (0.33, 0.33, 0.35), 0.07))

        # Things stand on the ground; draw far to near so nearer ones occlude.
        things = []
        for _ in range(g.integers(1, 4)):
            things.append(("pole", g.uniform(0.25, 0.95), g.choice((-1, 1))))
        for _ in range(g.integers(1, 5)):
            things.append(("person", g.uniform(0.3, 0.95), g.choice((-1, 1))))
        for _ in range(g.integers(1, 4)):
            things.append(("car", g.uniform(0.2, 0.95), g.choice((-1, 1))))
        params = [(kind, td, side, g.random(), g.random()) for kind, td, side in things]
        for kind, td, side, j1, j2 in sorted(params, key=lambda p: p[1]):
            base = horizon + td * (1 - horizon)
            cx = road_centre(td)
            scale = 0.15 + 0.85 * td  # apparent size grows towards the viewer
            if kind == "pole":
                px = cx + side * (road_half(td) + (0.1 + 0.3 * j1) * (walk_outer(td) - road_half(td)))
                hw = max(0.012 * scale, 0.6 / s)
                m = (np.abs(x - px) < hw) & (y <= base) & (y > base - 0.6 * scale)
                paint(m, POLE, _jitter(g, (0.3, 0.3, 0.32), 0.1))
            elif kind == "person":
                px = cx + side * (road_half(td) + (0.25 + 0.6 * j1) * (walk_outer(td) - road_half(td)))
                h = (0.22 + 0.06 * j2) * scale
                body = (((x - px) / (0.12 * h + 0.5 / s)) ** 2 + ((y - (base - 0.4 * h)) / (0.42 * h)) ** 2) < 1
                head = (x - px) ** 2 + (y - (base - 0.88 * h)) ** 2 < (0.11 * h + 0.3 / s) ** 2
                paint(body, PERSON, g.uniform(0.05, 0.9, 3).astype(np.float32))
                paint(head, PERSON, _jitter(g, (0.75, 0.58, 0.45), 0.15))
            else:
                px = cx + side * road_half(td) * (0.2 + 0.35 * j1)
                w = road_half(td) * (0.75 + 0.3 * j2)
                h = 0.45 * w
                rgb = g.uniform(0.05, 0.95, 3).astype(np.float32)
                body = (np.abs(x - px) < w / 2) & (y <= base) & (y > base - 0.6 * h)
                cabin = (np.abs(x - px) < w * 0.32) & (y <= base - 0.55 * h) & (y > base - h)
                paint(body | cabin, CAR, rgb)
                glass = cabin & (y > base - 0.9 * h) & (np.abs(x - px) < w * 0.27)
                color[glass] = _jitter(g, (0.25, 0.3, 0.38), 0.06)

        if self.domain == "synthetic":
            return _to_uint8(color), label

        a = self._rng(index, _APPEARANCE)
        # Per-class textures: coarse noise for smooth surfaces, fine noise for foliage,
        # gratings for man-made ones; each class gets its own phase so texture edges do not
        # line up with class edges more than they would in a photo.
        tex = np.zeros((s, s, 1), np.float32)
        for cls, cells, amp, stripe in (
            (ROAD, 8, 0.25, 0.0), (SIDEWALK, 4, 0.2, 0.12), (BUILDING, 3, 0.25, 0.1),
            (VEGETATION, 12, 0.45, 0.0), (SKY, 2, 0.15, 0.0), (CAR, 2, 0.15, 0.08),
            (PERSON, 6, 0.2, 0.1), (POLE, 4, 0.15, 0.0),
        ):
            m = label == cls
            if not m.any():
                continue
            layer = amp * _fbm(a, s, cells)
            if stripe:
                layer = layer + stripe * _stripes(a, s, (6, 16))
            tex[m] = layer[m]
        img = color * (1 + tex)
        # A low-frequency illumination field: shadows and vignetting the renderer does not have.
        img = img * (1 + 0.2 * _fbm(a, s, 2, octaves=1))
        return _to_uint8(_camera(a, img)), label

    def _wrap(self, image: torch.Tensor, target: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        return tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(target.copy()))
