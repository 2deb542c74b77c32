"""One ZIP with everything a comparison produced, and the exact settings that made it.

Layout of the archive (``<name>`` is the image's file stem, made safe and unique):

=============================  =====================================================================
``overlays/<name>__<m>.png``   method ``m``'s map over the image, on the chosen colour scale, with
                               its colour bar
``maps/<name>__<m>.npy``       the raw map: float32, (H, W) at the image's own size, method units
``scores.csv``                 one row per image and method: score, status, seconds, map range,
                               method extras
``scores.json``                the same, nested per image, with every failure message
``settings.json``              category, per-method backbone, size, checkpoint, sigma and prompts,
                               device, precision, colour scale, versions
=============================  =====================================================================

The ZIP is written to a temporary file beside the destination and renamed into place, so a reader
never sees half an archive.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .compare import ComparisonRun
from .files import replacing
from .visualize import DEFAULT_CMAP, RangeMode, display_ranges, overlay

CSV_COLUMNS = ("image", "method", "status", "score", "seconds", "map_min", "map_max", "error")


def safe_stems(names: list[str]) -> list[str]:
    """File stems safe in any archive or file system, unique (case-insensitively) in order."""
    from .cli import unique_stems

    stems = [re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "image" for name in names]
    return unique_stems([Path(f"{stem}.image") for stem in stems])  # no folder: repeats get -2, -3, ...


def score_rows(run: ComparisonRun) -> list[dict[str, Any]]:
    """One row per (image, method) in input and method order; failed pairs have a status and an error."""
    rows = []
    for image in run.images:
        for method in run.methods:
            row: dict[str, Any] = {"image": image.name, "method": method}
            result = image.results.get(method)
            if result is not None:
                low, high = float(result.anomaly_map.min()), float(result.anomaly_map.max())
                row.update(
                    status="ok",
                    score=float(result.score),
                    seconds=float(result.timings.get("total", 0.0)),
                    map_min=low,
                    map_max=high,
                    error="",
                    **{key: float(value) for key, value in result.extras.items()},
                )
            else:
                error = image.error or image.errors.get(method) or run.method_errors.get(method, "not run")
                row.update(status="error", score=None, seconds=None, map_min=None, map_max=None, error=error)
            rows.append(row)
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    extras = sorted({key for row in rows for key in row} - set(CSV_COLUMNS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*CSV_COLUMNS, *extras], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if value is None else value) for key, value in row.items()})
    return buffer.getvalue()


def _png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
    return buffer.getvalue()


def write_archive(
    run: ComparisonRun,
    destination: str | os.PathLike,
    *,
    scale: RangeMode = "per_method",
    cmap: str = DEFAULT_CMAP,
    alpha: float = 0.5,
    extra_settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write the ZIP described in the module docstring to ``destination`` (atomically).

    Args:
        run: what :func:`zsad_core.compare.run_comparison` returned.
        destination: the ``.zip`` file to write; its folder must exist.
        scale, cmap, alpha: how the overlays are drawn (:mod:`zsad_core.visualize`).
        extra_settings: more entries for settings.json (e.g. the app's version).
    Returns:
        The path written.
    """
    destination = Path(destination)
    stems = safe_stems([image.name for image in run.images])
    ranges = display_ranges([image.results for image in run.images], scale)
    rows = score_rows(run)
    nested = [
        {
            "image": image.name,
            "file_stem": stem,
            "error": image.error,
            "results": {
                method: {
                    **result.summary(),
                    "overlay": f"overlays/{stem}__{method}.png",
                    "map": f"maps/{stem}__{method}.npy",
                }
                for method, result in image.results.items()
            },
            "errors": dict(image.errors),
        }
        for image, stem in zip(run.images, stems)
    ]
    settings = {
        **run.settings,
        "requested_methods": run.methods,
        "method_errors": run.method_errors,
        "colour_scale": {"mode": scale, "cmap": cmap, "alpha": alpha},
        **dict(extra_settings or {}),
    }
    with replacing(destination) as temporary:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for image, stem, image_ranges in zip(run.images, stems, ranges):
                for method, result in image.results.items():
                    low, high = image_ranges[method]
                    picture = overlay(image.picture, result, low, high, alpha=alpha, cmap=cmap, colorbar=True)
                    archive.writestr(f"overlays/{stem}__{method}.png", _png_bytes(picture))
                    archive.writestr(f"maps/{stem}__{method}.npy", _npy_bytes(result.anomaly_map))
            archive.writestr("scores.csv", _csv_text(rows))
            archive.writestr("scores.json", json.dumps({"category": run.category, "images": nested}, indent=2))
            archive.writestr("settings.json", json.dumps(settings, indent=2, default=str))
    return destination
