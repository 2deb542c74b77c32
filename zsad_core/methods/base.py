"""The detector interface every method implements: prepare once per category, detect many images.

Each method has two parts, in the way anomalib separates its torch model from its wrapper and
segment-anything ``Sam`` from its predictor:

- an :class:`AnomalyModel`, a pure torch ``nn.Module``: ``model(pixels, text)`` maps a normalised
  (B, 3, S, S) batch and the category's prepared text tensors to a :class:`ModelOutput` (image
  scores and smoothed S x S maps) with no numpy, no scipy and no copy to the host, so it runs on any
  device, in any precision, and exports (:mod:`zsad_core.export`);
- a :class:`Detector`, the glue: ``_prepare_text(class_name, prompts)`` builds the text side of a
  category (the base class keeps it), and the base class does everything else the same way for
  every method, so maps are comparable: decoding and resizing (:mod:`zsad_core.preprocess`),
  batching, resizing maps back to each input's own size, timings and the result type.

Methods never read files, never import a UI and never pick colours.
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..backbone import ClipBackbone, PlainPass
from ..postprocess import resize_map_tensor
from ..preprocess import ImageError, ImageInput, check_resize_policy, images_to_batch, load_image
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
        resize: how images are resized to S x S, one of :data:`~zsad_core.preprocess.RESIZE_POLICIES`;
            each method's default is its reference implementation's (see :mod:`zsad_core.preprocess`).
    """

    model: str
    image_size: int
    quick_gelu: bool = False
    sigma: float = 4.0
    batch_size: int = 8
    resize: str = "tensor-bicubic"

    def __post_init__(self) -> None:
        check_resize_policy(self.resize)

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
class ModelOutput:
    """Batch output of an :class:`AnomalyModel`; every tensor on the model's device.

    Attributes:
        scores: (B,) image scores.
        maps: (B, S, S) float32 anomaly maps at the model input size, smoothed.
        extras: name -> (B,) per-image values worth reporting (method specific).
        embeddings: (B, D) unit image embeddings the text score compares with the anchors, or None.
        sentence_features: (B, P, D) per-image sentence embeddings when the text side depends on the
            image (AdaCLIP's dynamic prompts), else None.
    """

    scores: torch.Tensor
    maps: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    embeddings: torch.Tensor | None = None
    sentence_features: torch.Tensor | None = None


class SharedPasses:
    """Image-side passes that several methods' models can share on one batch, each computed once.

    A caller that runs several methods on the same pixel tensor (:func:`detect_together`) hands
    every model the same instance; a model alone gets a fresh one. Entries are keyed by the
    backbone, the pixel tensor and what was computed, so a model can only ever read a pass of its
    own backbone on its own input: results are identical to running alone.
    """

    def __init__(self) -> None:
        self._values: dict[tuple, Any] = {}
        self._inputs: list[torch.Tensor] = []  # keep keyed tensors alive, so their ids stay unique
        self.computed: list[str] = []  # names of the passes run, in order (for tests and benchmarks)

    def get(self, backbone: ClipBackbone, pixels: torch.Tensor, name: str, compute: Callable[[], Any]) -> Any:
        """The pass ``name`` of ``backbone`` on ``pixels``, computed by ``compute()`` the first time."""
        key = (id(backbone), id(pixels), name)
        if key not in self._values:
            self._inputs.append(pixels)
            self._values[key] = compute()
            self.computed.append(name)
        return self._values[key]

    def plain(self, backbone: ClipBackbone, pixels: torch.Tensor) -> PlainPass:
        """The backbone's :meth:`~zsad_core.backbone.ClipBackbone.plain_pass` on ``pixels``."""
        return self.get(backbone, pixels, "plain", lambda: backbone.plain_pass(pixels))


class AnomalyModel(nn.Module):
    """A method's pure torch part: ``forward(pixels, text) -> ModelOutput``.

    ``pixels`` is a (B, 3, S, S) normalised batch on the model's device; ``text`` is what the
    detector's ``_prepare_text`` returned for a category (``Detector.text_features``); ``passes``
    (optional) is a :class:`SharedPasses` of the batch. Subclasses hold the backbone (shared,
    frozen), the method's config and any trained parts.
    """

    def __init__(self, backbone: ClipBackbone, config: MethodConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def forward(self, pixels: torch.Tensor, text: Any, passes: SharedPasses | None = None) -> ModelOutput:
        """Score a batch; ``passes`` lends passes already run on ``pixels`` by other methods' models."""
        raise NotImplementedError  # pragma: no cover - abstract


@dataclass
class Prediction:
    """Batch output of :meth:`Detector.predict`: a :class:`ModelOutput` copied to the host.

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

    @classmethod
    def from_output(cls, output: ModelOutput) -> Prediction:
        """Scores and extras as float64 numpy, maps as float32 numpy; embeddings stay tensors."""

        def host(values: torch.Tensor, dtype: type) -> np.ndarray:
            return values.detach().float().cpu().numpy().astype(dtype)

        return cls(
            scores=host(output.scores, np.float64),
            maps=host(output.maps, np.float32),
            extras={name: host(values, np.float64) for name, values in output.extras.items()},
            embeddings=output.embeddings,
            sentence_features=output.sentence_features,
        )


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
        self.model: AnomalyModel = self.build_model()

    @abstractmethod
    def build_model(self) -> AnomalyModel:
        """The method's torch model on ``self.backbone`` (called once, at the end of ``__init__``)."""

    def __repr__(self) -> str:
        category = self._prepared.category if self._prepared else None
        return (
            f"{type(self).__name__}(model={self.config.model!r}, size={self.config.image_size}, category={category!r})"
        )

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

    @property
    def text_features(self) -> Any:
        """The prepared category's text side, as :attr:`model` takes it (anchors (D, 2) for most methods).

        Raises:
            RuntimeError: :meth:`prepare` was not called.
        """
        return self._require_prepared().features

    def use_text_features(self, category: str, features: Any, prompts: PromptSet | None = None) -> Detector:
        """Prepare with text features computed elsewhere (e.g. read from :attr:`text_features` of another run).

        Args:
            category: the class name they were built for (kept for results and reports).
            features: what :attr:`text_features` returns for this method; tensors move to this device.
            prompts: the prompts they came from (default: the method's paper prompts).
        Returns:
            self.
        """
        if isinstance(features, torch.Tensor):
            features = features.to(self.device, torch.float32)
        prompts = prompts if prompts is not None else self.default_prompts
        self._prepared = PreparedText(category=" ".join(category.split()), prompts=prompts, features=features)
        return self

    def _require_prepared(self) -> PreparedText:
        prepared = self._prepared  # read once: a concurrent prepare() must not mix categories
        if prepared is None:
            raise RuntimeError(f"{self.method_id}: call prepare(category) before detect()")
        return prepared

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
    def preprocess(self, images: Sequence[ImageInput]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Images (decoded RGB PIL images, or anything :func:`load_image` takes) -> ((B, 3, S, S)
        normalised batch on the CPU, [(H, W), ...] sizes), as :meth:`detect` feeds :attr:`model`."""
        decoded = [
            image if isinstance(image, Image.Image) and image.mode == "RGB" else load_image(image) for image in images
        ]
        mean, std = self.backbone.mean_std
        return images_to_batch(decoded, self.config.image_size, mean, std, self.config.resize)

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor, text: Any = None) -> Prediction:
        """Score an already-normalised batch (e.g. from your own data pipeline or :meth:`preprocess`).

        Args:
            pixels: (B, 3, S, S) normalised batch (moved to the model's device).
            text: text features (:attr:`text_features`); default: the prepared category's.
        Returns:
            :class:`Prediction` at the model input size S (not resized to any image size).
        """
        text = self.text_features if text is None else text
        return Prediction.from_output(self.model(pixels.to(self.device), text))

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
        prepared = self._require_prepared()
        self.warn_if_untrained()
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
        outcomes, decoded, decode_seconds = decode_chunk(chunk, errors)
        if not decoded:
            return list(outcomes)
        began = time.perf_counter()
        pixels, sizes = self.preprocess(decoded)
        resize_share = (time.perf_counter() - began) / len(sizes)
        results = self.run_batch(pixels, sizes, with_evidence=with_evidence, prepared=prepared)
        return merge_chunk(outcomes, results, decode_seconds, resize_share)

    def warn_if_untrained(self) -> None:
        """Methods with trained parts warn once when they run untrained; nothing to say here."""
        return None

    @property
    def preprocess_key(self) -> tuple:
        """Detectors with equal keys get equal :meth:`preprocess` batches from the same images."""
        return (self.config.image_size, self.backbone.mean_std, self.config.resize)

    @torch.no_grad()
    def run_batch(
        self,
        pixels: torch.Tensor,
        sizes: Sequence[tuple[int, int]],
        *,
        passes: SharedPasses | None = None,
        with_evidence: bool = False,
        prepared: PreparedText | None = None,
    ) -> list[AnomalyResult]:
        """Results for one batch from :meth:`preprocess`, each map resized to its image's ``sizes`` entry.

        Args:
            pixels: (B, 3, S, S) normalised batch.
            sizes: B original (H, W) sizes.
            passes: passes shared with other methods on the same ``pixels`` (:func:`detect_together`).
            with_evidence: as :meth:`detect`.
            prepared: the prepared category (default: this detector's).
        Returns:
            B results with ``timings`` "model" and "postprocess" (per image) and "total" (their sum).
        """
        prepared = prepared or self._require_prepared()
        began = time.perf_counter()
        output = self.model(pixels.to(self.device), prepared.features, passes)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        prediction = Prediction.from_output(output)
        evidence = self._evidence(prediction, prepared) if with_evidence else [None] * len(sizes)
        shared_seconds = (time.perf_counter() - began) / len(sizes)  # one pass serves the whole batch
        results = []
        for index, size in enumerate(sizes):
            post_began = time.perf_counter()
            # The map goes back to the image's size on the model's device; one copy to the host.
            resized = resize_map_tensor(output.maps[index], size).cpu().numpy()
            result = AnomalyResult(
                score=float(prediction.scores[index]),
                anomaly_map=resized,
                method=self.method_id,
                category=prepared.category,
                model_map=prediction.maps[index],
                extras={name: float(values[index]) for name, values in prediction.extras.items()},
                evidence=evidence[index],
            )
            post = time.perf_counter() - post_began
            result.timings = {"model": shared_seconds, "postprocess": post, "total": shared_seconds + post}
            results.append(result)
        return results

    # ------------------------------------------------------------------------------ dataset level
    def dataset_scores(self, results: Sequence[AnomalyResult]) -> np.ndarray:
        """Image scores for a whole test set, as the paper's evaluation computes them.

        The default is each result's own score; methods whose paper normalises over the test set
        (SDP, SDP+) override this. Evaluation calls it once per category.
        """
        return np.array([result.score for result in results], dtype=np.float64)


def decode_chunk(
    chunk: Sequence[ImageInput], errors: str = "raise"
) -> tuple[list[ImageError | None], list[Image.Image], list[float]]:
    """Decode a chunk of images for :meth:`Detector.detect` and :func:`detect_together`.

    Returns:
        outcomes: per input, its :class:`ImageError` (``errors="collect"``) or None (decoded);
        decoded: the decoded images, in input order; seconds: each decoded image's decoding time.
    Raises:
        ImageError: an image cannot be decoded and ``errors="raise"``.
    """
    outcomes: list[ImageError | None] = []
    decoded, seconds = [], []
    for item in chunk:
        began = time.perf_counter()
        try:
            decoded.append(load_image(item))
        except ImageError as error:
            if errors == "raise":
                raise
            outcomes.append(error)
            continue
        seconds.append(time.perf_counter() - began)
        outcomes.append(None)
    return outcomes, decoded, seconds


def merge_chunk(
    failures: Sequence[ImageError | None],
    results: Sequence[AnomalyResult],
    decode_seconds: Sequence[float],
    resize_seconds: float,
) -> list[AnomalyResult | ImageError]:
    """A chunk's outcomes in input order: each :func:`decode_chunk` failure in its place, the results
    (of the decoded images, in order) in the others, with each image's decoding and its share of the
    resize added to its ``timings`` ("preprocess", and "total")."""
    for result, seconds in zip(results, decode_seconds):
        result.timings["preprocess"] = seconds + resize_seconds
        result.timings["total"] += seconds + resize_seconds
    filled = iter(results)
    return [failure if failure is not None else next(filled) for failure in failures]


@torch.no_grad()
def detect_together(
    detectors: Sequence[Detector],
    images: Sequence[ImageInput],
    batch_size: int = 8,
    *,
    with_evidence: bool = False,
    errors: str = "raise",
) -> dict[str, list[AnomalyResult | ImageError] | Exception]:
    """Several prepared detectors on the same images, running every pass they can share once.

    Each batch is decoded once and preprocessed once per distinct :attr:`Detector.preprocess_key`;
    models on the same backbone and batch share passes through one :class:`SharedPasses` (the
    plain image pass of WinCLIP, SDP's original path and AdaCLIP's un-prompted pass; SDP+ reuses
    SDP's dual path), so the results equal each detector's own :meth:`Detector.detect`. A pass is
    timed in the results of the first method that needed it.

    Args:
        detectors: prepared detectors with distinct method ids.
        images: paths, bytes, PIL images or arrays.
        batch_size: images per forward pass.
        with_evidence, errors: as :meth:`Detector.detect`.
    Returns:
        method id -> its results in image order (with ``errors="collect"``, an image that cannot be
        decoded is its :class:`ImageError` in every method's list), or the exception that stopped
        that method (the others go on).
    Raises:
        zsad_core.preprocess.ImageError: an image cannot be decoded and ``errors="raise"``.
    """
    ids = [detector.method_id for detector in detectors]
    if len(set(ids)) != len(ids):
        raise ValueError(f"detect_together needs distinct methods, got {ids}")
    if errors not in ("raise", "collect"):
        raise ValueError(f"errors must be 'raise' or 'collect', got {errors!r}")
    outcomes: dict[str, list[AnomalyResult | ImageError] | Exception] = {method: [] for method in ids}
    for detector in detectors:
        detector.warn_if_untrained()
    items = list(images)
    for start in range(0, len(items), batch_size):
        failures, decoded, decode_seconds = decode_chunk(items[start : start + batch_size], errors)
        passes = SharedPasses()
        batches: dict[tuple, tuple[torch.Tensor, list[tuple[int, int]], float]] = {}
        for detector in detectors:
            done = outcomes[detector.method_id]
            if isinstance(done, Exception):
                continue
            batch: list[AnomalyResult] = []
            resize_seconds = 0.0  # no image of the chunk decoded: nothing to resize
            try:
                if decoded:
                    key = (detector.preprocess_key, detector.device)
                    if key not in batches:
                        began = time.perf_counter()
                        pixels, sizes = detector.preprocess(decoded)
                        batches[key] = (pixels.to(detector.device), sizes, (time.perf_counter() - began) / len(sizes))
                    pixels, sizes, resize_seconds = batches[key]
                    batch = detector.run_batch(pixels, sizes, passes=passes, with_evidence=with_evidence)
            except Exception as error:  # noqa: BLE001 - one method's failure must not stop the others
                outcomes[detector.method_id] = error
                continue
            done.extend(merge_chunk(failures, batch, decode_seconds, resize_seconds))
    return outcomes
