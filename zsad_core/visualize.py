"""Heat-map colours, overlays, colour bars and comparison panels: the one place that picks colours.

Methods return raw maps in their own units (``MethodInfo.map_range``); everything that turns a map
into pixels lives here, so the CLI, the evaluation reports and the app show maps the same way.

Colour scale. A map is drawn on a scale ``[vmin, vmax]``: values at or below ``vmin`` get the
colour map's first colour, values at or above ``vmax`` its last. :func:`display_range` picks the
scale for several methods' maps of one image:

- ``"absolute"``: each method's own ``MethodInfo.map_range``, so the same value always has the same
  colour and a normal image looks cold (the honest default);
- ``"per_image"``: each map's own min and max (shows structure in every map, even a normal one);
- ``"shared"``: the min and max over all the given maps, so maps of several methods are comparable
  on one colour scale;
- ``"per_method"``: each method's min and max over all the images shown together
  (:func:`display_ranges`), so every method uses the whole colour range: the colour of a pixel says
  where its value lies between the least and the most anomalous pixel that method found on these
  images (0 to 1 on one relative scale). Methods' units differ by orders of magnitude (WinCLIP's
  maps are probabilities near 0.5, SDP's are signed similarities near 0), so an absolute shared
  scale paints most methods flat; the relative one keeps each method's structure, and images of one
  method stay comparable with each other. For a single image it is the same as ``"per_image"``.

Thresholds (:func:`relative_threshold`) are given on the same relative scale, so one slider
position means the same thing for every method.

Every function is pure (arrays and PIL images in, arrays and PIL images out); the only file
writer is :func:`save_png`. Figures are rendered with matplotlib's Agg canvas (no display, no
pyplot global state), so the functions are safe to call from server threads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Union

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from .postprocess import resize_map
from .types import AnomalyResult

MapLike = Union[np.ndarray, AnomalyResult]
RangeMode = Literal["absolute", "per_image", "shared", "per_method"]
RANGE_MODES: tuple[str, ...] = ("absolute", "per_image", "shared", "per_method")
DEFAULT_CMAP = "jet"


# --------------------------------------------------------------------------------------- helpers
def _as_map(anomaly_map: MapLike) -> np.ndarray:
    """(H, W) float32 view of a map or of an :class:`AnomalyResult`'s map."""
    array = anomaly_map.anomaly_map if isinstance(anomaly_map, AnomalyResult) else anomaly_map
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"an anomaly map must be 2-D (H, W), got shape {array.shape}")
    return array


def get_colormap(cmap: str | Colormap) -> Colormap:
    """A matplotlib colour map by name (``"jet"``, ``"viridis"``, ...) or the object itself."""
    if isinstance(cmap, Colormap):
        return cmap
    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(
            f"unknown colour map {cmap!r}; use a matplotlib name such as jet, turbo, viridis, inferno, magma"
        ) from None


def map_min_max(anomaly_map: MapLike) -> tuple[float, float]:
    """(min, max) over the finite values of a map; (0, 0) when it has none."""
    values = _as_map(anomaly_map)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 0.0
    return float(finite.min()), float(finite.max())


def _method_map_range(method: str) -> tuple[float, float]:
    from .registry import get_method  # the registry imports the methods; keep this module light

    low, high = get_method(method).info.map_range
    return float(low), float(high)


# ----------------------------------------------------------------------------------------- scales
def display_range(
    results: Mapping[str, MapLike],
    mode: RangeMode = "absolute",
    map_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, tuple[float, float]]:
    """The colour scale ``(vmin, vmax)`` for each method's map of one image.

    Args:
        results: method id -> :class:`AnomalyResult` or (H, W) map.
        mode: ``"absolute"`` (each method's ``MethodInfo.map_range``), ``"per_image"`` (each map's
            own min and max) or ``"shared"`` (min and max over all the maps; the same scale for all).
        map_ranges: method id -> (low, high) to use in ``"absolute"`` mode instead of the
            registry's ranges (needed for maps of methods that are not registered).
    Returns:
        method id -> (vmin, vmax), in the order of ``results``.
    Raises:
        ValueError: unknown mode, or ``"absolute"`` for a method with no known range.
    """
    if mode not in RANGE_MODES:
        raise ValueError(f"unknown colour-scale mode {mode!r}; use one of {', '.join(RANGE_MODES)}")
    if mode in ("per_image", "per_method"):  # per_method over a single image: see display_ranges
        return {method: map_min_max(result) for method, result in results.items()}
    if mode == "shared":
        bounds = [map_min_max(result) for result in results.values()]
        if not bounds:
            return {}
        shared = (min(low for low, _ in bounds), max(high for _, high in bounds))
        return {method: shared for method in results}
    ranges: dict[str, tuple[float, float]] = {}
    for method, result in results.items():
        if map_ranges is not None and method in map_ranges:
            low, high = map_ranges[method]
            ranges[method] = (float(low), float(high))
            continue
        method_id = result.method if isinstance(result, AnomalyResult) else method
        ranges[method] = _method_map_range(method_id)
    return ranges


def display_ranges(
    images: Sequence[Mapping[str, MapLike]],
    mode: RangeMode = "per_method",
    map_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> list[dict[str, tuple[float, float]]]:
    """Colour scales for several images shown together, one ``{method: (vmin, vmax)}`` per image.

    Args:
        images: per image, method id -> result or map (methods may be missing on some images).
        mode: ``"per_method"``: each method's min and max over all the images; ``"shared"``: one
            scale over every map of every image; ``"per_image"`` and ``"absolute"``: as
            :func:`display_range`, image by image.
        map_ranges: as :func:`display_range`.
    """
    if mode not in RANGE_MODES:
        raise ValueError(f"unknown colour-scale mode {mode!r}; use one of {', '.join(RANGE_MODES)}")
    if mode in ("per_image", "absolute"):
        return [display_range(results, mode, map_ranges) for results in images]
    bounds: dict[str, list[tuple[float, float]]] = {}
    for results in images:
        for method, result in results.items():
            bounds.setdefault(method, []).append(map_min_max(result))
    fitted = {method: (min(low for low, _ in b), max(high for _, high in b)) for method, b in bounds.items()}
    if mode == "shared" and fitted:
        everything = (min(low for low, _ in fitted.values()), max(high for _, high in fitted.values()))
        fitted = dict.fromkeys(fitted, everything)
    return [{method: fitted[method] for method in results} for results in images]


def relative_threshold(vmin: float, vmax: float, fraction: float) -> float:
    """The map value at ``fraction`` (0..1) of the way from ``vmin`` to ``vmax``."""
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"a relative threshold must lie between 0 and 1, got {fraction}")
    return float(vmin) + float(fraction) * (float(vmax) - float(vmin))


# ---------------------------------------------------------------------------------------- colours
def colorize(anomaly_map: MapLike, vmin: float, vmax: float, cmap: str | Colormap = DEFAULT_CMAP) -> np.ndarray:
    """Map values -> colours.

    Args:
        anomaly_map: (H, W) map (or an :class:`AnomalyResult`).
        vmin, vmax: the colour scale; values are clipped to it. ``vmin`` gets the colour map's
            first colour and ``vmax`` its last. When ``vmax <= vmin`` (a flat scale) every pixel
            gets the first colour. NaN and -inf count as ``vmin``, +inf as ``vmax``.
        cmap: matplotlib colour-map name or object.
    Returns:
        (H, W, 3) uint8 RGB.
    """
    values = _as_map(anomaly_map).astype(np.float64)
    colormap = get_colormap(cmap)
    span = float(vmax) - float(vmin)
    if not np.isfinite(span) or span <= 0:
        normalised = np.zeros_like(values)
    else:
        normalised = (values - float(vmin)) / span
        normalised = np.nan_to_num(normalised, nan=0.0, posinf=1.0, neginf=0.0)
        normalised = np.clip(normalised, 0.0, 1.0)
    return np.ascontiguousarray(colormap(normalised, bytes=True)[..., :3])


def threshold_mask(anomaly_map: MapLike, threshold: float) -> np.ndarray:
    """(H, W) bool mask of the pixels whose value is ``>= threshold`` (NaN pixels are False)."""
    return _as_map(anomaly_map) >= float(threshold)


def outline(
    image: Image.Image, mask: np.ndarray, colour: tuple[int, int, int] = (255, 255, 255), width: int | None = None
) -> Image.Image:
    """``image`` with the border of ``mask``'s regions drawn in ``colour``.

    Args:
        image: any PIL image (drawn as RGB), of the mask's size.
        mask: (H, W) bool mask.
        colour: RGB of the line.
        width: line width in pixels (default: about 0.6% of the image's longer side, at least 1).
    Returns:
        A new RGB image; the input is unchanged.
    """
    from scipy.ndimage import binary_dilation
    from skimage.segmentation import find_boundaries

    rgb = np.array(image.convert("RGB"))
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask of shape {mask.shape} does not fit an image of {rgb.shape[1]}x{rgb.shape[0]}")
    width = width or max(1, round(max(mask.shape) * 0.006))
    border = find_boundaries(mask, mode="inner")
    if width > 1:
        border = binary_dilation(border, iterations=width - 1) & mask
    rgb[border] = colour
    return Image.fromarray(rgb)


def colorbar_strip(
    vmin: float,
    vmax: float,
    cmap: str | Colormap = DEFAULT_CMAP,
    label: str = "",
    width_inches: float = 6.0,
    dpi: int = 100,
) -> Image.Image:
    """A horizontal colour bar from ``vmin`` (left) to ``vmax`` (right) with ticks and a caption.

    Returns:
        RGB image about ``width_inches * dpi`` pixels wide.
    """
    figure = Figure(figsize=(width_inches, 0.85 if label else 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    scale = ScalarMappable(norm=Normalize(vmin, vmax if vmax > vmin else vmin + 1e-12), cmap=get_colormap(cmap))
    bar = figure.colorbar(scale, cax=axis, orientation="horizontal")
    bar.ax.tick_params(labelsize=8)
    if label:
        bar.set_label(label, fontsize=8)
    figure.set_dpi(dpi)
    figure.canvas.draw()
    return Image.fromarray(np.ascontiguousarray(np.asarray(figure.canvas.buffer_rgba())[..., :3]))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _format_value(value: float) -> str:
    return f"{value:.3g}"


def with_colorbar(
    image: Image.Image,
    vmin: float,
    vmax: float,
    cmap: str | Colormap = DEFAULT_CMAP,
    bar_width: int | None = None,
) -> Image.Image:
    """``image`` with a vertical colour bar on its right: ``vmax`` at the top, ``vmin`` at the bottom.

    Args:
        image: any PIL image (converted to RGB).
        vmin, vmax: the colour scale the image was drawn with.
        cmap: the colour map it was drawn with.
        bar_width: width of the colour strip in pixels (default: about 4% of the height, >= 10).
    Returns:
        A new, wider RGB image; the input is unchanged.
    """
    image = image.convert("RGB")
    width, height = image.size
    bar_width = bar_width or max(10, height // 25)
    font_size = max(9, min(32, height // 18))
    font = _font(font_size)
    labels = [_format_value(vmax), _format_value((vmin + vmax) / 2), _format_value(vmin)]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max(int(measure.textlength(label, font=font)) for label in labels)
    gap = max(3, bar_width // 3)
    canvas = Image.new("RGB", (width + gap + bar_width + gap + label_width + gap, height), (255, 255, 255))
    canvas.paste(image, (0, 0))
    gradient = np.linspace(1.0, 0.0, height, dtype=np.float64)[:, None].repeat(bar_width, axis=1)
    strip = Image.fromarray(colorize(gradient, 0.0, 1.0, cmap))
    bar_left = width + gap
    canvas.paste(strip, (bar_left, 0))
    draw = ImageDraw.Draw(canvas)
    text_left = bar_left + bar_width + gap
    box = draw.textbbox((0, 0), "0", font=font)
    text_height = box[3] - box[1]
    positions = (0, max(0, (height - text_height) // 2), max(0, height - text_height - box[1] - 1))
    for label, top in zip(labels, positions):
        draw.text((text_left, top), label, fill=(0, 0, 0), font=font)
    return canvas


def overlay(
    image: Image.Image,
    anomaly_map: MapLike,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
    cmap: str | Colormap = DEFAULT_CMAP,
    colorbar: bool = False,
) -> Image.Image:
    """The image with the coloured map blended over it.

    Args:
        image: the input picture (any PIL mode; drawn as RGB).
        anomaly_map: (H, W) map at the image's size, or an :class:`AnomalyResult` (a map of another
            size is resized bilinearly to the image's).
        vmin, vmax: colour scale. Defaults: the method's ``map_range`` when ``anomaly_map`` is an
            :class:`AnomalyResult` of a registered method, otherwise the map's own min and max.
        alpha: weight of the colours (0 = only the image, 1 = only the heat map).
        cmap: matplotlib colour-map name or object.
        colorbar: add a colour bar with the scale on the right (see :func:`with_colorbar`).
    Returns:
        A new RGB image of the input's size (wider when ``colorbar`` is set).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    rgb = image.convert("RGB")
    values = _as_map(anomaly_map)
    if values.shape != (rgb.height, rgb.width):
        values = resize_map(values, (rgb.height, rgb.width))
    if vmin is None or vmax is None:
        if isinstance(anomaly_map, AnomalyResult):
            default_low, default_high = _method_map_range(anomaly_map.method)
        else:
            default_low, default_high = map_min_max(values)
        vmin = default_low if vmin is None else vmin
        vmax = default_high if vmax is None else vmax
    colours = colorize(values, vmin, vmax, cmap).astype(np.float32)
    blended = (1.0 - alpha) * np.asarray(rgb, dtype=np.float32) + alpha * colours
    result = Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8))
    return with_colorbar(result, vmin, vmax, cmap) if colorbar else result


def threshold_overlay(
    image: Image.Image,
    anomaly_map: MapLike,
    vmin: float,
    vmax: float,
    threshold: float | None = None,
    alpha: float = 0.5,
    cmap: str | Colormap = DEFAULT_CMAP,
    colour: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """:func:`overlay` on ``[vmin, vmax]``, with the outline of the pixels at or above a relative threshold.

    Args:
        image, anomaly_map, vmin, vmax, alpha, cmap: as :func:`overlay` (the map at the image's size).
        threshold: fraction (0..1) of the way from ``vmin`` to ``vmax`` (:func:`relative_threshold`);
            None draws no outline.
        colour: RGB of the outline.
    """
    drawn = overlay(image, anomaly_map, vmin, vmax, alpha=alpha, cmap=cmap)
    if threshold is None:
        return drawn
    mask = threshold_mask(anomaly_map, relative_threshold(vmin, vmax, threshold))
    return outline(drawn, mask, colour)


# ----------------------------------------------------------------------------------------- panels
def _method_title(method: str) -> str:
    from .registry import get_method

    try:
        return get_method(method).info.name
    except ValueError:
        return method


def panel(
    image: Image.Image,
    results: Mapping[str, AnomalyResult],
    mode: RangeMode = "absolute",
    alpha: float = 0.5,
    cmap: str | Colormap = DEFAULT_CMAP,
    map_ranges: Mapping[str, tuple[float, float]] | None = None,
    columns: int | None = None,
    title: str | None = None,
    tile_inches: float = 3.0,
    dpi: int = 100,
) -> Image.Image:
    """A side-by-side grid: the input, then each method's overlay with its name, score and colour bar.

    Args:
        image: the input picture.
        results: method id -> :class:`AnomalyResult` for this image (maps at the image's size).
        mode: colour scale, see :func:`display_range`. With ``"shared"`` all maps use one scale and
            the panel has one colour bar; otherwise each map has its own.
        alpha, cmap: as :func:`overlay`.
        map_ranges: overrides for ``"absolute"`` mode, see :func:`display_range`.
        columns: tiles per row (default: all in one row, at most 4).
        title: a heading over the grid (e.g. the file name and category).
        tile_inches, dpi: size of each tile; the output is about ``tile_inches * dpi`` pixels a tile.
    Returns:
        RGB image of the rendered grid.
    """
    if not results:
        raise ValueError("panel needs at least one method's result")
    rgb = image.convert("RGB")
    ranges = display_range(results, mode, map_ranges)
    tiles = 1 + len(results)
    columns = max(1, min(columns or min(tiles, 4), tiles))
    rows = -(-tiles // columns)
    aspect = rgb.height / max(rgb.width, 1)
    figure = Figure(
        figsize=(tile_inches * columns * 1.15, tile_inches * rows * min(max(aspect, 0.4), 2.5) + 0.6),
        layout="constrained",
    )
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    axes[0, 0].imshow(np.asarray(rgb))
    axes[0, 0].set_title("input", fontsize=10)
    colormap = get_colormap(cmap)
    shared_scale = mode == "shared"
    for index, (method, result) in enumerate(results.items(), start=1):
        ax = axes[index // columns, index % columns]
        low, high = ranges[method]
        ax.imshow(np.asarray(overlay(rgb, result, low, high, alpha=alpha, cmap=colormap)))
        ax.set_title(f"{_method_title(result.method)}\nscore {result.score:.4g}", fontsize=10)
        if not shared_scale:
            scale = ScalarMappable(norm=Normalize(low, high if high > low else low + 1e-12), cmap=colormap)
            figure.colorbar(scale, ax=ax, fraction=0.046, pad=0.03)
    if shared_scale:
        low, high = next(iter(ranges.values()))
        scale = ScalarMappable(norm=Normalize(low, high if high > low else low + 1e-12), cmap=colormap)
        figure.colorbar(scale, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02, label="shared scale")
    if title:
        figure.suptitle(title, fontsize=11)
    figure.canvas.draw()
    buffer = np.asarray(figure.canvas.buffer_rgba())
    return Image.fromarray(np.ascontiguousarray(buffer[..., :3]))


def save_png(path: str | os.PathLike, image: Image.Image) -> Path:
    """Write ``image`` as PNG at ``path`` (the parent folder must exist); returns the path."""
    path = Path(path)
    image.save(path, format="PNG")
    return path
