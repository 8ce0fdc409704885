"""Drawing the built-in data: shapes and street scenes in two appearance domains (numpy, no I/O).

:mod:`ibnnet.data.datasets.synthetic` wraps these into datasets (seeds, splits, caching, tensors); what the two domains
are and why is documented there. Each function draws from ``rng(stream)``: stream :data:`GEOMETRY` decides the
scene and its labels, :data:`APPEARANCE` only the "real" camera, so the domain never shifts the geometry.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

SHAPE_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "cross", "ring", "star", "crescent", "semicircle", "arrow", "bar",
)
SCENE_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "vegetation", "sky", "car", "person", "pole",
)
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, PERSON, POLE = range(len(SCENE_CLASSES))

# Stream ids inside one sample's seed: geometry must never depend on the domain, so the
# "real" camera draws from its own stream and cannot shift the geometry draws.
GEOMETRY, APPEARANCE = 0, 1
Rng = Callable[[int], np.random.Generator]


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


def render_shape(rng: Rng, size: int, domain: str) -> tuple[np.ndarray, int]:
    """One shape image (HxWx3 uint8) and its class index."""
    g = rng(GEOMETRY)
    label = int(g.integers(len(SHAPE_CLASSES)))
    s = size
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

    if domain == "synthetic":
        return _to_uint8(bg + (fg - bg) * alpha), label

    a = rng(APPEARANCE)
    # Object and background get unrelated textures so texture edges compete with the shape's edge.
    # Amplitudes are calibrated: twice as strong makes the real domain near-chance for every model.
    bg_tex = bg * (1 + 0.175 * _fbm(a, s, 3, channels=3)) + 0.06 * _stripes(a, s, (4, 10))
    fg_tex = fg * (1 + 0.175 * _fbm(a, s, 6, channels=1)) + 0.05 * _stripes(a, s, (6, 14))
    img = bg_tex + (fg_tex - bg_tex) * alpha
    return _to_uint8(_camera(a, img)), label


# --------------------------------------------------------------------------- scenes

def _jitter(rng: np.random.Generator, base: tuple[float, float, float], spread: float) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-spread, spread, 3).astype(np.float32), 0, 1)


_BUILDING_PALETTE = ((0.62, 0.32, 0.25), (0.78, 0.70, 0.56), (0.55, 0.55, 0.57), (0.42, 0.47, 0.55),
                     (0.85, 0.82, 0.75), (0.35, 0.30, 0.28))


def render_scene(rng: Rng, size: int, domain: str) -> tuple[np.ndarray, np.ndarray]:
    """One street scene (HxWx3 uint8) and its label mask (HxW uint8 class indices)."""
    g = rng(GEOMETRY)
    s = size
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

    if domain == "synthetic":
        return _to_uint8(color), label

    a = rng(APPEARANCE)
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
