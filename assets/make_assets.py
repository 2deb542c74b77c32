"""Generate the project's own example images (and the defect masks) into ``assets/``.

Run ``python assets/make_assets.py`` (or ``--out DIR``). Everything is drawn here with numpy from
fixed seeds and written with Pillow, so the pictures are the project's own work, free to ship with
the app, and the same bytes of pixels come out on every run. No dataset image (MVTec AD, VisA,
medical sets) is read or copied.

Each picture is a float64 RGB field in [0, 1] built from a few procedural parts:

- smooth value noise (random lattices upsampled with a smooth step) for mottling and lighting;
- height fields shaded with a Lambert + Blinn-Phong model under one light from the upper left;
- anti-aliased shapes from signed distances (1-pixel soft edges);
- a defect painted through its own opacity field ``alpha``; the mask marks ``alpha >= 0.5``.

Pixels are quantised once, at the end, with ``round(255 * value)``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 256
SEED = 20261201  # base seed; picture k uses SEED + k (see EXAMPLES)
LIGHT = np.array([-1.0, -1.0, 1.5]) / np.linalg.norm([-1.0, -1.0, 1.5])  # towards the light (x right, y down)
ASSETS_DIR = Path(__file__).resolve().parent

Picture = tuple[np.ndarray, np.ndarray | None]  # (H, W, 3) float RGB in [0, 1], (H, W) bool defect mask or None


# ------------------------------------------------------------------------------------------ tools
def grid(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)``, each (size, size), x to the right and y downwards."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    return x, y


def smoothstep(edge0: float, edge1: float, value: np.ndarray) -> np.ndarray:
    """0 below ``edge0``, 1 above ``edge1``, the cubic 3t^2 - 2t^3 between (either order of edges)."""
    t = np.clip((value - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def coverage(signed_distance: np.ndarray) -> np.ndarray:
    """Anti-aliased inside-ness of a shape from its signed distance (negative inside), 1-pixel edge."""
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def box_distance(
    x: np.ndarray, y: np.ndarray, x0: float, y0: float, x1: float, y1: float, radius: float = 0.0
) -> np.ndarray:
    """Signed distance to the axis-aligned box [x0, x1] x [y0, y1] with corners rounded by ``radius``."""
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hx, hy = (x1 - x0) / 2 - radius, (y1 - y0) / 2 - radius
    qx, qy = np.abs(x - cx) - hx, np.abs(y - cy) - hy
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - radius


def resize_lattice(lattice: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Smooth (smoothstep-weighted bilinear) upsampling of a 2-D lattice to ``shape``, corners aligned."""
    rows, cols = lattice.shape
    ty = np.linspace(0.0, rows - 1.0, shape[0])
    tx = np.linspace(0.0, cols - 1.0, shape[1])
    iy = np.minimum(ty.astype(int), rows - 2) if rows > 1 else np.zeros(shape[0], int)
    ix = np.minimum(tx.astype(int), cols - 2) if cols > 1 else np.zeros(shape[1], int)
    fy = smoothstep(0.0, 1.0, ty - iy)[:, None]
    fx = smoothstep(0.0, 1.0, tx - ix)[None, :]
    iy1 = np.minimum(iy + 1, rows - 1)
    ix1 = np.minimum(ix + 1, cols - 1)
    top = lattice[iy][:, ix] * (1 - fx) + lattice[iy][:, ix1] * fx
    bottom = lattice[iy1][:, ix] * (1 - fx) + lattice[iy1][:, ix1] * fx
    return top * (1 - fy) + bottom * fy


def value_noise(rng: np.random.Generator, cells: tuple[int, int], size: int = SIZE) -> np.ndarray:
    """Smooth noise in [0, 1] with ``cells`` = (rows, columns) random values across the picture."""
    return resize_lattice(rng.random((cells[0] + 1, cells[1] + 1)), (size, size))


def fractal_noise(rng: np.random.Generator, base_cells: int, octaves: int, size: int = SIZE) -> np.ndarray:
    """Sum of ``octaves`` value noises, each twice as fine and half as strong; rescaled to [0, 1]."""
    total = np.zeros((size, size))
    for octave in range(octaves):
        cells = base_cells * 2**octave
        total += value_noise(rng, (cells, cells), size) * 0.5**octave
    return (total - total.min()) / (total.max() - total.min())


def blur(field: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D field (reflecting borders)."""
    radius = max(1, int(3 * sigma + 0.5))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(field, radius, mode="reflect")
    rows = np.apply_along_axis(lambda row: np.convolve(row, taps, mode="valid"), 1, padded)
    return np.apply_along_axis(lambda col: np.convolve(col, taps, mode="valid"), 0, rows)


def shade(height: np.ndarray, shininess: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Lambert term and Blinn-Phong highlight of a height field (pixels) under :data:`LIGHT`.

    Returns:
        (diffuse, specular), each (H, W); a flat surface gives diffuse ``LIGHT[2]`` and specular 0
        when ``shininess`` is 0.
    """
    dy, dx = np.gradient(height)
    normal = np.stack([-dx, -dy, np.ones_like(height)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    diffuse = np.clip(normal @ LIGHT, 0.0, 1.0)
    if shininess <= 0:
        return diffuse, np.zeros_like(height)
    half = LIGHT + np.array([0.0, 0.0, 1.0])
    half /= np.linalg.norm(half)
    return diffuse, np.clip(normal @ half, 0.0, 1.0) ** shininess


def lighting(rng: np.random.Generator, strength: float = 0.12) -> np.ndarray:
    """Uneven illumination: brighter towards the upper left, a soft vignette and slow mottling."""
    x, y = grid()
    ramp = 1.0 + strength * (0.5 - (x + y) / (2 * SIZE))
    vignette = 1.0 - 0.25 * strength * (((x - SIZE / 2) ** 2 + (y - SIZE / 2) ** 2) / (SIZE / 2) ** 2)
    return ramp * vignette * (1.0 + 0.5 * strength * (value_noise(rng, (3, 3)) - 0.5))


def sensor_noise(rng: np.random.Generator, rgb: np.ndarray, sigma: float = 0.012) -> np.ndarray:
    """Camera noise: independent Gaussian per pixel and channel."""
    return rgb + rng.normal(0.0, sigma, rgb.shape)


def mix(base: np.ndarray, paint: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``base`` with ``paint`` laid over it at opacity ``alpha`` (H, W)."""
    return base * (1 - alpha[..., None]) + paint * alpha[..., None]


def stroke_distance(x: np.ndarray, y: np.ndarray, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Signed distance to a stroke: the union of discs of ``radii`` centred on the polyline ``points``."""
    distance = np.full(x.shape, np.inf)
    for (px, py), radius in zip(points, radii):
        distance = np.minimum(distance, np.hypot(x - px, y - py) - radius)
    return distance


# --------------------------------------------------------------------------------------- pictures
def fabric(rng: np.random.Generator, scratch: bool) -> Picture:
    """Denim-like 3/1 twill (indigo warp over three pale weft threads), optionally with an abraded scratch."""
    x, y = grid()
    # threads wander a little, as real cloth is never perfectly straight
    x = x + 1.2 * (value_noise(rng, (4, 4)) - 0.5)
    y = y + 1.2 * (value_noise(rng, (4, 4)) - 0.5)
    period = 6.0
    column, u = np.divmod(x, period)
    row, v = np.divmod(y, period)
    u, v = u / period, v / period
    warp_on_top = (row - column) % 4 != 0  # the diagonal ribs of twill
    # cylindrical threads: bright along the middle, a thin dark gap between neighbours
    warp_profile = np.sin(np.pi * u) ** 0.6 * smoothstep(0.0, 0.15, u) * smoothstep(1.0, 0.85, u)
    weft_profile = np.sin(np.pi * v) ** 0.6 * smoothstep(0.0, 0.15, v) * smoothstep(1.0, 0.85, v)
    weft_profile = weft_profile * (0.75 + 0.25 * np.sin(np.pi * u))  # a weft bulges where it surfaces
    threads = SIZE // int(period) + 2
    warp_tint = 1.0 + 0.12 * (rng.random(threads) - 0.5)  # ring-spun yarn: each thread its own shade
    weft_tint = 1.0 + 0.08 * (rng.random(threads) - 0.5)
    # fibres: noise stretched along each thread's direction
    warp_fibres = resize_lattice(rng.random((SIZE // 16, SIZE)), (SIZE, SIZE))
    weft_fibres = resize_lattice(rng.random((SIZE, SIZE // 16)), (SIZE, SIZE))
    indigo = np.array([0.14, 0.21, 0.42])
    pale = np.array([0.74, 0.75, 0.77])
    warp_value = warp_tint[column.astype(int) % threads] * (0.85 + 0.3 * warp_fibres) * (0.3 + 0.8 * warp_profile)
    weft_value = weft_tint[row.astype(int) % threads] * (0.85 + 0.25 * weft_fibres) * (0.3 + 0.75 * weft_profile)
    rgb = np.where(warp_on_top[..., None], indigo * warp_value[..., None], pale * weft_value[..., None])
    rgb = rgb * (0.88 + 0.24 * fractal_noise(rng, 2, 3))[..., None]  # dye unevenness and soft creases
    mask = None
    if scratch:
        # a gently curved scratch: a quadratic Bezier, widest in the middle and tapering to nothing
        t = np.linspace(0.0, 1.0, 240)
        p0, p1, p2 = np.array([52.0, 70.0]), np.array([120.0, 150.0]), np.array([205.0, 178.0])
        points = (1 - t)[:, None] ** 2 * p0 + 2 * ((1 - t) * t)[:, None] * p1 + t[:, None] ** 2 * p2
        radii = 2.6 * np.sin(np.pi * t) ** 0.5 + 0.3
        distance = stroke_distance(x, y, points, radii)
        fray = 0.7 + 0.6 * resize_lattice(rng.random((SIZE, SIZE // 3)), (SIZE, SIZE))  # torn fibres
        alpha = np.clip(coverage(distance) * fray, 0.0, 1.0)
        worn = np.array([0.86, 0.87, 0.90]) * (0.8 + 0.25 * rng.random((SIZE, SIZE)))[..., None]
        rgb = mix(rgb, worn, alpha)
        mask = alpha >= 0.5
    rgb = rgb * lighting(rng)[..., None]
    return sensor_noise(rng, rgb), mask


def wood(rng: np.random.Generator, crack: bool) -> Picture:
    """Flat-sawn wood with curving growth rings and pores, optionally with a crack along the grain."""
    x, y = grid()
    # growth rings: distance to a far-away pith, stretched along x and disturbed by noise
    radius = np.hypot((y + 420.0) * 1.0, (x - 150.0) * 0.35) + 9.0 * fractal_noise(rng, 2, 4)
    phase = (radius / 17.0) % 1.0
    latewood = smoothstep(0.55, 0.9, phase) * (1 - smoothstep(0.93, 1.0, phase))
    light = np.array([0.80, 0.60, 0.40])
    dark = np.array([0.50, 0.30, 0.16])
    rgb = mix(np.broadcast_to(light, (SIZE, SIZE, 3)), np.broadcast_to(dark, (SIZE, SIZE, 3)), latewood)
    # pores and fibre streaks along the grain (x)
    streaks = resize_lattice(rng.random((SIZE, SIZE // 32)), (SIZE, SIZE))
    pores = (rng.random((SIZE, SIZE // 3)) > 0.93).astype(np.float64)
    pores = blur(resize_lattice(pores, (SIZE, SIZE)), 0.6)
    rgb = rgb * (0.92 + 0.14 * streaks)[..., None] * (1.0 - 0.35 * np.clip(pores, 0, 1))[..., None]
    # varnish sheen: a broad soft highlight
    sheen = np.exp(-(((x - 80.0) / 120.0) ** 2 + ((y - 60.0) / 70.0) ** 2))
    rgb = rgb + 0.08 * sheen[..., None]
    mask = None
    if crack:
        # a crack following the grain: a random walk in y across the board, splitting open in the middle
        steps = 220
        t = np.linspace(0.0, 1.0, steps)
        xs = 45.0 + 165.0 * t
        ys = 132.0 + np.cumsum(rng.normal(0.0, 0.55, steps)) + 10.0 * np.sin(2.2 * t)
        radii = 2.4 * np.sin(np.pi * t) ** 0.8 + 0.25 * rng.random(steps)
        distance = stroke_distance(x, y, np.stack([xs, ys], axis=1), radii)
        alpha = coverage(distance)
        depth = np.clip(-distance / 2.0, 0.0, 1.0)  # darker towards the middle of the split
        gap = np.array([0.20, 0.11, 0.06]) * (1.0 - 0.6 * depth)[..., None]
        rgb = mix(rgb, gap, alpha)
        mask = alpha >= 0.5
    rgb = rgb * lighting(rng)[..., None]
    return sensor_noise(rng, rgb, 0.01), mask


def tiles(rng: np.random.Generator, stain: bool) -> Picture:
    """Glazed ceramic tiles with grout lines, optionally with a coffee-like stain."""
    x, y = grid()
    pitch, grout = 64.0, 5.0
    column, u = np.divmod(x + 20.0, pitch)
    row, v = np.divmod(y + 12.0, pitch)
    edge = np.minimum(np.minimum(u, pitch - u), np.minimum(v, pitch - v)) - grout / 2  # distance into the tile
    tile = smoothstep(0.0, 1.0, edge)
    # glaze bulges near the rim: a height field that rises over the first 4 pixels of each tile
    height = 3.0 * smoothstep(0.0, 4.0, edge)
    diffuse, specular = shade(height, shininess=30.0)
    index = (row * 8 + column).astype(int) % 64
    tint = 1.0 + 0.05 * (rng.random(64) - 0.5)
    glaze = np.array([0.86, 0.84, 0.78]) * tint[index][..., None]
    glaze = glaze * (0.94 + 0.08 * fractal_noise(rng, 3, 4))[..., None]
    speckles = blur((rng.random((SIZE, SIZE)) > 0.992).astype(np.float64), 0.7)
    glaze = glaze * (1.0 - 0.8 * np.clip(speckles, 0, 1))[..., None]
    glaze = glaze * (diffuse / LIGHT[2])[..., None] + 0.25 * specular[..., None]
    sand = rng.random((SIZE, SIZE))
    mortar = np.array([0.50, 0.49, 0.46]) * (0.8 + 0.3 * blur(sand, 0.8))[..., None]
    rgb = mix(mortar, glaze, tile)
    # reflection of a window on the glaze
    reflection = np.exp(-(((x - 170.0) / 45.0) ** 2 + ((y - 70.0) / 30.0) ** 2))
    rgb = rgb + 0.12 * (reflection * tile)[..., None]
    mask = None
    if stain:
        # an irregular blot that dried with a darker rim (coffee ring), crossing a grout line
        cx, cy, size = 112.0, 148.0, 30.0
        angle = np.arctan2(y - cy, x - cx)
        wobble = sum(
            0.12 / k * np.cos(k * angle + phase) for k, phase in zip(range(2, 7), rng.uniform(0, 2 * np.pi, 5))
        )
        outline = size * (1.0 + wobble) * (1.0 + 0.25 * (fractal_noise(rng, 8, 3) - 0.5))
        radial = np.hypot(x - cx, y - cy)
        alpha = coverage(radial - outline)
        # thin in the middle, dark where it dried at the rim, patchy throughout
        density = (0.25 + 0.5 * smoothstep(0.6, 1.0, radial / outline)) * (0.75 + 0.5 * fractal_noise(rng, 6, 3))
        coffee = np.array([0.45, 0.28, 0.13])
        rgb = rgb * (1.0 - (alpha * density)[..., None] * (1.0 - coffee))
        mask = alpha >= 0.5
    rgb = rgb * lighting(rng, 0.1)[..., None]
    return sensor_noise(rng, rgb, 0.01), mask


def washer(rng: np.random.Generator, dent: bool) -> Picture:
    """A brushed steel washer on a matte grey table, optionally with a chunk of its rim bitten out."""
    x, y = grid()
    cx = cy = SIZE / 2
    inner, outer = 40.0, 98.0
    radial = np.hypot(x - cx, y - cy)
    angle = np.arctan2(y - cy, x - cx)
    ring_distance = np.maximum(radial - outer, inner - radial)  # signed distance to the annulus
    bite_distance = np.full((SIZE, SIZE), np.inf)
    if dent:
        # a bite out of the rim at the lower right, its edge torn (angular noise on its radius)
        bx, by = cx + outer * np.cos(0.6), cy + outer * np.sin(0.6)
        jag = rng.random((1, 24))
        tear = 1.0 + 0.1 * (resize_lattice(np.hstack([jag, jag[:, :1]]), (1, 720))[0] - 0.5)  # periodic
        bite_angle = np.arctan2(y - by, x - bx)
        bite_radius = 30.0 * tear[((bite_angle + np.pi) / (2 * np.pi) * 719).astype(int)]
        bite_distance = np.hypot(x - bx, y - by) - bite_radius
    shape_distance = np.maximum(ring_distance, -bite_distance)
    body = coverage(shape_distance)
    # height: a flat top with rounded edges 5 px wide, on every edge including the bite
    height = 3.5 * smoothstep(0.0, 5.0, -shape_distance)
    diffuse, specular = shade(height, shininess=60.0)
    # concentric brushing marks: a fresh random value per pixel of radius, changing slowly around the
    # ring (12 lattice cells), interpolated linearly in radius so the fine rings do not alias
    lattice = rng.random((12, 184))
    brushing = resize_lattice(np.vstack([lattice, lattice[:1]]), (360, 184))  # same row at -pi and +pi: no seam
    turn = ((angle + np.pi) / (2 * np.pi) * 359).astype(int)
    ring, fraction = np.divmod(radial, 1.0)
    ring = ring.astype(int)
    marks = brushing[turn, ring] * (1 - fraction) + brushing[turn, ring + 1] * fraction
    steel = np.array([0.60, 0.62, 0.65]) * (0.85 + 0.2 * marks)[..., None]
    # metals mirror their surroundings: brighter where the rim faces the lit side
    steel = steel * (0.75 + 0.35 * np.cos(angle + 2.3))[..., None]
    # ambient light from the room keeps the edges turned away from the lamp from going black
    metal = steel * (0.3 + 0.7 * diffuse / LIGHT[2])[..., None] + 0.55 * specular[..., None]
    table = np.array([0.62, 0.64, 0.68]) * (0.93 + 0.1 * fractal_noise(rng, 4, 4))[..., None]
    shadow = np.roll(blur(body, 4.0), (6, 7), axis=(0, 1))
    table = table * (1.0 - 0.45 * shadow)[..., None]
    rgb = mix(table, metal, body)
    mask = None
    if dent:
        mask = (coverage(ring_distance) >= 0.5) & (body < 0.5)  # the missing metal
    rgb = rgb * lighting(rng)[..., None]
    return sensor_noise(rng, rgb, 0.01), mask


@dataclass(frozen=True)
class Part:
    """A surface-mount part: body box, two pads (or pin rows) and colours."""

    x0: float
    y0: float
    x1: float
    y1: float
    body: tuple[float, float, float]
    pins: int  # 2 for a chip resistor/capacitor (pads at the short ends), else pins per long side


def board(rng: np.random.Generator, missing: bool) -> Picture:
    """A green circuit board with traces, vias and parts; optionally one capacitor is missing."""
    x, y = grid()
    weave = 0.5 * (np.sin(x * 0.9) * np.sin(y * 0.9)) + 0.5  # faint glass-fibre weave under the mask
    rgb = np.array([0.07, 0.33, 0.15]) * (0.9 + 0.06 * weave + 0.1 * fractal_noise(rng, 3, 3))[..., None]
    # copper traces under the solder mask: raised, lighter green lines
    copper = np.zeros((SIZE, SIZE))
    segments = [
        (20, 60, 120, 60), (120, 60, 120, 110), (30, 200, 230, 200), (60, 120, 60, 240), (180, 30, 180, 150),
        (140, 150, 230, 150), (90, 150, 90, 232), (200, 90, 245, 90), (14, 140, 60, 140), (150, 230, 150, 250),
    ]  # fmt: skip
    for x0, y0, x1, y1 in segments:
        copper = np.maximum(copper, coverage(box_distance(x, y, x0 - 2.5, y0 - 2.5, x1 + 2.5, y1 + 2.5, 2.0)))
    diffuse, _ = shade(2.0 * blur(copper, 1.0))
    rgb = mix(rgb, np.array([0.16, 0.50, 0.22]), 0.8 * copper) * (diffuse / LIGHT[2])[..., None]
    # vias: tinned rings with a dark hole
    for vx, vy in ((120, 60), (60, 140), (180, 150), (150, 230), (200, 90), (30, 200)):
        radial = np.hypot(x - vx, y - vy)
        rgb = mix(rgb, np.array([0.78, 0.76, 0.68]), coverage(radial - 5.0))
        rgb = mix(rgb, np.array([0.05, 0.05, 0.05]), coverage(radial - 2.2))
    parts = [
        Part(40, 28, 92, 66, (0.09, 0.09, 0.10), 4),  # a small IC
        Part(150, 40, 210, 74, (0.10, 0.10, 0.11), 5),  # a wider IC
        Part(100, 100, 128, 114, (0.08, 0.08, 0.08), 2),  # resistors ...
        Part(190, 112, 218, 126, (0.08, 0.08, 0.08), 2),
        Part(150, 170, 178, 186, (0.70, 0.57, 0.38), 2),  # ... and capacitors
        Part(40, 160, 68, 176, (0.70, 0.57, 0.38), 2),
        Part(108, 170, 136, 186, (0.70, 0.57, 0.38), 2),  # the one that goes missing
    ]
    tin = np.array([0.80, 0.79, 0.74])
    silk = np.array([0.92, 0.92, 0.88])
    lifted = np.zeros((SIZE, SIZE))  # heights of the parts, for shadows and shading
    bodies = np.zeros((SIZE, SIZE, 3))
    body_alpha = np.zeros((SIZE, SIZE))
    mask = None
    for number, part in enumerate(parts):
        outline = box_distance(x, y, part.x0 - 4, part.y0 - 4, part.x1 + 4, part.y1 + 4)
        rgb = mix(rgb, silk, coverage(np.abs(outline) - 0.6))  # silkscreen frame
        if part.pins == 2:  # pads at both short ends, each a bit longer than the part's end cap
            pads = [
                (part.x0 - 2, part.y0 - 1, part.x0 + 8, part.y1 + 1),
                (part.x1 - 8, part.y0 - 1, part.x1 + 2, part.y1 + 1),
            ]
        else:  # gull-wing leads on both long sides
            pitch = (part.x1 - part.x0 - 8) / (part.pins - 1)
            pads = [
                (part.x0 + 4 + k * pitch - 2.5, edge - 6, part.x0 + 4 + k * pitch + 2.5, edge + 6)
                for k in range(part.pins)
                for edge in (part.y0, part.y1)
            ]
        for pad in pads:
            pad_cover = coverage(box_distance(x, y, *pad, 1.0))
            solder = 0.9 + 0.2 * blur(rng.random((SIZE, SIZE)), 1.0)  # grainy, shiny solder
            rgb = mix(rgb, tin * solder[..., None], pad_cover)
            lifted = np.maximum(lifted, 1.5 * pad_cover)
        is_missing = missing and number == len(parts) - 1
        if is_missing:
            mask = coverage(box_distance(x, y, part.x0, part.y0, part.x1, part.y1, 1.0)) >= 0.5
            continue
        inside = -box_distance(x, y, part.x0, part.y0, part.x1, part.y1, 1.5)
        cover = coverage(-inside)
        colour = np.array(part.body) * (0.9 + 0.2 * value_noise(rng, (40, 40)))[..., None]
        if part.pins == 2:  # metal end caps of chip parts
            caps = (x < part.x0 + 5) | (x > part.x1 - 5)
            colour = np.where(caps[..., None], tin * 0.95, colour)
        else:  # pin-1 dot
            colour = mix(
                colour, np.array([0.25, 0.25, 0.27]), coverage(np.hypot(x - part.x0 - 7, y - part.y0 - 7) - 2.5)
            )
        bodies = mix(bodies, colour, cover)
        body_alpha = np.maximum(body_alpha, cover)
        lifted = np.maximum(lifted, 4.0 * smoothstep(0.0, 2.5, inside) * cover)
    shadow = np.roll(blur(lifted / 4.0, 2.5), (3, 3), axis=(0, 1))
    rgb = rgb * (1.0 - 0.5 * np.clip(shadow - body_alpha, 0, 1))[..., None]
    diffuse, specular = shade(lifted, shininess=40.0)
    rgb = mix(rgb, bodies, body_alpha)
    rgb = rgb * (diffuse / LIGHT[2])[..., None] + 0.25 * specular[..., None]
    rgb = rgb * lighting(rng)[..., None]
    return sensor_noise(rng, rgb, 0.01), mask


@dataclass(frozen=True)
class Example:
    """One shipped picture: file stem, the category word to type, how it is drawn, and its seed."""

    name: str
    category: str
    draw: Callable[[np.random.Generator], Picture]
    seed: int
    description: str


EXAMPLES: tuple[Example, ...] = (
    Example("fabric_scratch", "fabric", lambda rng: fabric(rng, True), SEED + 0, "denim weave with an abraded scratch"),
    Example(
        "fabric_good", "fabric", lambda rng: fabric(rng, False), SEED + 1, "another piece of the same denim, flawless"
    ),
    Example("wood_crack", "wood", lambda rng: wood(rng, True), SEED + 2, "wood grain with a crack along the grain"),
    Example("tiles_stain", "tiles", lambda rng: tiles(rng, True), SEED + 3, "glazed tiles with a coffee-like stain"),
    Example(
        "washer_dent",
        "metal washer",
        lambda rng: washer(rng, True),
        SEED + 4,
        "steel washer with a dent: a chunk bitten out of its rim",
    ),
    Example(
        "board_missing_part",
        "circuit board",
        lambda rng: board(rng, True),
        SEED + 5,
        "circuit board with one capacitor missing from its pads",
    ),
)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] (clipped) -> uint8, rounding to the nearest level."""
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def render(example: Example) -> tuple[np.ndarray, np.ndarray | None]:
    """The picture (H, W, 3) uint8 and its mask (H, W) uint8 in {0, 255} (None for a flawless one)."""
    rgb, mask = example.draw(np.random.default_rng(example.seed))
    return to_uint8(rgb), None if mask is None else (mask.astype(np.uint8) * 255)


def generate(out_dir: Path) -> list[dict[str, str]]:
    """Write every picture, its mask (``masks/<name>_mask.png``) and ``examples.json`` into ``out_dir``.

    Returns:
        The ``examples.json`` entries: ``file``, ``category`` (the word to type), ``description``, and
        ``mask`` for the defective ones (paths relative to ``out_dir``).
    """
    out_dir = Path(out_dir)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    entries = []
    for example in EXAMPLES:
        image, mask = render(example)
        entry = {"file": f"{example.name}.png", "category": example.category, "description": example.description}
        # optimize=True: smaller files; metadata-free PNGs, so equal pixels give equal files with one zlib
        Image.fromarray(image, "RGB").save(out_dir / entry["file"], optimize=True)
        if mask is not None:
            entry["mask"] = f"masks/{example.name}_mask.png"
            Image.fromarray(mask, "L").save(out_dir / entry["mask"], optimize=True)
        entries.append(entry)
    (out_dir / "examples.json").write_text(json.dumps(entries, indent=2) + "\n")
    return entries


def main() -> None:
    """Command line: ``python assets/make_assets.py [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS_DIR, help="output folder (default: this folder)")
    args = parser.parse_args()
    for entry in generate(args.out):
        print(f"{args.out / entry['file']}  ({entry['category']})")


if __name__ == "__main__":
    main()
