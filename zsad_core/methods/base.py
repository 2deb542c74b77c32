"""The detector interface every method implements: prepare once per category, detect many images.

A method subclasses :class:`Detector` and implements two things:

- ``_prepare_text(class_name, prompts)``: build the text side for a category (usually cached
  text anchors) and return it; the base class keeps it.
- ``predict(pixels, text)``: pure torch on a normalised (B, 3, S, S) batch, returning a
  :class:`Prediction` with image scores and smoothed S x S maps.

The base class does everything else the same way for every method, so maps are comparable:
decoding (:mod:`zsad_core.preprocess`), batching, resizing maps back to each input's own size
(:mod:`zsad_core.postprocess`), timings and the result type. Methods never read files, never import
a UI and never pick colours.
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from ..backbone import ClipBackbone
from ..postprocess import resize_map
from ..preprocess import ImageError, ImageInput, images_to_batch, load_image
from ..prompts import PromptSet, clean_text, sentence_embeddings
from ..types import AnomalyResult, MethodInfo, PromptEvidence


@dataclass(frozen=True)
class MethodConfig:
    """Settings shared by every method; each method's config adds its own (paper defaults).

    Attributes:
        model: backbone model string (see :mod:`zsad_core.backbone`).
        image_size: input side S in pixels.
        quick_gelu: run the image and text towers with QuickGELU (see methods.md §1.1).
        sigma: Gaussian smoothing of the S x S map, in pixels (0 = none).
        batch_size: images per forward pass in :meth:`Detector.detect`.
    """

    model: str
    image_size: int
    quick_gelu: bool = False
    sigma: float = 4.0
    batch_size: int = 8

    def replace(self, **changes: Any) -> MethodConfig:
        """A copy with ``changes``; unknown names raise ``TypeError`` listing the valid ones."""
        valid = {f.name for f in fields(self)}
        unknown = set(changes) - valid
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no setting(s) {sorted(unknown)}; valid settings: {sorted(valid)}"
            )
        return replace(self, **changes)


@dataclass
class Prediction:
    """Batch output of :meth:`Detector.predict`.

    Attributes:
        scores: (B,) image scores.
        maps: (B, S, S) float32 anomaly maps at the model input size, smoothed.
        extras: name -> (B,) per-image values worth reporting (method specific).
        embeddings: (B, D) unit image embeddings the text score compares with the anchors, or None
            for a method without a text score.
        sentence_features: (B, P, D) per-image sentence embeddings when the text side depends on
            the image (AdaCLIP's dynamic prompts), else None (the category's shared ones are used).
    """

    scores: np.ndarray
    maps: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    embeddings: torch.Tensor | None = None
    sentence_features: torch.Tensor | None = None


@dataclass(frozen=True)
class PreparedText:
    """What :meth:`Detector.prepare` produced for one category."""

    category: str
    prompts: PromptSet
    features: Any


class Detector(ABC):
    """Base class of all methods. Build one with :func:`zsad_core.create_detector`."""

    method_id: ClassVar[str]
    info: ClassVar[MethodInfo]
    config_class: ClassVar[type[MethodConfig]]
    default_prompts: ClassVar[PromptSet]
    # What the text score (see :class:`~zsad_core.types.PromptEvidence`) is for this method.
    text_score_name: ClassVar[str] = "image score"

    def __init__(self, config: MethodConfig, backbone: ClipBackbone) -> None:
        self.config = config
        self.backbone = backbone
        self._prepared: PreparedText | None = None

    def __repr__(self) -> str:
        category = self._prepared.category if self._prepared else None
        return f"{type(self).__name__}(model={self.config.model!r}, size={self.config.image_size}, category={category!r})"

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def category(self) -> str | None:
        return self._prepared.category if self._prepared else None

    @property
    def prompts(self) -> PromptSet | None:
        return self._prepared.prompts if self._prepared else None

    # ------------------------------------------------------------------------------------ prepare
    def prepare(
        self,
        category: str,
        prompts: PromptSet | None = None,
        *,
        normal_states: Sequence[str] | None = None,
        abnormal_states: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
    ) -> Detector:
        """Build the text side for ``category`` (the class name put into prompts, e.g. "bottle").

        Args:
            category: object or texture name as it should read in a sentence.
            prompts: a full prompt set; defaults to the method's paper prompts.
            normal_states, abnormal_states, templates: replace just that part of the prompts.
        Returns:
            self, so ``create_detector("winclip").prepare("bottle").detect(image)`` reads naturally.
        """
        base = prompts if prompts is not None else self.default_prompts
        prompts = base.with_overrides(normal_states, abnormal_states, templates)
        category = clean_text(category, "the category")
        features = self._prepare_text(category, prompts)
        self._prepared = PreparedText(category=category, prompts=prompts, features=features)
        return self

    def prepared(
        self,
        category: str,
        prompts: PromptSet | None = None,
        *,
        normal_states: Sequence[str] | None = None,
        abnormal_states: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
    ) -> Detector:
        """A new detector prepared for ``category``, sharing this one's backbone and trained parts.

        Unlike :meth:`prepare`, this one is left unchanged, so a server can keep one detector per
        model and give each request its own category and prompts without any shared mutable state
        (the weights are only read). Arguments as :meth:`prepare`.
        """
        twin = copy.copy(self)
        twin._prepared = None
        return twin.prepare(
            category, prompts, normal_states=normal_states, abnormal_states=abnormal_states, templates=templates
        )

    @abstractmethod
    def _prepare_text(self, class_name: str, prompts: PromptSet) -> Any:
        """Compute (or fetch from the cache) the text features for a category."""

    # ------------------------------------------------------------------------------ text evidence
    @property
    def text_reducer(self) -> str:
        """Name of the reduction from sentence embeddings to anchors (:data:`~zsad_core.prompts.REDUCERS`)."""
        raise NotImplementedError(f"{self.method_id} does not describe its text reduction")

    @property
    def text_logit_scale(self) -> float:
        """The factor on cosine similarities before the text score's softmax."""
        raise NotImplementedError(f"{self.method_id} does not describe its text score")

    def sentence_features(self, prepared: PreparedText) -> torch.Tensor:
        """(P, D) sentence embeddings of a prepared category, as :attr:`text_reducer` reduces them."""
        return sentence_embeddings(self.backbone, prepared.category, prepared.prompts)

    def _evidence(self, prediction: Prediction, prepared: PreparedText) -> list[PromptEvidence]:
        """One :class:`PromptEvidence` per image of ``prediction``."""
        if prediction.embeddings is None:
            raise NotImplementedError(f"{self.method_id} does not report the image embedding of its text score")
        embeddings = prediction.embeddings.detach().float().cpu().numpy()
        if prediction.sentence_features is not None:
            per_image = list(prediction.sentence_features.detach().float().cpu().numpy())
        else:  # one array shared by every result of the category
            shared = self.sentence_features(prepared).detach().float().cpu().numpy()
            per_image = [shared] * len(embeddings)
        prompts = prepared.prompts
        return [
            PromptEvidence(
                image_embedding=embedding,
                sentence_features=sentences,
                normal_states=prompts.normal_states,
                abnormal_states=prompts.abnormal_states,
                templates_per_state=len(prompts.templates),
                reducer=self.text_reducer,
                logit_scale=float(self.text_logit_scale),
                score_name=self.text_score_name,
            )
            for embedding, sentences in zip(embeddings, per_image)
        ]

    # ------------------------------------------------------------------------------------- detect
    @abstractmethod
    def predict(self, pixels: torch.Tensor, text: Any) -> Prediction:
        """Score a normalised batch.

        Args:
            pixels: (B, 3, S, S) float32 batch on the backbone's device.
            text: what ``_prepare_text`` returned.
        """

    @torch.no_grad()
    def detect(
        self,
        images: ImageInput | Sequence[ImageInput],
        batch_size: int | None = None,
        *,
        with_evidence: bool = False,
        errors: str = "raise",
    ) -> AnomalyResult | ImageError | list[AnomalyResult] | list[AnomalyResult | ImageError]:
        """Anomaly score and map for one image, or a list of results for a sequence of images.

        Args:
            images: a path, bytes, PIL image or (H, W[, C]) array, or a list of them.
            batch_size: images per forward pass (default: the config's).
            with_evidence: keep each result's :class:`~zsad_core.types.PromptEvidence`, for
                :func:`zsad_core.explain.explain_prompts`.
            errors: ``"raise"``: an image that cannot be decoded raises and nothing is returned;
                ``"collect"``: it takes the place of its result as the :class:`ImageError` (which
                names it), so the good results and the per-image errors come back together, in input order.
        Returns:
            :class:`AnomalyResult` (or a list), each map at its input image's own resolution.
            ``timings`` are per image: its own decoding and postprocessing, and its share of the
            batch's resize and forward pass (one pass serves the whole batch).
        Raises:
            RuntimeError: :meth:`prepare` was not called.
            ValueError: ``errors`` is neither "raise" nor "collect".
            zsad_core.preprocess.ImageError: an image cannot be decoded (``errors="raise"``).
        """
        if errors not in ("raise", "collect"):
            raise ValueError(f"errors must be 'raise' or 'collect', got {errors!r}")
        prepared = self._prepared  # read once: a concurrent prepare() must not mix categories
        if prepared is None:
            raise RuntimeError(f"{self.method_id}: call prepare(category) before detect()")
        single = isinstance(images, (str, bytes, Image.Image, np.ndarray)) or hasattr(images, "__fspath__")
        items = [images] if single else list(images)
        batch_size = batch_size or self.config.batch_size
        outcomes: list[AnomalyResult | ImageError] = []
        for start in range(0, len(items), batch_size):
            outcomes += self._detect_chunk(items[start : start + batch_size], prepared, with_evidence, errors)
        return outcomes[0] if single else outcomes

    def _detect_chunk(
        self, chunk: Sequence[ImageInput], prepared: PreparedText, with_evidence: bool, errors: str
    ) -> list[AnomalyResult | ImageError]:
        """One forward pass over the images of ``chunk`` that decode; see :meth:`detect`."""
        outcomes: list[AnomalyResult | ImageError | None] = []
        decoded, decode_seconds = [], []
        for item in chunk:
            began = time.perf_counter()
            try:
                decoded.append(load_image(item))
            except ImageError as error:
                if errors == "raise":
                    raise
                outcomes.append(error)
                continue
            decode_seconds.append(time.perf_counter() - began)
            outcomes.append(None)
        if not decoded:
            return outcomes
        mean, std = self.backbone.mean_std
        began = time.perf_counter()
        pixels, sizes = images_to_batch(decoded, self.config.image_size, mean, std)
        pixels = pixels.to(self.device)
        batched_at = time.perf_counter()
        prediction = self.predict(pixels, prepared.features)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        predicted_at = time.perf_counter()
        evidence = self._evidence(prediction, prepared) if with_evidence else [None] * len(sizes)
        share = 1.0 / len(sizes)
        results = []
        for index, size in enumerate(sizes):
            post_began = time.perf_counter()
            model_map = np.asarray(prediction.maps[index], dtype=np.float32)
            result = AnomalyResult(
                score=float(prediction.scores[index]),
                anomaly_map=resize_map(model_map, size),
                method=self.method_id,
                category=prepared.category,
                model_map=model_map,
                extras={name: float(values[index]) for name, values in prediction.extras.items()},
                evidence=evidence[index],
            )
            timings = {
                "preprocess": decode_seconds[index] + (batched_at - began) * share,
                "model": (predicted_at - batched_at) * share,
                "postprocess": time.perf_counter() - post_began,
            }
            result.timings = {**timings, "total": sum(timings.values())}
            results.append(result)
        filled = iter(results)
        return [outcome if outcome is not None else next(filled) for outcome in outcomes]

    # ------------------------------------------------------------------------------ dataset level
    def dataset_scores(self, results: Sequence[AnomalyResult]) -> np.ndarray:
        """Image scores for a whole test set, as the paper's evaluation computes them.

        The default is each result's own score; methods whose paper normalises over the test set
        (SDP, SDP+) override this. Evaluation calls it once per category.
        """
        return np.array([result.score for result in results], dtype=np.float64)
