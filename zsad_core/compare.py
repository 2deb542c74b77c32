"""Several methods on several images, side by side: what the app (and any server) runs per request.

- :class:`DetectorPool` builds each detector once per (method, model, size, checkpoint, device,
  precision) and keeps a bounded number of them (least recently used dropped, with its backbone
  when no other detector uses it). Requests never share mutable state: each gets its own prepared
  copy (:meth:`~zsad_core.methods.base.Detector.prepared`) of a pooled detector, whose weights are
  only read.
- :func:`run_comparison` decodes every image, runs every method on every image and keeps going
  when something fails: an image that cannot be decoded or is over a pixel limit, a method whose
  weights or checkpoint are missing, an out-of-memory error on one image. Each failure becomes a
  readable message in the :class:`ComparisonRun`; every other result is kept. A time limit stops
  a run between images: what was done is kept, the rest is reported as not run.
"""

from __future__ import annotations

import io
import os
import platform
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .availability import MethodUnavailableError, method_status
from .backbone import ModelSpecError, WeightsNotFoundError, release_backbone, resolve_device, resolve_precision
from .methods.base import Detector, detect_together
from .preprocess import ImageError, ImageInput, load_image
from .prompts import PromptError
from .registry import create_detector, get_method
from .types import AnomalyResult

ProgressCallback = Callable[[float, str], None]
NOT_RUN = "not run: the time limit was reached"  # what a run stopped by its time limit says of the rest


@dataclass(frozen=True)
class DetectorKey:
    """What identifies one pooled detector."""

    method: str
    model: str
    image_size: int
    checkpoint: str | None
    device: str
    precision: str


class DetectorPool:
    """Detectors built once and shared read-only between requests, at most ``max_detectors`` of them.

    Args:
        max_detectors: how many detectors to keep; the least recently used one is dropped first.
        device: "cpu", "cuda", ... or None for CUDA when available.
        precision: "fp32", "fp16", "bf16" or None (fp32 on CPU, fp16 on CUDA).
    """

    def __init__(self, max_detectors: int = 8, device: str | None = None, precision: str | None = None) -> None:
        if max_detectors < 1:
            raise ValueError(f"max_detectors must be at least 1, got {max_detectors}")
        self.max_detectors = max_detectors
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self._detectors: OrderedDict[DetectorKey, Detector] = OrderedDict()
        self._lock = threading.Lock()
        self._seconds: dict[tuple[str, str], list[float]] = {}
        self.builds = 0

    def key(self, method: str, model: str | None = None, checkpoint: str | None = None) -> DetectorKey:
        """The pool key of a method on ``model`` (None: the method's paper backbone and size)."""
        info = get_method(method).info
        return DetectorKey(
            method=method,
            model=model or info.default_model,
            image_size=info.image_size,
            checkpoint=checkpoint,
            device=self.device,
            precision=self.precision,
        )

    def get(self, method: str, model: str | None = None, checkpoint: str | None = None) -> Detector:
        """The pooled detector (not prepared for any category: use ``.prepared(category)``).

        Raises:
            whatever :func:`zsad_core.create_detector` raises: missing weights, a checkpoint that
            does not fit, a bad model name.
        """
        key = self.key(method, model, checkpoint)
        with self._lock:  # one build at a time: two requests for a new model must not build it twice
            detector = self._detectors.get(key)
            if detector is None:
                settings = {"checkpoint": checkpoint} if checkpoint else {}
                detector = create_detector(
                    method,
                    model=key.model,
                    image_size=key.image_size,
                    device=key.device,
                    precision=key.precision,
                    **settings,
                )
                self.builds += 1
                self._detectors[key] = detector
                self._evict()
            self._detectors.move_to_end(key)
            return detector

    def _evict(self) -> None:
        while len(self._detectors) > self.max_detectors:
            _, dropped = self._detectors.popitem(last=False)
            spec = dropped.backbone.spec
            if all(kept.backbone.spec != spec for kept in self._detectors.values()):
                release_backbone(spec)

    def __len__(self) -> int:
        return len(self._detectors)

    def record_seconds(self, method: str, model: str, seconds: float) -> None:
        """Remember one image's time for :meth:`expected_seconds` (the last 20 are kept)."""
        with self._lock:
            history = self._seconds.setdefault((method, model), [])
            history.append(float(seconds))
            del history[:-20]

    def expected_seconds(self, method: str, model: str) -> float | None:
        """Median of the recent per-image times of ``method`` on ``model`` here, or None before any."""
        with self._lock:
            history = sorted(self._seconds.get((method, model), []))
        return history[len(history) // 2] if history else None


@dataclass
class ImageOutcome:
    """One input image's results.

    Attributes:
        name: the file name (or a generated one) it is reported under.
        picture: the decoded RGB image (reduced to ``max_side`` when asked), or None when it could
            not be decoded. Maps are at this picture's size.
        error: why it could not be decoded (None when it could).
        original_size: (width, height) as decoded, before any reduction.
        results: method id -> result, for the methods that succeeded on it.
        errors: method id -> message, for the methods that failed on it.
    """

    name: str
    picture: Image.Image | None
    error: str | None = None
    original_size: tuple[int, int] | None = None
    results: dict[str, AnomalyResult] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class ComparisonRun:
    """Everything one comparison produced.

    Attributes:
        category: the category the prompts were built for.
        methods: the requested method ids, in order.
        images: one outcome per input, in input order.
        method_errors: method id -> why it could not run at all (missing weights or checkpoint...).
        method_models: method id -> the backbone it ran on.
        settings: what made these results (models, sizes, checkpoints, prompts, versions, device).
        stopped: why the run stopped before the end (its time limit), or None when it ran to the end.
    """

    category: str
    methods: list[str]
    images: list[ImageOutcome]
    method_errors: dict[str, str] = field(default_factory=dict)
    method_models: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None

    @property
    def succeeded_methods(self) -> list[str]:
        """The methods with a result on at least one image, in request order."""
        return [method for method in self.methods if any(method in image.results for image in self.images)]

    def messages(self) -> list[str]:
        """Every failure as one readable line; a stop is one line for everything it left undone."""
        lines = [self.stopped] if self.stopped else []
        lines += [f"{method}: {message}" for method, message in self.method_errors.items() if message != NOT_RUN]
        for image in self.images:
            if image.error:
                lines.append(image.error)  # decoding errors already name the image
            lines += [f"{image.name}, {m}: {message}" for m, message in image.errors.items() if message != NOT_RUN]
        return lines

    def seconds_per_image(self) -> dict[str, float]:
        """Method id -> mean seconds per image it ran on."""
        totals: dict[str, list[float]] = {}
        for image in self.images:
            for method, result in image.results.items():
                totals.setdefault(method, []).append(result.timings.get("total", 0.0))
        return {method: sum(values) / len(values) for method, values in totals.items()}


def versions() -> dict[str, str]:
    """Versions of what computed the results (for the settings record)."""
    import open_clip

    from . import __version__

    return {
        "zsad": __version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
    }


def failure_message(error: BaseException) -> str:
    """A one-line explanation of an exception for a person (what a server shows instead of a traceback)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(error).lower():
        return "out of memory: try fewer or smaller images, one method at a time, or a smaller model"
    text = str(error).strip().splitlines()
    readable = (ImageError, PromptError, WeightsNotFoundError, ModelSpecError, MethodUnavailableError, ValueError)
    if isinstance(error, readable):
        return " ".join(line.strip() for line in text if line.strip()) or type(error).__name__
    return f"{type(error).__name__}: {text[0] if text else 'no message'}"


def pixel_limit_error(name: str, source: ImageInput, max_pixels: int) -> str | None:
    """Why the file or bytes ``source`` is over ``max_pixels`` by the size its header declares (read
    without decoding the pixels), or None when it is not over, or is not data Pillow can identify
    (decoding then says what is wrong)."""
    if not isinstance(source, (str, os.PathLike, bytes)):
        return None
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        return f"{name}: declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, beyond what can be decoded safely"
    except Exception:  # noqa: BLE001 - not an image, unreadable, a directory: load_image says which
        return None
    if width * height <= max_pixels:
        return None
    return f"{name}: {width}x{height} pixels is more than this server's limit of {max_pixels:,} per image"


def decode_images(
    images: Sequence[tuple[str, ImageInput]], max_side: int | None = None, max_pixels: int | None = None
) -> list[ImageOutcome]:
    """Decode every ``(name, source)``; an image that cannot be decoded gets an error, not an exception.

    Args:
        images: ``(name, source)`` pairs.
        max_side: reduce larger pictures (Lanczos, aspect kept) so their longer side is at most this,
            which bounds the memory of the maps a server keeps per session; None keeps every size.
        max_pixels: refuse files whose header declares more pixels than this, before decoding them
            (a server's limit per image, below the decoder's own ``ZSAD_MAX_IMAGE_PIXELS``); None: no limit.
    """
    outcomes = []
    for name, source in images:
        refused = pixel_limit_error(name, source, max_pixels) if max_pixels is not None else None
        if refused:
            outcomes.append(ImageOutcome(name=name, picture=None, error=refused))
            continue
        try:
            picture = load_image(source, name=name)
        except ImageError as error:
            outcomes.append(ImageOutcome(name=name, picture=None, error=failure_message(error)))
            continue
        original = picture.size
        if max_side is not None and max(original) > max_side:
            picture = picture.copy()
            picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        outcomes.append(ImageOutcome(name=name, picture=picture, original_size=original))
    return outcomes


def run_comparison(
    pool: DetectorPool,
    images: Sequence[tuple[str, ImageInput]],
    methods: Sequence[str],
    category: str,
    *,
    model: str | None = None,
    checkpoints: Mapping[str, str | None] | None = None,
    normal_states: Sequence[str] | None = None,
    abnormal_states: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    max_side: int | None = None,
    max_pixels: int | None = None,
    time_limit: float | None = None,
    downloadable: bool = False,
    progress: ProgressCallback | None = None,
) -> ComparisonRun:
    """Run every method on every image; failures become messages, never exceptions.

    Args:
        pool: where the detectors come from.
        images: ``(name, source)`` pairs: a path, bytes, PIL image or array each.
        methods: method ids, in the order to report them.
        category: the object or texture name put into the prompts.
        model: one backbone for every method, or None for each method's paper backbone.
        checkpoints: method id -> checkpoint for learnable methods (None or missing: the first
            one found on this disk, see :func:`zsad_core.availability.find_checkpoints`).
        normal_states, abnormal_states, templates: replace that part of every method's prompts.
        max_side, max_pixels: see :func:`decode_images`.
        time_limit: seconds the whole run may take, checked before each method is prepared and before
            each image (all methods run on an image together, sharing their passes; an image that has
            started is finished, so a run can pass the limit by one image's time); when
            reached, what was done is kept, the rest gets "not run" and ``stopped`` says why. None: no limit.
        downloadable: weights and released checkpoints missing from this disk may be downloaded
            (see :func:`zsad_core.availability.method_status`).
        progress: called with (fraction done, what is being done).
    Returns:
        A :class:`ComparisonRun` with results kept by :meth:`Detector.detect` ``with_evidence``.
    Raises:
        PromptError: an empty category or malformed prompts, before any model runs (nothing to show).
    """
    checkpoints = dict(checkpoints or {})
    report = progress or (lambda fraction, message: None)
    category = " ".join(category.split())
    if not category:
        raise PromptError("the category is empty: say what the images show, e.g. 'bottle' or 'metal nut'")
    methods = list(dict.fromkeys(methods))
    began_run = time.monotonic()
    outcomes = decode_images(images, max_side, max_pixels)
    run = ComparisonRun(category=category, methods=methods, images=outcomes)

    def out_of_time() -> bool:
        if run.stopped is None and time_limit is not None and time.monotonic() - began_run > time_limit:
            run.stopped = f"stopped at the time limit of {time_limit:g} s per request: the rest was not run"
        return run.stopped is not None

    prompt_settings = {}
    readable = [outcome for outcome in outcomes if outcome.picture is not None]
    steps = len(methods) + len(readable)
    prepared_detectors: dict[str, Detector] = {}
    for done, method in enumerate(methods):
        info = get_method(method).info
        method_model = model or info.default_model
        run.method_models[method] = method_model
        if out_of_time():
            run.method_errors[method] = NOT_RUN
            continue
        try:
            checkpoint = checkpoints.get(method)
            if not info.training_free and not checkpoint:
                status = method_status(method, method_model, downloadable=downloadable)
                if not status.available:
                    raise MethodUnavailableError(status.explanation)
                checkpoint = status.checkpoints[0].source
            report(done / steps, f"{info.name}: loading the model")
            detector = pool.get(method, method_model, checkpoint if not info.training_free else None)
            prepared = detector.prepared(
                category, normal_states=normal_states, abnormal_states=abnormal_states, templates=templates
            )
        except PromptError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure to build a method is reported, others go on
            run.method_errors[method] = failure_message(error)
            continue
        prepared_detectors[method] = prepared
        prompts = prepared.prompts
        prompt_settings[method] = {
            "model": method_model,
            "image_size": prepared.config.image_size,
            "checkpoint": checkpoint if not info.training_free else None,
            "sigma": prepared.config.sigma,
            "normal_states": list(prompts.normal_states),
            "abnormal_states": list(prompts.abnormal_states),
            "templates": list(prompts.templates),
        }
    # All methods on one image at a time: the passes they share run once (detect_together).
    for index, outcome in enumerate(readable):
        if out_of_time():
            outcome.errors.update({method: NOT_RUN for method in prepared_detectors})
            continue
        report((len(methods) + index) / steps, f"image {index + 1} of {len(readable)} ({outcome.name})")
        together = detect_together(list(prepared_detectors.values()), [outcome.picture], 1, with_evidence=True)
        for method, answer in together.items():
            if isinstance(answer, Exception):
                outcome.errors[method] = failure_message(answer)
            else:
                outcome.results[method] = answer[0]
                pool.record_seconds(method, run.method_models[method], answer[0].timings["total"])
    report(1.0, "done")
    run.settings = {
        "category": category,
        "methods": prompt_settings,
        "device": pool.device,
        "precision": pool.precision,
        "versions": versions(),
    }
    return run
