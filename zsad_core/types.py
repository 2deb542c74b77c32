"""Result and description types shared by every method, the CLI, evaluation and the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PromptEvidence:
    """The text-side inputs of one image's text score, kept so prompts can be explained later.

    The text score is ``softmax(logit_scale * e . [t_normal, t_abnormal])[abnormal]``, with ``e`` the
    image embedding and the anchors ``t`` reduced from the sentence embeddings by ``reducer``
    (:data:`zsad_core.prompts.REDUCERS`). Sentence rows are state-major: the rows of normal state i
    are ``[i * T, (i + 1) * T)`` with ``T = templates_per_state``; the abnormal states follow.

    Attributes:
        image_embedding: (D,) unit image embedding the method compares with the anchors.
        sentence_features: (P, D) float32 sentence embeddings, as the method reduces them (raw for
            ``mean_raw``); shared between the results of one category when they do not depend on the image.
        normal_states, abnormal_states: the prompt states, in sentence order.
        templates_per_state: T.
        reducer: name of the text reduction.
        logit_scale: the factor on cosine similarities before the softmax.
        score_name: what the text score is for this method (the image score itself, or its text part).
    """

    image_embedding: np.ndarray
    sentence_features: np.ndarray
    normal_states: tuple[str, ...]
    abnormal_states: tuple[str, ...]
    templates_per_state: int
    reducer: str
    logit_scale: float
    score_name: str


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
        evidence: what :func:`zsad_core.explain.explain_prompts` needs to tell how much each prompt
            state moves the score; kept only when ``detect(..., with_evidence=True)``.
    """

    score: float
    anomaly_map: np.ndarray
    method: str
    category: str
    model_map: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, float] = field(default_factory=dict)
    evidence: PromptEvidence | None = None

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
