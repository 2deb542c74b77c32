"""Result and description types shared by every method, the CLI, evaluation and the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class AnomalyResult:
    """What a detector returns for one image.

    Attributes:
        score: image-level anomaly score (higher = more anomalous). Its range is the method's own
            (``MethodInfo.score_range``).
        anomaly_map: (H, W) float32 map at the input image's own resolution (after EXIF
            orientation), in the method's own units (``MethodInfo.map_range``).
        method: id of the method that produced it.
        category: the category (class name) the detector was prepared for.
        model_map: (S, S) float32 map at the method's input size, before resizing back; the papers'
            evaluation protocol computes pixel metrics on these.
        timings: seconds spent per stage ("preprocess", "model", "postprocess", "total").
        extras: method-specific per-image values (e.g. SDP's ``p_cls`` and ``p_max``), floats only.
    """

    score: float
    anomaly_map: np.ndarray
    method: str
    category: str
    model_map: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the input image and of ``anomaly_map``."""
        return int(self.anomaly_map.shape[0]), int(self.anomaly_map.shape[1])

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (no arrays)."""
        return {
            "method": self.method,
            "category": self.category,
            "score": float(self.score),
            "map_shape": list(self.anomaly_map.shape),
            "map_min": float(self.anomaly_map.min()),
            "map_max": float(self.anomaly_map.max()),
            "seconds": round(float(self.timings.get("total", 0.0)), 4),
            **{key: float(value) for key, value in self.extras.items()},
        }


@dataclass(frozen=True)
class MethodInfo:
    """Static description of a registered method (what ``python -m zsad_core list`` prints)."""

    id: str
    name: str
    paper: str
    training_free: bool
    default_model: str
    image_size: int
    map_range: tuple[float, float]
    score_range: tuple[float, float] = (0.0, 1.0)
    description: str = ""
