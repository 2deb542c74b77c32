"""Partial results of an evaluation: each finished category saved as soon as it completes, so that
``--resume`` can reuse it (and refuse one made with other settings or other images).

Files: ``<out>/partial/<dataset>__<method>__<category>.json``, written atomically.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .data import Sample
from .eval_config import EvaluationError

__all__ = ["PARTIAL_FORMAT", "load_partial", "partial_path"]

PARTIAL_FORMAT = "zsad-eval-partial/1"


def _safe_name(text: str) -> str:
    """A file-name-safe rendering of a dataset, method or category name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def partial_path(out_dir: Path, dataset_key: str, method: str, category: str) -> Path:
    """Where the partial result of one dataset, method and category lives under ``out_dir``."""
    name = f"{_safe_name(dataset_key)}__{_safe_name(method)}__{_safe_name(category)}.json"
    return out_dir / "partial" / name


def load_partial(
    path: Path, key: dict[str, str], settings: dict[str, Any], samples: list[Sample]
) -> dict[str, Any] | None:
    """A finished category from ``path``, or None if absent/unreadable. Raises on a settings mismatch."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a damaged file is recomputed (writes are atomic, so this is rare)
    if not isinstance(data, dict) or data.get("format") != PARTIAL_FORMAT or data.get("key") != key:
        return None
    saved = data.get("settings", {})
    differences = [
        f"{name}={saved.get(name)!r} there, {value!r} now"
        for name, value in settings.items()
        if saved.get(name) != value
    ]
    if differences:
        raise EvaluationError(
            f"cannot resume: {path} was computed with other settings ({'; '.join(differences)}); "
            "rerun without --resume to recompute everything, or use another --out folder"
        )
    if [image.get("path") for image in data.get("images", [])] != [str(s.image_path) for s in samples]:
        raise EvaluationError(
            f"cannot resume: the images of {key['dataset']}/{key['category']} differ from those in {path} "
            "(dataset path or content changed); rerun without --resume or use another --out folder"
        )
    return data
