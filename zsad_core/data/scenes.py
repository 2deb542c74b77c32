"""Procedural drawing for :mod:`zsad_core.data.synthetic`: textures, objects and defects.

Everything is float32 RGB in [0, 1] on a :class:`Canvas` of any (height, width); sizes are in
pixels scaled by the shorter side ``S``, so a sample looks the same at 64 and at 512 pixels (up to
detail). Each scene draws from its own random stream (``rng``); a structural defect (a missing or
bent part) is drawn by the scene itself from a separate stream (``drng``), so the defect-free and
the defective rendering of one sample share every other random choice. Surface defects (scratch,
crack, hole, stain, contamination, colour shift) are painted over a finished scene by
:func:`paint_defect` and return their opacity, whose ``>= 0.5`` part is the defect's footprint.

The shading ideas (value noise, height fields lit by Lambert + Blinn-Phong, anti-aliased signed
distances, twill threads, growth rings, glazed tiles with grout, brushed steel washers, circuit
boards with pads and parts) follow ``assets/make_assets.py``; here every parameter is random.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

F = np.float32


# ------------------------------------------------------------------------------------------ tools
@dataclass
class Canvas:
    """Pixel-centre coordinates (``x`` right, ``y`` down, origin at the image centre) and the light."""

    h: int
    w: int
    x: np.ndarray
    y: np.ndarray
    light: np.ndarray  # unit vector towards the light (x, y, z)

    @property
    def s(self) -> float:
        """The shorter side in pixels: the unit of every size."""
        return float(min(self.h, self.w))

    @classmethod
    def make(cls, h: int, w: int, rng: np.random.Generator) -> Canvas:
        y, x = np.mgrid[0:h, 0:w].astype(F)
        azimuth = rng.uniform(-np.pi, np.pi)
        elevation = rng.uniform(0.75, 1.15)
        light = np.array(
            [np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation), np.sin(elevation)], F
        )
        return cls(h, w, x + F(0.5 - w / 2), y + F(0.5 - h / 2), light)

    def frame(self, angle: float, cx: float = 0.0, cy: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates rotated by ``angle`` (radians) about (cx, cy) pixels from the centre."""
        c, s = F(np.cos(angle)), F(np.sin(angle))
        dx, dy = self.x - F(cx), self.y - F(cy)
        return c * dx + s * dy, -s * dx + c * dy


def smoothstep(e0: float, e1: float, v: np.ndarray) -> np.ndarray:
    t = np.clip((v - F(e0)) / F(e1 - e0), 0, 1)
    return t * t * (F(3) - F(2) * t)


def cover(sd: np.ndarray) -> np.ndarray:
    """Anti-aliased inside-ness from a signed distance in pixels (negative inside)."""
    return np.clip(F(0.5) - sd, 0, 1)


def mix(base: np.ndarray, paint, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return base * (F(1) - a) + np.asarray(paint, F) * a


def noise(rng: np.random.Generator, c: Canvas, cells: float, aspect: float = 1.0) -> np.ndarray:
    """Smooth value noise in [0, 1] with about ``cells`` random values across the shorter side."""
    cy = max(1, round(cells * c.h / c.s))
    cx = max(1, round(cells * aspect * c.w / c.s))
    lattice = rng.random((cy + 1, cx + 1), dtype=F)
    out = np.asarray(Image.fromarray(lattice, "F").resize((c.w, c.h), Image.Resampling.BICUBIC))
    return np.clip(out, 0, 1)


def fbm(rng: np.random.Generator, c: Canvas, cells: float, octaves: int = 3) -> np.ndarray:
    total = np.zeros((c.h, c.w), F)
    for k in range(octaves):
        total += noise(rng, c, cells * 2**k) * F(0.5**k)
    lo, hi = float(total.min()), float(total.max())
    return (total - F(lo)) / F(max(hi - lo, 1e-6))


def blur(field: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(field, max(float(sigma), 0.3), mode="nearest")


def lookup(table: np.ndarray, coord: np.ndarray) -> np.ndarray:
    """1-D noise: ``table`` (random values at integer coordinates) interpolated at ``coord`` (wraps)."""
    n = len(table)
    return (
        np.interp(np.mod(coord, n).ravel(), np.arange(n + 1), np.append(table, table[0])).astype(F).reshape(coord.shape)
    )


def shade(c: Canvas, height: np.ndarray, shininess: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Lambert term (1 on a flat surface) and Blinn-Phong highlight of a height field (pixels)."""
    dy, dx = np.gradient(height)
    nz = 1.0 / np.sqrt(dx * dx + dy * dy + 1)
    lx, ly, lz = c.light
    diffuse = np.clip((-dx * lx - dy * ly + lz) * nz / lz, 0, 2.5).astype(F)
    if shininess <= 0:
        return diffuse, np.zeros_like(height)
    half = c.light + np.array([0, 0, 1], F)
    half /= np.linalg.norm(half)
    spec = np.clip((-dx * half[0] - dy * half[1] + half[2]) * nz, 0, 1) ** shininess
    return diffuse, spec.astype(F)


def box_sd(u: np.ndarray, v: np.ndarray, hx: float, hy: float, r: float = 0.0) -> np.ndarray:
    """Signed distance to a centred box of half sizes (hx, hy) with corner radius r."""
    qx, qy = np.abs(u) - F(hx - r), np.abs(v) - F(hy - r)
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - F(r)


def hex_sd(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Signed distance to a regular hexagon with inradius r (flat sides top and bottom)."""
    k = np.array([-0.8660254, 0.5, 0.57735027], F)
    pu, pv = np.abs(u), np.abs(v)
    d = np.minimum(k[0] * pu + k[1] * pv, 0) * 2
    pu, pv = pu - d * k[0], pv - d * k[1]
    pu = pu - np.clip(pu, -k[2] * r, k[2] * r)
    pv = pv - F(r)
    return np.hypot(pu, pv) * np.sign(pv)


def polyline_sd(c: Canvas, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Signed distance (pixels) to a stroke: segments between ``points`` (N, 2) with radii (N,)."""
    out = np.full((c.h, c.w), F(1e4))
    pad = float(radii.max()) + 2
    x0 = int(np.clip(np.floor(points[:, 0].min() - pad + c.w / 2), 0, c.w))
    x1 = int(np.clip(np.ceil(points[:, 0].max() + pad + c.w / 2), 0, c.w))
    y0 = int(np.clip(np.floor(points[:, 1].min() - pad + c.h / 2), 0, c.h))
    y1 = int(np.clip(np.ceil(points[:, 1].max() + pad + c.h / 2), 0, c.h))
    if x1 <= x0 or y1 <= y0:
        return out
    x, y = c.x[y0:y1, x0:x1], c.y[y0:y1, x0:x1]
    best = np.full(x.shape, F(1e4))
    for (ax, ay), (bx, by), ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
        dx, dy = F(bx - ax), F(by - ay)
        t = np.clip(((x - F(ax)) * dx + (y - F(ay)) * dy) / F(max(dx * dx + dy * dy, 1e-6)), 0, 1)
        d = np.hypot(x - F(ax) - t * dx, y - F(ay) - t * dy) - (F(ra) + t * F(rb - ra))
        np.minimum(best, d, out=best)
    out[y0:y1, x0:x1] = best
    return out


def blob_sd(c: Canvas, rng: np.random.Generator, cx: float, cy: float, r: float, rough: float = 0.2) -> np.ndarray:
    """Signed distance-like field (pixels) of an irregular blob of mean radius r."""
    aspect = rng.uniform(0.6, 1.0)
    u, v = c.frame(rng.uniform(0, np.pi), cx, cy)
    v = v / F(aspect)
    radial = np.hypot(u, v)
    angle = np.arctan2(v, u)
    wobble = np.zeros_like(radial)
    for k in range(2, 6):
        wobble += F(rough / k) * np.cos(k * angle + F(rng.uniform(0, 2 * np.pi)))
    return radial - F(r) * (F(1) + wobble)


def random_colour(rng: np.random.Generator, palette: list[tuple[float, float, float]], jitter: float = 0.08):
    base = np.asarray(palette[rng.integers(len(palette))], F)
    return np.clip(base * F(rng.uniform(0.85, 1.15)) + rng.uniform(-jitter, jitter, 3).astype(F), 0.02, 0.98)


@dataclass
class Layers:
    """A drawn scene: the picture, what lies under it (shown through holes), and where defects go."""

    rgb: np.ndarray  # (H, W, 3) float
    under: np.ndarray  # (H, W, 3) float: the table under an object, a dark backing under a texture
    surface: np.ndarray  # (H, W) float in [0, 1]: where surface defects may lie
    extent: float  # the object's typical radius in pixels (textures: half the shorter side)
    texture: bool


def _texture(c: Canvas, rgb: np.ndarray, rng: np.random.Generator) -> Layers:
    backing = np.asarray(random_colour(rng, [(0.06, 0.05, 0.05), (0.12, 0.12, 0.13), (0.2, 0.16, 0.12)], 0.03))
    under = backing * (F(0.7) + F(0.6) * noise(rng, c, 8))[..., None]
    return Layers(rgb, under, np.ones((c.h, c.w), F), c.s / 2, True)


TABLE_COLOURS = [(0.62, 0.63, 0.66), (0.78, 0.76, 0.72), (0.3, 0.31, 0.33), (0.45, 0.5, 0.58), (0.55, 0.45, 0.34),
                 (0.18, 0.2, 0.22), (0.85, 0.85, 0.86), (0.4, 0.48, 0.4)]  # fmt: skip


def _table(c: Canvas, rng: np.random.Generator) -> np.ndarray:
    colour = random_colour(rng, TABLE_COLOURS, 0.04)
    grain = F(0.9) + F(0.14) * fbm(rng, c, 3, 3) + F(0.04) * (rng.random((c.h, c.w), dtype=F) - F(0.5))
    return colour * grain[..., None]


def _on_table(c: Canvas, rng: np.random.Generator, obj: np.ndarray, alpha: np.ndarray, extent: float,
              surface: np.ndarray | None = None, lift: float = 1.0) -> Layers:  # fmt: skip
    """Put an object picture with coverage ``alpha`` on a random table, with a soft cast shadow."""
    table = _table(c, rng)
    shift = c.light[:2] / max(float(c.light[2]), 0.3) * F(-0.018 * c.s * lift)
    shadow = np.roll(blur(alpha, 0.012 * c.s * lift + 0.5), (round(shift[1]), round(shift[0])), axis=(0, 1))
    table_lit = table * (F(1) - F(0.45) * shadow)[..., None]
    return Layers(mix(table_lit, obj, alpha), table, alpha if surface is None else surface, extent, False)


# --------------------------------------------------------------------------------------- textures
FABRIC_COLOURS = [(0.14, 0.21, 0.42), (0.74, 0.75, 0.77), (0.55, 0.12, 0.12), (0.2, 0.4, 0.22), (0.8, 0.7, 0.5),
                  (0.3, 0.3, 0.32), (0.85, 0.55, 0.2), (0.45, 0.3, 0.55), (0.9, 0.88, 0.82), (0.35, 0.55, 0.75)]  # fmt: skip


def woven(c: Canvas, rng: np.random.Generator, defect=None, drng=None) -> Layers:
    """Plain weave or twill, two random yarn colours, threads that wander a little."""
    period = c.s * rng.uniform(0.022, 0.04) + 1.5
    u, v = c.frame(rng.uniform(0, np.pi))
    u = u + F(period * 0.25) * (noise(rng, c, 4) - F(0.5))
    v = v + F(period * 0.25) * (noise(rng, c, 4) - F(0.5))
    col, fu = np.divmod(u / F(period), F(1))
    row, fv = np.divmod(v / F(period), F(1))
    twill = rng.random() < 0.5
    warp_top = ((row - col) % 4 != 0) if twill else ((row + col) % 2 == 0)
    warp_prof = np.sin(F(np.pi) * fu) ** F(0.6)
    weft_prof = np.sin(F(np.pi) * fv) ** F(0.6)
    warp_c, weft_c = random_colour(rng, FABRIC_COLOURS), random_colour(rng, FABRIC_COLOURS)
    if rng.random() < 0.4:
        weft_c = np.clip(warp_c * F(rng.uniform(0.7, 1.3)), 0, 1)
    tint_a, tint_b = rng.uniform(0.9, 1.1, 64).astype(F), rng.uniform(0.92, 1.08, 64).astype(F)
    fib_a, fib_b = rng.random(512).astype(F), rng.random(512).astype(F)
    warp_val = (
        lookup(tint_a, col)
        * (F(0.85) + F(0.3) * lookup(fib_a, v * F(0.7) + col * 37))
        * (F(0.35) + F(0.75) * warp_prof)
    )
    weft_val = (
        lookup(tint_b, row)
        * (F(0.85) + F(0.3) * lookup(fib_b, u * F(0.7) + row * 37))
        * (F(0.35) + F(0.75) * weft_prof)
    )
    rgb = np.where(warp_top[..., None], warp_c * warp_val[..., None], weft_c * weft_val[..., None])
    rgb = rgb * (F(0.88) + F(0.24) * fbm(rng, c, 2, 3))[..., None]
    return _texture(c, rgb, rng)


def knitted(c: Canvas, rng: np.random.Generator, defect=None, drng=None) -> Layers:
    """Stockinette: columns of V-shaped stitches in a random yarn colour."""
    pw = c.s * rng.uniform(0.045, 0.08) + 2
    ph = pw * rng.uniform(0.7, 0.95)
    u, v = c.frame(rng.uniform(-0.25, 0.25) + (np.pi / 2 if rng.random() < 0.3 else 0))
    v = v + F(ph * 0.12) * (noise(rng, c, 5) - F(0.5))
    col, fu = np.divmod(u / F(pw), F(1))
    row, fv = np.divmod(v / F(ph), F(1))
    left = np.abs(fu - F(0.1) - F(0.36) * fv) * F(pw)  # distance to the left leg of the V
    right = np.abs(fu - F(0.9) + F(0.36) * fv) * F(pw)
    width = F(pw * 0.15)
    prof = np.maximum(np.exp(-((left / width) ** 2)), np.exp(-((right / width) ** 2)))
    prof = prof * (F(0.45) + F(0.55) * np.sin(F(np.pi) * fv) ** F(0.5))
    fibres = noise(rng, c, c.s / max(pw * 0.35, 1.0))
    height = F(pw * 0.25) * prof
    diffuse, _ = shade(c, height)
    yarn = random_colour(rng, FABRIC_COLOURS + [(0.6, 0.15, 0.2), (0.9, 0.9, 0.9)])
    tint = rng.uniform(0.92, 1.08, 97).astype(F)
    val = (F(0.25) + F(0.85) * prof) * (F(0.85) + F(0.3) * fibres) * lookup(tint, row * 7 + col)
    rgb = yarn * (val * (F(0.6) + F(0.4) * diffuse))[..., None]
    return _texture(c, rgb, rng)


WOOD_LIGHT = [(0.8, 0.6, 0.4), (0.85, 0.7, 0.5), (0.6, 0.42, 0.28), (0.75, 0.5, 0.35), (0.88, 0.78, 0.6)]


def wood(c: Canvas, rng: np.random.Generator, defect=None, drng=None) -> Layers:
    """Flat-sawn boards: curving growth rings around a far pith, pores and streaks along the grain."""
    u, v = c.frame(rng.uniform(-0.3, 0.3) + (np.pi / 2 if rng.random() < 0.5 else 0))
    pith = c.s * rng.uniform(1.2, 3.0)
    stretch = rng.uniform(0.2, 0.5)
    radius = np.hypot(v + F(pith), u * F(stretch)) + F(c.s * 0.04) * fbm(rng, c, 2, 3)
    phase = np.mod(radius / F(c.s * rng.uniform(0.04, 0.1)), F(1))
    late = smoothstep(0.5, 0.85, phase) * (F(1) - smoothstep(0.9, 1.0, phase))
    light = random_colour(rng, WOOD_LIGHT, 0.04)
    dark = light * F(rng.uniform(0.45, 0.7))
    rgb = mix(np.broadcast_to(light, (c.h, c.w, 3)), dark, late)
    streaks = lookup(rng.random(400).astype(F), v * F(256 / c.s) * F(1.5)) * F(0.5) + F(0.5) * noise(rng, c, 6)
    pores = (rng.random((c.h, c.w)) > 0.993).astype(F)
    pores = blur(pores, 0.5)
    rgb = rgb * (F(0.9) + F(0.16) * streaks)[..., None] * (F(1) - F(0.3) * np.clip(pores * 3, 0, 1))[..., None]
    sheen = np.exp(-(((c.x - F(rng.uniform(-0.3, 0.3) * c.s)) / F(0.5 * c.s)) ** 2 + (c.y / F(0.35 * c.s)) ** 2))
    return _texture(c, rgb + F(0.06) * sheen[..., None], rng)


def dotted(c: Canvas, rng: np.random.Generator, defect=None, drng=None) -> Layers:
    """Polka-dot cloth: dots on a square or staggered grid over a fine weave."""
    pitch = c.s * rng.uniform(0.08, 0.16)
    radius = pitch * rng.uniform(0.18, 0.32)
    u, v = c.frame(rng.uniform(0, np.pi / 2))
    stagger = rng.random() < 0.5
    row = np.floor(v / F(pitch))
    shift = np.where(np.mod(row, 2) == 1, F(0.5 * pitch), F(0)) if stagger else F(0)
    du = np.mod(u + shift, F(pitch)) - F(pitch / 2)
    dv = np.mod(v, F(pitch)) - F(pitch / 2)
    dot = cover(np.hypot(du, dv) - F(radius))
    cloth, ink = random_colour(rng, FABRIC_COLOURS), random_colour(rng, FABRIC_COLOURS)
    if float(np.abs(cloth - ink).sum()) < 0.6:
        ink = np.clip(F(1) - cloth, 0.05, 0.95)
    weave = F(0.92) + F(0.08) * np.sin(u * F(2.2)) * np.sin(v * F(2.2))
    rgb = mix(np.broadcast_to(cloth, (c.h, c.w, 3)), ink, dot * F(rng.uniform(0.85, 1.0)))
    rgb = rgb * (weave * (F(0.9) + F(0.18) * fbm(rng, c, 2, 3)))[..., None]
    return _texture(c, rgb, rng)


def striped(c: Canvas, rng: np.random.Generator, defect=None, drng=None) -> Layers:
    """Striped cloth: a repeating sequence of 2-4 coloured bands of random widths, fine weave on top."""
    n = int(rng.integers(2, 5))
    widths = rng.uniform(0.02, 0.09, n) * c.s + 1
    colours = np.stack([random_colour(rng, FABRIC_COLOURS) for _ in range(n)])
    u, v = c.frame(rng.uniform(0, np.pi))
    v = v + F(c.s * 0.006) * (noise(rng, c, 3) - F(0.5))
    edges = np.cumsum(widths)
    pos = np.mod(v, F(edges[-1]))
    index = np.searchsorted(edges, pos.ravel(), side="right").reshape(pos.shape).clip(0, n - 1)
    rgb = colours[index]
    weave = F(0.9) + F(0.1) * np.sin(u * F(2.0)) * np.sin(v * F(2.0))
    rgb = rgb * (weave * (F(0.9) + F(0.16) * fbm(rng, c, 2, 3)))[..., None]
    return _texture(c, rgb, rng)


TILE_COLOURS = [(0.86, 0.84, 0.78), (0.3, 0.45, 0.65), (0.7, 0.38, 0.25), (0.35, 0.55, 0.45), (0.55, 0.55, 0.56),
                (0.92, 0.92, 0.93), (0.2, 0.2, 0.22), (0.8, 0.7, 0.45)]  # fmt: skip


def tiles(c: Canvas, rng: np.random.Generator, defect=None, drng=None) -> Layers:
    """Glazed square tiles with grout lines, bevelled rims, speckles and a window reflection."""
    pitch = c.s * rng.uniform(0.2, 0.4)
    grout = max(1.0, pitch * rng.uniform(0.04, 0.09))
    u, v = c.frame(rng.uniform(-0.08, 0.08), rng.uniform(-1, 1) * pitch, rng.uniform(-1, 1) * pitch)
    col, fu = np.divmod(u, F(pitch))
    row, fv = np.divmod(v, F(pitch))
    edge = np.minimum(np.minimum(fu, F(pitch) - fu), np.minimum(fv, F(pitch) - fv)) - F(grout / 2)
    tile = smoothstep(0.0, 1.0, edge)
    height = F(pitch * 0.05) * smoothstep(0.0, pitch * 0.07, edge)
    diffuse, spec = shade(c, height, 30.0)
    glaze_c = random_colour(rng, TILE_COLOURS, 0.04)
    tint = rng.uniform(0.94, 1.06, 101).astype(F)
    glaze = glaze_c * (lookup(tint, row * 13 + col) * (F(0.94) + F(0.08) * fbm(rng, c, 3, 3)))[..., None]
    specks = blur((rng.random((c.h, c.w)) > 0.993).astype(F), 0.6)
    glaze = glaze * (F(1) - F(0.7) * np.clip(specks * 3, 0, 1))[..., None]
    glaze = glaze * diffuse[..., None] + F(0.25) * spec[..., None]
    mortar = random_colour(rng, [(0.5, 0.49, 0.46), (0.75, 0.74, 0.7), (0.25, 0.25, 0.25)], 0.03)
    mortar = mortar * (F(0.8) + F(0.3) * rng.random((c.h, c.w), dtype=F))[..., None]
    rgb = mix(mortar, glaze, tile)
    rx, ry = rng.uniform(-0.3, 0.3, 2) * c.s
    refl = np.exp(-(((c.x - F(rx)) / F(0.18 * c.s)) ** 2 + ((c.y - F(ry)) / F(0.12 * c.s)) ** 2))
    return _texture(c, rgb + F(0.1) * (refl * tile)[..., None], rng)


LEATHER_COLOURS = [(0.35, 0.2, 0.1), (0.12, 0.1, 0.09), (0.55, 0.35, 0.2), (0.45, 0.12, 0.1), (0.7, 0.55, 0.4),
                   (0.25, 0.25, 0.3)]  # fmt: skip


def leather(c: Canvas, rng: np.random.Generator, defect=None, drng=None) -> Layers:
    """Grained leather: a pebbled height field with creases, soft sheen and mottled dye."""
    cells = c.s / (c.s * rng.uniform(0.025, 0.05) + 1.5)
    n1, n2 = noise(rng, c, cells), noise(rng, c, cells * 1.9)
    crease = (F(1) - smoothstep(0.0, 0.07, np.abs(n1 - F(0.5)))) * F(0.7) + (
        F(1) - smoothstep(0.0, 0.05, np.abs(n2 - F(0.5)))
    ) * F(0.3)
    height = F(c.s * 0.012) * (F(1) - crease) + F(c.s * 0.004) * noise(rng, c, cells * 3)
    diffuse, spec = shade(c, height, 12.0)
    dye = random_colour(rng, LEATHER_COLOURS, 0.04)
    rgb = dye * ((F(0.85) + F(0.25) * fbm(rng, c, 2, 3)) * (F(1) - F(0.35) * crease))[..., None]
    rgb = rgb * diffuse[..., None] + F(rng.uniform(0.03, 0.1)) * spec[..., None]
    return _texture(c, rgb, rng)


# ---------------------------------------------------------------------------------------- objects
METALS = [(0.62, 0.64, 0.67), (0.72, 0.6, 0.35), (0.7, 0.45, 0.32), (0.5, 0.52, 0.55), (0.8, 0.8, 0.78),
          (0.25, 0.25, 0.27)]  # fmt: skip


def _metal(c: Canvas, rng: np.random.Generator, height: np.ndarray, marks: np.ndarray) -> np.ndarray:
    colour = random_colour(rng, METALS, 0.03)
    diffuse, spec = shade(c, height, float(rng.uniform(25, 70)))
    base = colour * (F(0.82) + F(0.25) * marks)[..., None]
    return base * (F(0.35) + F(0.65) * diffuse)[..., None] + F(rng.uniform(0.3, 0.6)) * spec[..., None]


def _dent(angle: np.ndarray, drng: np.random.Generator, depth: float) -> tuple[np.ndarray, float]:
    """A smooth inward bump of the outline around a random direction: (fraction of radius, direction)."""
    at = drng.uniform(-np.pi, np.pi)
    width = drng.uniform(0.3, 0.6)
    delta = np.angle(np.exp(1j * (angle - F(at)))).astype(F)
    return F(depth) * np.exp(-((delta / F(width)) ** 2)), at


def washer(c: Canvas, rng: np.random.Generator, defect=None, drng=None) -> Layers:
    """A metal washer (ring): brushed concentric marks, rounded edges; bent (dented) or with a chunk missing."""
    outer = c.s * rng.uniform(0.26, 0.4)
    inner = outer * rng.uniform(0.35, 0.6)
    cx, cy = rng.uniform(-0.06, 0.06, 2) * c.s
    tilt = rng.uniform(0.85, 1.0)
    u, v = c.frame(rng.uniform(0, np.pi), cx, cy)
    v = v / F(tilt)
    radial = np.hypot(u, v)
    angle = np.arctan2(v, u)
    marks = lookup(rng.random(600).astype(F), radial * F(256 / c.s) * F(2)) * F(0.7) + F(0.3) * noise(rng, c, 12)
    sd = np.maximum(radial - F(outer), F(inner) - radial)
    if defect == "bent":
        dent, _ = _dent(angle, drng, drng.uniform(0.12, 0.22))
        sd = np.maximum(radial - F(outer) * (F(1) - dent), F(inner) * (F(1) - dent * F(0.5)) - radial)
    elif defect == "missing_part":
        at = drng.uniform(-np.pi, np.pi)
        r = (outer - inner) * drng.uniform(0.6, 1.1)
        bite = np.hypot(u - F(outer * np.cos(at)), v - F(outer * np.sin(at))) - F(r) * (
            F(1) + F(0.12) * (noise(drng, c, 30) - F(0.5))
        )
        sd = np.maximum(sd, -bite)
    alpha = cover(sd)
    height = F(c.s * 0.015) * smoothstep(0, c.s * 0.02, -sd)
    metal = _metal(c, rng, height, marks)
    return _on_table(c, rng, metal, alpha, outer)


def plate(c: Canvas, rng: np.random.Generator, defect=None, drng=None) -> Layers:
    """A brushed rectangular plate fixed by 4 screws near its corners; one screw may be missing."""
    hx = c.s * rng.uniform(0.3, 0.42)
    hy = hx * rng.uniform(0.55, 1.0)
    u, v = c.frame(
        rng.uniform(-0.35, 0.35) + (np.pi / 2 if rng.random() < 0.3 else 0), *(rng.uniform(-0.04, 0.04, 2) * c.s)
    )
    sd = box_sd(u, v, hx, hy, c.s * rng.uniform(0.01, 0.05))
    alpha = cover(sd)
    brush_angle = rng.uniform(0, np.pi)
    marks = lookup(rng.random(800).astype(F), (np.cos(brush_angle) * u + np.sin(brush_angle) * v) * F(256 / c.s * 2))
    marks = F(0.7) * marks + F(0.3) * noise(rng, c, 10)
    height = F(c.s * 0.01) * smoothstep(0, c.s * 0.015, -sd)
    inset = min(hx, hy) * rng.uniform(0.18, 0.28)
    sr = min(hx, hy) * rng.uniform(0.08, 0.12)
    screws = [(sx * (hx - inset), sy * (hy - inset)) for sx in (-1, 1) for sy in (-1, 1)]
    missing = int(drng.integers(4)) if defect == "missing_part" else -1
    heads = np.zeros((c.h, c.w), F)
    holes = np.zeros((c.h, c.w), F)
    cross = np.zeros((c.h, c.w), F)
    slot_angle = rng.uniform(0, np.pi, 4)
    for k, (sx, sy) in enumerate(screws):
        d = np.hypot(u - F(sx), v - F(sy))
        if k == missing:
            holes = np.maximum(holes, cover(d - F(sr * 0.55)))
            continue
        head = cover(d - F(sr))
        heads = np.maximum(heads, head)
        a, b = np.cos(slot_angle[k]), np.sin(slot_angle[k])
        du, dv = u - F(sx), v - F(sy)
        p, q = a * du + b * dv, -b * du + a * dv
        arms = np.minimum(box_sd(p, q, sr * 0.7, sr * 0.12), box_sd(p, q, sr * 0.12, sr * 0.7))
        cross = np.maximum(cross, cover(arms) * head)
        height = height + F(sr * 0.5) * np.sqrt(np.clip(F(1) - (d / F(sr)) ** 2, 0, 1))
    height = height - F(sr * 0.3) * cross
    metal = _metal(c, rng, height, marks)
    metal = mix(metal, metal * F(0.3), cross * F(0.8))
    label = cover(np.abs(box_sd(u, v - F(hy * 0.05), hx * 0.45, hy * 0.25, 2)) - F(max(0.6, c.s * 0.003)))
    metal = mix(metal, metal * F(0.55), label * F(rng.uniform(0.3, 0.8)))
    metal = mix(metal, np.asarray([0.04, 0.04, 0.04], F), holes)
    surface = alpha * (F(1) - np.maximum(heads, blur(holes, 1.0)))
    return _on_table(c, rng, metal, alpha, min(hx, hy), surface=surface)


def screw(c: Canvas, rng: np.random.Generator, defect=None, drng=None) -> Layers:
    """A screw lying on the table (side view): pan head, threaded shaft, pointed tip; bent or broken."""
    length = c.s * rng.uniform(0.6, 0.85)
    rs = length * rng.uniform(0.06, 0.09)
    head_len = length * rng.uniform(0.12, 0.18)
    head_r = rs * rng.uniform(1.6, 2.1)
    u, v = c.frame(rng.uniform(-np.pi, np.pi), *(rng.uniform(-0.05, 0.05, 2) * c.s))
    u = u + F(length / 2)  # u = 0 at the head's back, length at the tip
    pitch = rs * rng.uniform(0.5, 0.8)
    tip = length * rng.uniform(0.12, 0.2)
    if defect == "bent":
        start = length * drng.uniform(0.4, 0.65)
        amount = drng.choice([-1, 1]) * drng.uniform(1.5, 3.0) * rs / (length - start) ** 2
        v = v - F(amount) * np.maximum(u - F(start), 0) ** 2
    end = length
    if defect == "missing_part":
        end = length * drng.uniform(0.55, 0.75)
    radius_at = np.where(u > F(length - tip), F(rs) * np.clip((F(length) - u) / F(tip), 0, 1), F(rs))
    shaft = np.maximum(np.abs(v) - radius_at, np.maximum(F(head_len * 0.8) - u, u - F(length)))
    if defect == "missing_part":
        jag = lookup(drng.random(16).astype(F), v / F(max(rs * 0.4, 0.5))) * F(rs * 0.6)
        shaft = np.maximum(shaft, u - F(end) - jag)
    head = box_sd(u - F(head_len / 2), v, head_len / 2, head_r, head_r * 0.5)
    sd = np.minimum(shaft, head)
    alpha = cover(sd)
    across = np.clip(v / F(head_r), -1, 1)
    thread = F(0.5) + F(0.5) * np.cos(F(2 * np.pi) * (u + F(0.35) * v) / F(pitch))
    in_shaft = (head > 0).astype(F)
    height = np.sqrt(np.clip(F(1) - across**2, 0, 1)) * F(head_r * 0.8) + in_shaft * thread * F(rs * 0.25)
    marks = noise(rng, c, 20)
    metal = _metal(c, rng, height, marks)
    metal = metal * (F(1) - F(0.3) * in_shaft * (F(1) - thread))[..., None]
    return _on_table(c, rng, metal, alpha, length * 0.3, lift=0.6)


BOARD_COLOURS = [(0.07, 0.33, 0.15), (0.05, 0.15, 0.4), (0.08, 0.08, 0.09), (0.45, 0.08, 0.08), (0.2, 0.35, 0.12)]


def board(c: Canvas, rng: np.random.Generator, defect=None, drng=None) -> Layers:
    """A circuit board filling the view: traces, vias and 4-9 parts on pads; one part may be missing."""
    turn = rng.integers(4) * np.pi / 2 + rng.uniform(-0.05, 0.05)
    u, v = c.frame(turn)
    mask_c = random_colour(rng, BOARD_COLOURS, 0.03)
    rgb = mask_c * (F(0.9) + F(0.12) * fbm(rng, c, 3, 3))[..., None] * np.ones((1, 1, 3), F)
    copper = np.zeros((c.h, c.w), F)
    grid = c.s / 8
    for _ in range(int(rng.integers(6, 12))):
        x0, y0 = rng.integers(-5, 5, 2) * grid
        horizontal = rng.random() < 0.5
        n = rng.integers(2, 7) * grid
        x1, y1 = (x0 + n, y0) if horizontal else (x0, y0 + n)
        tw = c.s * 0.012 + 0.5
        copper = np.maximum(
            copper,
            cover(box_sd(u - F((x0 + x1) / 2), v - F((y0 + y1) / 2), abs(x1 - x0) / 2 + tw, abs(y1 - y0) / 2 + tw, tw)),
        )
    diffuse, _ = shade(c, F(c.s * 0.006) * blur(copper, 0.8))
    rgb = mix(rgb, np.clip(mask_c * F(1.6) + F(0.05), 0, 1), F(0.7) * copper) * diffuse[..., None]
    tin = np.asarray([0.8, 0.79, 0.74], F)
    silk = np.asarray([0.92, 0.92, 0.88], F)
    cells = [(i, j) for i in range(-2, 2) for j in range(-2, 2)]
    order = rng.permutation(len(cells))[: int(rng.integers(4, 10))]
    kinds = rng.integers(0, 3, len(order))
    body_colours = [random_colour(rng, [(0.09, 0.09, 0.1), (0.7, 0.57, 0.38), (0.15, 0.25, 0.5), (0.08, 0.08, 0.08)], 0.02)
                    for _ in order]  # fmt: skip
    jitter = rng.uniform(-0.08, 0.08, (len(order), 2)) * c.s
    vertical = rng.random(len(order)) < 0.5
    missing = int(drng.integers(len(order))) if defect == "missing_part" else -1
    lifted = np.zeros((c.h, c.w), F)
    body_alpha = np.zeros((c.h, c.w), F)
    bodies = np.zeros((c.h, c.w, 3), F)
    cell = c.s / 4
    silk_cov = np.zeros((c.h, c.w), F)
    pad_cov = np.zeros((c.h, c.w), F)
    ca, sa = np.cos(turn), np.sin(turn)
    for k, (idx, kind) in enumerate(zip(order, kinds)):
        i, j = cells[idx]
        px, py = (i + 0.5) * cell + jitter[k, 0], (j + 0.5) * cell + jitter[k, 1]
        # only the window around the part is drawn (the frame's inverse rotation gives its centre)
        half = cell * 0.45 + 4
        X, Y = ca * px - sa * py + c.w / 2, sa * px + ca * py + c.h / 2
        win = (slice(int(np.clip(Y - half, 0, c.h)), int(np.clip(Y + half + 1, 0, c.h))),
               slice(int(np.clip(X - half, 0, c.w)), int(np.clip(X + half + 1, 0, c.w))))  # fmt: skip
        if win[0].stop <= win[0].start or win[1].stop <= win[1].start:
            continue
        wu, wv = u[win], v[win]
        pu, pv = (wu - F(px), wv - F(py)) if not vertical[k] else (wv - F(py), -(wu - F(px)))
        if kind == 0:  # an IC with gull-wing leads
            hx, hy = cell * 0.32, cell * 0.2
            pins = 4
            pitch = 2 * hx * 0.8 / (pins - 1)
            pads = [(-hx * 0.8 + n * pitch, s * hy, pitch * 0.22, hy * 0.35) for n in range(pins) for s in (-1, 1)]
        else:  # a chip resistor/capacitor with pads at its ends
            hx, hy = cell * 0.2, cell * 0.1
            pads = [(s * hx * 0.85, 0.0, hx * 0.3, hy * 1.15) for s in (-1, 1)]
        outline = box_sd(pu, pv, hx * 1.25 + 2, hy * 1.6 + 2)
        silk_cov[win] = np.maximum(silk_cov[win], cover(np.abs(outline) - F(max(0.5, c.s * 0.002))))
        for ox, oy, ax, ay in pads:
            pad_cov[win] = np.maximum(pad_cov[win], cover(box_sd(pu - F(ox), pv - F(oy), ax, ay, 0.5)))
        if k == missing:
            continue
        inside = -box_sd(pu, pv, hx, hy, 1.0)
        cov = cover(-inside)
        colour = np.broadcast_to(body_colours[k], (*pu.shape, 3))
        if kind != 0:
            colour = np.where((np.abs(pu) > F(hx * 0.75))[..., None], tin * F(0.95), colour)
        bodies[win] = mix(bodies[win], colour, cov)
        body_alpha[win] = np.maximum(body_alpha[win], cov)
        lifted[win] = np.maximum(lifted[win], F(c.s * 0.015) * smoothstep(0, c.s * 0.008, inside) * cov)
    rgb = mix(mix(rgb, silk, silk_cov), tin, pad_cov)
    lifted = np.maximum(lifted, F(c.s * 0.004) * pad_cov)
    shift = (-c.light[:2] / max(float(c.light[2]), 0.3) * c.s * 0.012).round().astype(int)
    shadow = np.roll(blur(lifted / F(c.s * 0.015), c.s * 0.008), (shift[1], shift[0]), axis=(0, 1))
    rgb = rgb * (F(1) - F(0.5) * np.clip(shadow - body_alpha, 0, 1))[..., None]
    rgb = mix(rgb, bodies, body_alpha)
    diffuse, spec = shade(c, lifted, 40.0)
    rgb = rgb * diffuse[..., None] + F(0.2) * spec[..., None]
    return _texture(c, rgb, rng)


CAP_COLOURS = [(0.75, 0.1, 0.1), (0.1, 0.25, 0.7), (0.92, 0.92, 0.9), (0.1, 0.1, 0.1), (0.15, 0.55, 0.2),
               (0.95, 0.75, 0.1), (0.7, 0.7, 0.72)]  # fmt: skip


def cap(c: Canvas, rng: np.random.Generator, defect=None, drng=None) -> Layers:
    """A bottle cap seen from above: knurled or crimped rim, embossed rings on the top; may be dented."""
    r = c.s * rng.uniform(0.25, 0.38)
    cx, cy = rng.uniform(-0.06, 0.06, 2) * c.s
    u, v = c.frame(rng.uniform(0, 2 * np.pi), cx, cy)
    radial = np.hypot(u, v)
    angle = np.arctan2(v, u)
    crown = rng.random() < 0.35
    teeth = int(rng.integers(18, 26) if crown else rng.integers(40, 90))
    outline = F(r) * (F(1) + (F(0.04) * np.cos(teeth * angle) if crown else F(0)))
    dent = F(0)
    if defect == "bent":
        dent, _ = _dent(angle, drng, drng.uniform(0.1, 0.2))
        outline = outline * (F(1) - dent)
    sd = radial - outline
    alpha = cover(sd)
    rim = smoothstep(0.78, 0.86, radial / F(r))
    ridges = F(0.5) + F(0.5) * np.cos(teeth * angle) if not crown else F(0.5)
    ring_r = rng.uniform(0.45, 0.7)
    emboss = np.exp(-(((radial / F(r) - F(ring_r)) / F(0.03)) ** 2))
    height = F(r * 0.08) * (rim * (F(1) + F(0.5) * ridges) + emboss * F(0.6)) + F(r * 0.15) * smoothstep(
        0, r * 0.05, -sd
    )
    height = height - F(r * 0.25) * dent * smoothstep(0.6, 1.0, radial / F(r))
    diffuse, spec = shade(c, height, float(rng.uniform(15, 50)))
    colour = random_colour(rng, CAP_COLOURS, 0.04)
    body = colour * (F(0.9) + F(0.1) * noise(rng, c, 6))[..., None]
    obj = body * (F(0.4) + F(0.6) * diffuse)[..., None] + F(rng.uniform(0.15, 0.4)) * spec[..., None]
    return _on_table(c, rng, obj, alpha, r)


PILL_COLOURS = [(0.95, 0.95, 0.93), (0.9, 0.85, 0.6), (0.85, 0.3, 0.25), (0.3, 0.45, 0.8), (0.95, 0.6, 0.7),
                (0.6, 0.8, 0.6), (0.95, 0.7, 0.3)]  # fmt: skip


def pill(c: Canvas, rng: np.random.Generator, defect=None, drng=None) -> Layers:
    """A capsule (two coloured halves) or a round/oval tablet with a score line; may be chipped."""
    kind = int(rng.integers(3))
    length = c.s * rng.uniform(0.28, 0.4)
    u, v = c.frame(rng.uniform(0, np.pi), *(rng.uniform(-0.06, 0.06, 2) * c.s))
    if kind == 0:  # capsule
        rw = length * rng.uniform(0.32, 0.42)
        sd = np.hypot(np.maximum(np.abs(u) - F(length - rw), 0), v) - F(rw)
        hw = rw
    elif kind == 1:  # round tablet
        hw = length * rng.uniform(0.6, 0.8)
        sd = np.hypot(u, v) - F(hw)
        length = hw
    else:  # oval tablet
        hw = length * rng.uniform(0.45, 0.6)
        sd = (np.hypot(u / F(length), v / F(hw)) - F(1)) * F(hw)
    if defect == "missing_part":
        at = drng.uniform(-np.pi, np.pi)
        ex, ey = np.cos(at) * length, np.sin(at) * hw
        chip = np.hypot(u - F(ex), v - F(ey)) - F(hw * drng.uniform(0.3, 0.5)) * (
            F(1) + F(0.15) * (noise(drng, c, 25) - F(0.5))
        )
        sd = np.maximum(sd, -chip)
    alpha = cover(sd)
    inside = np.clip(-sd / F(hw), 0, 1)
    height = F(hw * 0.6) * np.sqrt(F(1) - (F(1) - inside) ** 2)
    a, b = random_colour(rng, PILL_COLOURS, 0.04), random_colour(rng, PILL_COLOURS, 0.04)
    if kind == 0:
        body = np.where((u > 0)[..., None], a, b)
    else:
        body = np.broadcast_to(a, (c.h, c.w, 3))
        score = cover(np.abs(u) - F(max(0.5, hw * 0.03))) * (inside > F(0.15))
        height = height - F(hw * 0.05) * score
    diffuse, spec = shade(c, height, float(rng.uniform(10, 40)))
    speck = F(0.93) + F(0.07) * noise(rng, c, 40)
    obj = body * (speck * (F(0.45) + F(0.55) * diffuse))[..., None] + F(rng.uniform(0.1, 0.3)) * spec[..., None]
    return _on_table(c, rng, obj, alpha, hw, lift=0.7)


def nut(c: Canvas, rng: np.random.Generator, defect=None, drng=None) -> Layers:
    """A hexagon nut from above: chamfered corners, threaded hole; a corner may be broken off."""
    r = c.s * rng.uniform(0.22, 0.34)
    u, v = c.frame(rng.uniform(0, np.pi / 3), *(rng.uniform(-0.06, 0.06, 2) * c.s))
    radial = np.hypot(u, v)
    hole_r = r * rng.uniform(0.45, 0.6)
    outer = hex_sd(u, v, r)
    chamfer = radial - F(r * rng.uniform(1.1, 1.14))
    sd = np.maximum(np.maximum(outer, chamfer), F(hole_r) - radial)
    if defect == "missing_part":
        k = drng.integers(6)
        at = k * np.pi / 3 + np.pi / 6
        corner = np.hypot(u - F(np.cos(at) * r * 1.12), v - F(np.sin(at) * r * 1.12))
        sd = np.maximum(
            sd, -(corner - F(r * drng.uniform(0.35, 0.5)) * (F(1) + F(0.15) * (noise(drng, c, 25) - F(0.5))))
        )
    alpha = cover(sd)
    height = F(r * 0.12) * smoothstep(0, r * 0.12, -np.maximum(outer, chamfer)) - F(r * 0.08) * smoothstep(
        hole_r * 1.25, hole_r, radial
    )
    marks = noise(rng, c, 16)
    obj = _metal(c, rng, height, marks)
    thread = F(0.5) + F(0.5) * np.cos(np.arctan2(v, u) * F(2) + radial / F(max(r * 0.05, 0.6)))
    hole = cover(radial - F(hole_r))
    inner = obj * (F(0.15) + F(0.15) * thread)[..., None]
    obj = mix(obj, inner, cover(radial - F(hole_r * 1.0)) * (F(1) - hole))
    return _on_table(c, rng, obj, alpha, r)


SCENES: dict[str, Callable[..., Layers]] = {
    "woven_fabric": woven,
    "knitted_fabric": knitted,
    "wood": wood,
    "dotted_fabric": dotted,
    "striped_fabric": striped,
    "tiles": tiles,
    "leather": leather,
    "washer": washer,
    "metal_plate": plate,
    "screw": screw,
    "circuit_board": board,
    "bottle_cap": cap,
    "pill": pill,
    "hex_nut": nut,
}


# ------------------------------------------------------------------------------ surface defects
def _spot(layers: Layers, drng: np.random.Generator, c: Canvas, margin: float) -> tuple[float, float]:
    """A random point of the surface at least about ``margin`` pixels inside it."""
    inner = layers.surface > 0.5
    if not layers.texture and margin > 0.5:
        inner = blur(layers.surface, margin) > 0.95
        if not inner.any():
            inner = layers.surface > 0.5
    if layers.texture:
        border = int(min(c.h, c.w) * 0.12)
        inner = inner.copy()
        inner[:border] = inner[-border:] = False
        inner[:, :border] = inner[:, -border:] = False
    ys, xs = np.nonzero(inner)
    if len(ys) == 0:
        return 0.0, 0.0
    k = int(drng.integers(len(ys)))
    return float(c.x[ys[k], xs[k]]), float(c.y[ys[k], xs[k]])


def _stroke_points(c: Canvas, drng: np.random.Generator, start: tuple[float, float], length: float,
                   wander: float, n: int) -> np.ndarray:  # fmt: skip
    heading = drng.uniform(-np.pi, np.pi)
    turns = np.cumsum(drng.normal(0, wander, n))
    steps = np.stack([np.cos(heading + turns), np.sin(heading + turns)], 1) * (length / n)
    pts = np.vstack([[0, 0], np.cumsum(steps, 0)])
    return pts - pts.mean(0) + np.asarray(start)


def paint_defect(c: Canvas, layers: Layers, defect: str, drng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint a surface defect over ``layers.rgb``: returns (new rgb, opacity (H, W) in [0, 1])."""
    rgb, ext = layers.rgb, layers.extent
    unit = max(c.s / 256, 0.25)
    surf = layers.surface
    if defect == "scratch":
        start = _spot(layers, drng, c, ext * 0.2)
        pts = _stroke_points(c, drng, start, ext * drng.uniform(0.5, 1.1), 0.08, 16)
        t = np.linspace(0, 1, len(pts))
        radii = (drng.uniform(0.8, 2.2) * unit + 0.35) * np.sin(np.pi * t) ** 0.5 + 0.3
        alpha = cover(polyline_sd(c, pts, radii)) * surf
        light = drng.random() < 0.65
        paint = (F(0.55) + F(0.45) * rgb) * F(drng.uniform(1.0, 1.25)) if light else rgb * F(drng.uniform(0.25, 0.45))
        return mix(rgb, np.clip(paint, 0, 1), alpha), alpha
    if defect == "crack":
        start = _spot(layers, drng, c, ext * 0.25)
        pts = _stroke_points(c, drng, start, ext * drng.uniform(0.5, 1.0), 0.45, 24)
        t = np.linspace(0, 1, len(pts))
        radii = (
            (drng.uniform(0.8, 2.0) * unit + 0.35) * np.sin(np.pi * t) ** 0.7
            + 0.25
            + 0.3 * drng.random(len(pts)) * unit
        )
        sd = polyline_sd(c, pts, radii)
        for _ in range(int(drng.integers(0, 3))):
            k = int(drng.integers(3, len(pts) - 3))
            branch = _stroke_points(c, drng, (0.0, 0.0), ext * drng.uniform(0.15, 0.35), 0.5, 8)
            branch = branch - branch[0] + pts[k]
            sd = np.minimum(sd, polyline_sd(c, branch, np.linspace(radii[k] * 0.7, 0.3, len(branch))))
        alpha = cover(sd) * surf
        depth = np.clip(-sd / F(2 * unit + 0.5), 0, 1)
        gap = rgb * (F(0.3) - F(0.2) * depth)[..., None] + F(0.02)
        return mix(rgb, gap, alpha), alpha
    if defect == "hole":
        start = _spot(layers, drng, c, ext * 0.25)
        r = ext * drng.uniform(0.07, 0.16) + 1.0
        sd = blob_sd(c, drng, *start, r, 0.25) + F(r * 0.15) * (noise(drng, c, 60) - F(0.5))
        hole = cover(sd) * surf
        rim = cover(sd - F(max(1.0, r * 0.25))) * surf
        out = mix(rgb, rgb * F(0.55), rim)
        inside = (
            layers.under if not layers.texture else layers.under * (F(0.6) + F(0.4) * smoothstep(0, r, -sd))[..., None]
        )
        out = mix(out, inside, hole)
        return out, np.maximum(hole, rim)
    if defect == "stain":
        start = _spot(layers, drng, c, ext * 0.2)
        r = ext * drng.uniform(0.12, 0.28) + 1.0
        sd = blob_sd(c, drng, *start, r, 0.3) + F(r * 0.2) * (noise(drng, c, 20) - F(0.5))
        alpha = cover(sd) * surf
        colour = random_colour(drng, [(0.45, 0.28, 0.13), (0.15, 0.13, 0.1), (0.6, 0.35, 0.15), (0.5, 0.5, 0.35)], 0.05)
        dens = (F(0.45) + F(0.45) * smoothstep(0.5, 1.0, 1 + sd / F(r))) * (F(0.75) + F(0.5) * noise(drng, c, 12))
        strength = np.clip(alpha * dens * F(drng.uniform(0.7, 1.0)), 0, 1)
        out = rgb * (F(1) - strength[..., None] * (F(1) - colour)) + F(0.12) * strength[..., None] * colour
        return out, alpha
    if defect == "contamination":
        colour = random_colour(drng, [(0.05, 0.05, 0.05), (0.9, 0.9, 0.88), (0.55, 0.25, 0.08), (0.6, 0.62, 0.65),
                                      (0.85, 0.75, 0.2)], 0.05)  # fmt: skip
        if drng.random() < 0.5:  # a fibre or hair
            start = _spot(layers, drng, c, ext * 0.2)
            pts = _stroke_points(c, drng, start, ext * drng.uniform(0.4, 0.9), 0.3, 20)
            sd = polyline_sd(c, pts, np.full(len(pts), drng.uniform(0.5, 1.4) * unit + 0.3))
        else:  # particles
            sd = np.full((c.h, c.w), F(1e4))
            for _ in range(int(drng.integers(1, 5))):
                p = _spot(layers, drng, c, ext * 0.1)
                sd = np.minimum(sd, blob_sd(c, drng, *p, ext * drng.uniform(0.03, 0.08) + 1.0, 0.35))
        alpha = cover(sd) * surf
        grain = F(0.8) + F(0.4) * noise(drng, c, 50)
        return mix(rgb, colour * grain[..., None], alpha), alpha
    if defect == "colour_shift":
        start = _spot(layers, drng, c, ext * 0.2)
        r = ext * drng.uniform(0.15, 0.3) + 1.0
        sd = blob_sd(c, drng, *start, r, 0.2)
        alpha = cover(sd / F(max(1.0, r * 0.05))) * surf
        kind = int(drng.integers(3))
        if kind == 0:  # a tint
            tint = np.asarray(
                random_colour(drng, [(1.4, 0.8, 0.6), (0.7, 1.2, 0.7), (0.7, 0.8, 1.4), (1.3, 1.2, 0.5)], 0.05)
            )
            shifted = rgb * tint + F(0.06) * (tint - F(1))
        elif kind == 1:  # bleached / faded
            grey = rgb.mean(-1, keepdims=True)
            shifted = mix(rgb, grey, np.ones(rgb.shape[:2], F) * F(0.7)) * F(1.25) + F(0.1)
        else:  # darkened / burnt
            shifted = rgb * np.asarray([0.55, 0.45, 0.35], F)
        return mix(rgb, np.clip(shifted, 0, 1), alpha), alpha
    raise ValueError(f"unknown surface defect {defect!r}")


# --------------------------------------------------------------------------- lighting, camera
def lighting(c: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Uneven illumination (H, W, 3): a ramp towards the light, a vignette, slow mottling, white balance."""
    strength = rng.uniform(0.05, 0.3)
    lx, ly = c.light[0], c.light[1]
    ramp = F(1) + F(strength) * (c.x * F(lx) + c.y * F(ly)) / F(c.s)
    r2 = (c.x**2 + c.y**2) / F((c.s / 2) ** 2)
    vignette = F(1) - F(rng.uniform(0, 0.15)) * r2
    mottle = F(1) + F(rng.uniform(0.02, 0.1)) * (noise(rng, c, 3) - F(0.5))
    level = F(rng.uniform(0.85, 1.15))
    balance = F(1) + rng.uniform(-0.05, 0.05, 3).astype(F)
    return (level * ramp * vignette * mottle)[..., None] * balance


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb, 0, 1) * F(255)).astype(np.uint8)
