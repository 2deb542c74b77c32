"""The evaluation driver: methods x datasets x categories -> results.json, results.md, scores.csv.

Protocol (methods.md §6.1): per dataset, category and method, the detector is prepared with the
category's prompt name and run over the category's test images; metrics are computed per category
and averaged over the categories of a dataset (macro mean).

- **Papers' protocol** (default, ``protocol="model_map"``): pixel metrics on each result's
  ``model_map`` (S x S, the method's input size) against the ground-truth mask resized to S x S
  (bilinear on the 0/1 mask, then > 0.5, as the reference code does).
  ``full_resolution=True`` uses ``anomaly_map`` (the image's own size) against the mask at that size.
- **Image scores** come from ``detector.dataset_scores(results)`` over the whole category (SDP's
  paper score min-max normalises over the test set). ``dataset_scores`` receives results that carry
  ``score``, ``extras`` and ``model_map``; their ``anomaly_map`` is left empty (0 x 0) to save memory.
- **Image metrics** (:func:`zsad_core.metrics.image_metrics`) only when the dataset has normal and
  anomalous images; **pixel metrics** (:class:`zsad_core.metrics.PixelMetricAccumulator`, fed batch by
  batch in sample order; normal images count with all-zero masks) only when every anomalous image has
  a mask. Otherwise the metric is ``null`` in ``results.json`` and "–" in ``results.md``, with a note.
- **Bad images**: an image that cannot be decoded (or whose mask cannot be read) is recorded as failed
  with the reason, left out of the metrics, and the run goes on.

Outputs in ``out_dir``:

- ``results.json``: settings, per method / dataset / category the metrics as fractions, counts and
  failures, and per method / dataset the mean over categories (see :func:`evaluate`).
- ``results.md``: one paper-style table per method and dataset (rows: categories and the mean;
  columns: metrics in percent with one decimal) and a summary table of the means.
- ``scores.csv``: one row per image and method: method, dataset, category, path, label, defect,
  score (the dataset-level score the metrics use), raw_score (the single-image score), status,
  error, then each method extra (e.g. SDP's ``p_cls``, ``p_max``).
- ``partial/<dataset>__<method>__<category>.json``: each finished category (metrics and per-image
  scores), written atomically as soon as it completes; ``resume=True`` loads these instead of
  recomputing and refuses files made with other settings.

**Distributed** (``torchrun --nproc_per_node N -m zsad_core eval ...``; ``WORLD_SIZE > 1``): the
process group is initialised (NCCL with each rank on ``cuda:LOCAL_RANK`` when CUDA is used, gloo on
CPU). A category is cut into batches exactly as a single process cuts it, and rank ``r`` runs batches
``r, r + N, r + 2N, ...``. Each rank keeps its per-image records (scores, extras, float32 maps and
boolean masks) and at the end of the category they are gathered to rank 0 (over gloo), which puts the
batches back in order and runs exactly the code a single process runs. Since every batch has the same
images as in a single-process run and is fed to the metrics in the same order, the results are
identical (not merely close): batch composition can change the low bits of a forward pass, so
sharding by batch rather than by image matters. Only rank 0 writes files; every rank returns the
results dict.

Command line: ``python -m zsad_core eval ...`` (through :mod:`zsad_core.cli`, which calls
:func:`add_eval_arguments` and :func:`run_eval`) or ``python -m zsad_core.evaluate ...``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .backbone import ModelSpecError, WeightsNotFoundError, resolve_device, resolve_precision
from .data import AnomalyDataset, Sample, load_mask, open_dataset
from .data.masks import check_mask_size, resize_mask
from .data.registry import list_dataset_formats
from .files import write_text_atomic
from .metrics import METRIC_NAMES, PixelMetricAccumulator, image_metrics
from .preprocess import ImageError, load_image
from .registry import assign_checkpoints, get_method, list_methods
from .types import AnomalyResult
from .weights import find_released_weights

__all__ = [
    "AUPRO_CHOICES",
    "EvaluationError",
    "add_eval_arguments",
    "evaluate",
    "main",
    "run_eval",
    "select_samples",
    "split_data_specs",
]

RESULTS_FORMAT = "zsad-eval-results/1"
PARTIAL_FORMAT = "zsad-eval-partial/1"

#: ``--aupro`` choices -> the variant name of :func:`zsad_core.metrics.aupro`.
AUPRO_CHOICES: dict[str, str] = {"cflow": "cflow", "official": "mvtec", "mvtec": "mvtec"}
_AUPRO_DESCRIPTIONS = {
    "cflow": "cflow-ad variant (200 thresholds, FPR < 0.3, kept FPRs rescaled to [0, 1]; as April-GAN, "
    "AnomalyCLIP, CLIP-AD and the WinCLIP re-implementations)",
    "mvtec": "official MVTec AD variant (exact PRO curve integrated to FPR 0.3, divided by 0.3)",
}
_PROTOCOL_DESCRIPTIONS = {
    "model_map": "papers' protocol: pixel metrics on the S x S model map against masks resized to S x S "
    "(bilinear, > 0.5)",
    "full_resolution": "full resolution: pixel metrics on the map at each image's own size against the "
    "mask at that size",
}
_METRIC_HEADERS = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1max": "I-F1max",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "pixel_f1max": "P-F1max",
    "pixel_aupro": "P-AUPRO",
}
#: What results.json keeps of a finished category (the partial files also hold per-image scores).
_CATEGORY_FIELDS = (
    "metrics", "num_images", "num_normal", "num_anomalous", "num_failed", "failures", "pixel_metrics_exact",
    "seconds",
)  # fmt: skip
_IMAGE_METRICS = tuple(name for name in METRIC_NAMES if name.startswith("image_"))
_PIXEL_METRICS = tuple(name for name in METRIC_NAMES if name.startswith("pixel_"))


class EvaluationError(ValueError):
    """A usage or configuration problem (bad argument, unknown method or dataset, settings that do not
    match the partial results being resumed); the message says what and how to fix it."""


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (its folder created) through a temporary file: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _safe_name(text: str) -> str:
    """A file-name-safe rendering of a dataset, method or category name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def _split_list(value: str | Sequence[str] | None) -> list[str] | None:
    """ "a,b" or ["a", "b,c"] -> ["a", "b", "c"] (stripped, empty items dropped, order kept)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        out.extend(part.strip() for part in str(item).split(",") if part.strip())
    return out


def split_data_specs(data: str | Sequence[str]) -> list[str]:
    """Split dataset specs given as "mvtec:/a,visa:/b" (or a list of such strings) into single specs.

    A comma starts a new spec only when what follows begins with a known ``<format>:`` prefix, so
    paths containing commas survive.
    """
    items = [data] if isinstance(data, str) else list(data)
    prefixes = tuple(f"{name}:" for name in list_dataset_formats())
    specs: list[str] = []
    for item in items:
        current = ""
        for piece in str(item).split(","):
            if current and piece.strip().lower().startswith(prefixes):
                specs.append(current.strip())
                current = piece
            else:
                current = f"{current},{piece}" if current else piece
        if current.strip():
            specs.append(current.strip())
    return specs


def select_samples(samples: Sequence[Sample], limit: int | None) -> list[Sample]:
    """At most ``limit`` samples of one category, for quick looks, keeping both labels.

    Half the budget (rounded down) goes to normal images and the rest to anomalous ones (topped up
    from the other label when one runs short); within each label the picks are spread evenly over
    the sorted list, so every defect type tends to appear. The dataset order is kept.
    """
    if limit is None or len(samples) <= limit:
        return list(samples)
    normal = [i for i, s in enumerate(samples) if s.label == 0]
    anomalous = [i for i, s in enumerate(samples) if s.label != 0]
    n_normal = min(len(normal), limit // 2)
    n_anomalous = min(len(anomalous), limit - n_normal)
    n_normal = min(len(normal), limit - n_anomalous)

    def spread(indices: list[int], count: int) -> list[int]:
        if count <= 0:
            return []
        picks = np.linspace(0, len(indices) - 1, count).round().astype(int)
        return [indices[p] for p in picks]

    chosen = sorted(spread(normal, n_normal) + spread(anomalous, n_anomalous))
    return [samples[i] for i in chosen]


# ----------------------------------------------------------------------------------------------------
# Distributed context
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Distributed:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    device: str | None = None
    object_group: Any = None  # process group for object collectives (gloo), None = default group
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.active:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0, group=self.object_group)
        return box[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value``, in rank order, on rank 0; None elsewhere."""
        if not self.active:
            return [value]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(value, out, dst=0, group=self.object_group)
        return out

    def close(self) -> None:
        if self.active and self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _init_distributed(device: str | None) -> _Distributed:
    """Read torchrun's environment; initialise torch.distributed when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return _Distributed(device=device)
    if not torch.distributed.is_available():
        raise EvaluationError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    wants_cuda = device is None or device == "auto" or str(device).startswith("cuda")
    if wants_cuda and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise EvaluationError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                "use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        if device is not None and str(device).startswith("cuda"):
            raise EvaluationError(f"device {device!r} was asked for but CUDA is not available")
        device, backend = "cpu", "gloo"
    owns = not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group(backend=backend, timeout=timedelta(hours=1))
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    # Object collectives (per-category records, plans) travel over gloo on the CPU whatever the
    # main backend: no GPU copies of pickled data.
    object_group = None
    if torch.distributed.get_backend() != "gloo":
        object_group = torch.distributed.new_group(backend="gloo")
    return _Distributed(rank, world_size, device, object_group, owns)


# ----------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RunConfig:
    methods: list[str]
    specs: list[str]
    categories: list[str] | None
    model: str | None
    image_size: int | None
    device: str | None
    precision: str | None
    protocol: str
    aupro_variant: str
    checkpoints: dict[str, str]  # learnable method -> checkpoint
    batch_size: int | None
    limit: int | None
    resume: bool
    progress: bool
    out_dir: Path


def _method_settings(method: str, config: _RunConfig, device: str) -> dict[str, Any]:
    """The settings a method's numbers depend on (checked on resume), resolved without loading it."""
    cls = get_method(method)
    changes: dict[str, Any] = {}
    if config.model is not None:
        changes["model"] = config.model
    if config.image_size is not None:
        changes["image_size"] = config.image_size
    checkpoint = config.checkpoints.get(method)
    if checkpoint is not None:
        changes["checkpoint"] = checkpoint
    resolved = cls.config_class().replace(**changes)
    settings = {
        "method": method,
        "model": resolved.model,
        "image_size": int(resolved.image_size),
        "protocol": config.protocol,
        "aupro_variant": config.aupro_variant,
        "precision": resolve_precision(config.precision, device),
        "limit": config.limit,
        "checkpoint": checkpoint,
    }
    # ... and every other setting of the method (resize policy, text rounding, ...), as JSON gives it back
    method_config = json.loads(json.dumps(dataclasses.asdict(resolved), default=str))
    return {**{name: value for name, value in method_config.items() if name not in settings}, **settings}


def _positive_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise EvaluationError(f"{what} must be a positive integer, got {value!r}") from None
    if number <= 0 or number != float(value):
        raise EvaluationError(f"{what} must be a positive integer, got {value!r}")
    return number


def _build_config(
    methods: Sequence[str] | str,
    data: Sequence[str] | str,
    out_dir: str | os.PathLike,
    categories: Sequence[str] | str | None,
    model: str | None,
    image_size: int | None,
    device: str | None,
    precision: str | None,
    full_resolution: bool,
    resume: bool,
    aupro_variant: str,
    checkpoint: str | os.PathLike | Sequence[str] | Mapping[str, str] | None,
    batch_size: int | None,
    limit: int | None,
    progress: bool,
) -> _RunConfig:
    method_ids = _split_list(methods) or []
    if not method_ids:
        raise EvaluationError("no methods given; e.g. --methods winclip,sdp")
    known = [info.id for info in list_methods()]
    unknown = [m for m in method_ids if m not in known]
    if unknown:
        raise EvaluationError(f"unknown method(s) {unknown}; known methods: {', '.join(known)}")
    if len(set(method_ids)) != len(method_ids):
        raise EvaluationError(f"a method is listed twice in {method_ids}")
    specs = split_data_specs(data) if data else []
    if not specs:
        raise EvaluationError("no dataset given; e.g. --data mvtec:/data/mvtec_anomaly_detection")
    variant = AUPRO_CHOICES.get(str(aupro_variant).lower())
    if variant is None:
        raise EvaluationError(f"unknown AUPRO variant {aupro_variant!r}; choose one of {sorted(AUPRO_CHOICES)}")
    try:
        checkpoints = assign_checkpoints(checkpoint, method_ids)
    except ValueError as error:
        raise EvaluationError(str(error)) from error
    for path in checkpoints.values():
        if not Path(path).expanduser().exists() and ":" not in path and find_released_weights(path) is None:
            raise EvaluationError(f"checkpoint file not found: {path}")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise EvaluationError(f"output path {out} exists and is not a folder")
    return _RunConfig(
        methods=method_ids,
        specs=specs,
        categories=_split_list(categories),
        model=model,
        image_size=_positive_int(image_size, "image size"),
        device=device,
        precision=precision,
        protocol="full_resolution" if full_resolution else "model_map",
        aupro_variant=variant,
        checkpoints=checkpoints,
        batch_size=_positive_int(batch_size, "batch size"),
        limit=_positive_int(limit, "limit"),
        resume=bool(resume),
        progress=bool(progress),
        out_dir=out,
    )


def _open_datasets(config: _RunConfig) -> dict[str, tuple[str, AnomalyDataset]]:
    """dataset key -> (spec, dataset restricted to the requested categories); keys unique."""
    opened: list[tuple[str, AnomalyDataset]] = []
    for spec in config.specs:
        try:
            opened.append((spec, open_dataset(spec)))
        except (ValueError, FileNotFoundError, OSError) as error:
            raise EvaluationError(str(error)) from error
    if config.categories is not None:
        everywhere = {c for _, ds in opened for c in ds.categories()}
        missing = [c for c in config.categories if c not in everywhere]
        if missing:
            available = "; ".join(f"{ds.name}: {', '.join(ds.categories())}" for _, ds in opened)
            raise EvaluationError(
                f"categor{'y' if len(missing) == 1 else 'ies'} {missing} not found in any dataset ({available})"
            )
    datasets: dict[str, tuple[str, AnomalyDataset]] = {}
    for spec, dataset in opened:
        if config.categories is not None:
            chosen = [c for c in dataset.categories() if c in config.categories]
            if not chosen:
                continue
            dataset = dataset.subset(chosen)
        key, number = dataset.name, 2
        while key in datasets:
            key, number = f"{dataset.name}_{number}", number + 1
        datasets[key] = (spec, dataset)
    return datasets


# ----------------------------------------------------------------------------------------------------
# Per-image records and one category
# ----------------------------------------------------------------------------------------------------


@dataclass
class _ImageRecord:
    """One image of one category for one method.

    ``model_map`` (S, S) float32, ``eval_map`` the map the pixel metrics use ((S, S) or (H, W)) and
    ``mask`` the matching bool mask live only until the category's metrics are computed.
    """

    index: int
    path: str
    label: int
    defect: str
    error: str | None = None
    raw_score: float | None = None
    extras: dict[str, float] = field(default_factory=dict)
    model_map: np.ndarray | None = None
    eval_map: np.ndarray | None = None
    mask: np.ndarray | None = None


@dataclass
class _Decoded:
    record: _ImageRecord
    image: Image.Image | None = None
    mask_path: Path | None = None


def _decode(samples: Sequence[tuple[int, Sample]]) -> list[_Decoded]:
    """Decode a batch of images; failures are recorded, never raised."""
    out = []
    for index, sample in samples:
        record = _ImageRecord(index, str(sample.image_path), int(sample.label), sample.defect)
        try:
            image = load_image(sample.image_path)
        except ImageError as error:
            record.error = str(error)
            image = None
        out.append(_Decoded(record, image, sample.mask_path))
    return out


def _attach_masks(decoded: list[_Decoded], size_of: Callable[[Image.Image], tuple[int, int]]) -> None:
    """Load each good image's mask at ``size_of(image)``; a mask that cannot be read fails its image."""
    for item in decoded:
        if item.image is None:
            continue
        try:
            if item.mask_path is None:
                item.record.mask = load_mask(None, size=size_of(item.image))
            else:
                mask = load_mask(item.mask_path)
                check_mask_size(mask, (item.image.height, item.image.width), item.mask_path, item.record.path)
                item.record.mask = resize_mask(mask, size_of(item.image))
        except (OSError, ValueError) as error:
            item.record.error = str(error) if str(item.mask_path) in str(error) else f"mask {item.mask_path}: {error}"
            item.image = None


class _CategoryMetrics:
    """Metrics of one category, fed batch by batch in sample order (identical in every run layout)."""

    def __init__(self, pixel: bool, aupro_variant: str) -> None:
        self.pixel = PixelMetricAccumulator(aupro_variant=aupro_variant) if pixel else None
        self.records: list[_ImageRecord] = []

    def consume(self, batch: list[_ImageRecord]) -> None:
        good = [r for r in batch if r.error is None]
        if self.pixel is not None and good:
            self.pixel.update([r.mask for r in good], [r.eval_map for r in good])
        for record in batch:  # the pixel data are in the accumulator now
            record.eval_map = None
            record.mask = None
        self.records.extend(batch)


def _run_category(
    detector: Any,
    dataset: AnomalyDataset,
    samples: list[Sample],
    config: _RunConfig,
    dist: _Distributed,
    bar: tqdm,
) -> _CategoryMetrics | None:
    """Run ``detector`` (already prepared) over ``samples``; on rank 0 return the fed metrics."""
    batch_size = config.batch_size or detector.config.batch_size
    indexed = list(enumerate(samples))
    batches = [indexed[i : i + batch_size] for i in range(0, len(indexed), batch_size)]
    mine = list(range(dist.rank, len(batches), dist.world_size))
    size = detector.config.image_size
    full_resolution = config.protocol == "full_resolution"

    def mask_size(image: Image.Image) -> tuple[int, int]:
        return (image.height, image.width) if full_resolution else (size, size)

    def prepare_batch(batch_id: int) -> list[_Decoded]:
        decoded = _decode(batches[batch_id])
        if dataset.has_masks:
            _attach_masks(decoded, mask_size)
        return decoded

    metrics = _CategoryMetrics(dataset.has_masks, config.aupro_variant) if dist.is_main else None
    kept: list[tuple[int, list[_ImageRecord]]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="zsad-decode") as pool:
        pending = pool.submit(prepare_batch, mine[0]) if mine else None
        for position, batch_id in enumerate(mine):
            decoded = pending.result()
            pending = pool.submit(prepare_batch, mine[position + 1]) if position + 1 < len(mine) else None
            good = [item for item in decoded if item.image is not None]
            results = detector.detect([item.image for item in good], batch_size=len(good)) if good else []
            for item, result in zip(good, results, strict=True):
                record = item.record
                record.raw_score = float(result.score)
                record.extras = {k: float(v) for k, v in result.extras.items()}
                record.model_map = np.asarray(result.model_map, dtype=np.float32)
                if dataset.has_masks:
                    record.eval_map = (
                        np.asarray(result.anomaly_map, dtype=np.float32) if full_resolution else record.model_map
                    )
            records = [item.record for item in decoded]
            if dist.active:
                kept.append((batch_id, records))
                bar.update(min(len(records) * dist.world_size, bar.total - bar.n))
            else:
                metrics.consume(records)
                bar.update(len(records))
    if not dist.active:
        return metrics
    gathered = dist.gather(kept)
    if not dist.is_main:
        return None
    ordered = sorted((pair for part in gathered for pair in part), key=lambda pair: pair[0])
    for _, records in ordered:
        metrics.consume(records)
    return metrics


def _category_outcome(
    detector: Any,
    method: str,
    category: str,
    dataset: AnomalyDataset,
    metrics: _CategoryMetrics,
    seconds: float,
) -> dict[str, Any]:
    """Metrics, counts and per-image scores of one finished category (also the partial file body)."""
    records = metrics.records
    good = [r for r in records if r.error is None]
    scores: np.ndarray = np.empty(0)
    if good:
        empty = np.zeros((0, 0), dtype=np.float32)
        results = [
            AnomalyResult(
                score=r.raw_score,
                anomaly_map=empty,
                method=method,
                category=detector.category or category,
                model_map=r.model_map,
                extras=dict(r.extras),
            )
            for r in good
        ]
        scores = np.asarray(detector.dataset_scores(results), dtype=np.float64)
        if scores.shape != (len(good),):
            raise RuntimeError(f"{method}.dataset_scores returned shape {scores.shape}, expected ({len(good)},)")
    values: dict[str, float | None] = dict.fromkeys(METRIC_NAMES)
    if good and dataset.has_image_labels:
        labels = np.array([r.label for r in good])
        values.update(image_metrics(labels, scores))
    pixel_exact = None
    if good and metrics.pixel is not None:
        values.update(metrics.pixel.compute())
        pixel_exact = metrics.pixel.is_exact
    score_of = {r.index: float(s) for r, s in zip(good, scores, strict=True)}
    for record in records:
        record.model_map = None
    return {
        "metrics": {name: _finite_or_none(values[name]) for name in METRIC_NAMES},
        "num_images": len(records),
        "num_normal": sum(r.label == 0 for r in records),
        "num_anomalous": sum(r.label != 0 for r in records),
        "num_failed": len(records) - len(good),
        "failures": [{"path": r.path, "error": r.error} for r in records if r.error is not None],
        "pixel_metrics_exact": pixel_exact,
        "seconds": round(seconds, 3),
        "completed_at": _now(),
        "images": [
            {
                "path": r.path,
                "label": r.label,
                "defect": r.defect,
                "score": score_of.get(r.index),
                "raw_score": r.raw_score,
                "extras": r.extras,
                "error": r.error,
            }
            for r in records
        ],
    }


# ----------------------------------------------------------------------------------------------------
# Partial results (resume)
# ----------------------------------------------------------------------------------------------------


def _partial_path(out_dir: Path, dataset_key: str, method: str, category: str) -> Path:
    name = f"{_safe_name(dataset_key)}__{_safe_name(method)}__{_safe_name(category)}.json"
    return out_dir / "partial" / name


def _load_partial(
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


# ----------------------------------------------------------------------------------------------------
# Report files
# ----------------------------------------------------------------------------------------------------


def _mean_over_categories(categories: dict[str, dict[str, Any]]) -> tuple[dict[str, float | None], dict[str, int]]:
    means: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for name in METRIC_NAMES:
        values = [c["metrics"][name] for c in categories.values() if c["metrics"][name] is not None]
        means[name] = float(np.mean(values)) if values else None
        counts[name] = len(values)
    return means, counts


def _dataset_notes(dataset: AnomalyDataset) -> list[str]:
    notes = []
    if not dataset.has_image_labels:
        notes.append("image metrics not computed: the dataset does not have both normal and anomalous images")
    if not dataset.has_masks:
        notes.append("pixel metrics not computed: the dataset has no ground-truth masks for every anomalous image")
    return notes


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.1f}"


def _markdown(results: dict[str, Any]) -> str:
    settings = results["settings"]
    counts = results["counts"]
    lines = [
        "# Zero-shot anomaly detection results",
        "",
        f"- zsad {results['zsad_version']}; started {results['started_at']}, finished {results['finished_at']}",
        f"- protocol: {_PROTOCOL_DESCRIPTIONS[settings['protocol']]}",
        f"- AUPRO: {_AUPRO_DESCRIPTIONS[settings['aupro_variant']]}",
        f"- images: {counts['images']} evaluated (images x methods), {counts['failed']} failed"
        + (" (listed in results.json)" if counts["failed"] else ""),
        f"- device {settings['device']}, precision {settings['precision']}, processes {settings['world_size']}"
        + (f", at most {settings['limit']} images per category" if settings["limit"] else ""),
        "",
        "Metrics in percent; mean = unweighted mean over categories; – = not available.",
        "",
        "## Summary (mean over categories)",
        "",
        "| Method | Dataset | Model | Size | " + " | ".join(_METRIC_HEADERS.values()) + " |",
        "|---|---|---|---|" + "---|" * len(METRIC_NAMES),
    ]
    for method, per_dataset in results["results"].items():
        info = results["methods"][method]
        for dataset_key, block in per_dataset.items():
            cells = [_percent(block["mean"][name]) for name in METRIC_NAMES]
            lines.append(
                f"| {method} | {dataset_key} | {info['model']} | {info['image_size']} | " + " | ".join(cells) + " |"
            )
    for method, per_dataset in results["results"].items():
        info = results["methods"][method]
        for dataset_key, block in per_dataset.items():
            shown = [
                name
                for name in METRIC_NAMES
                if (name in _IMAGE_METRICS and block["image_metrics"])
                or (name in _PIXEL_METRICS and block["pixel_metrics"])
            ]
            lines += ["", f"## {method} on {dataset_key} ({info['model']} @ {info['image_size']})", ""]
            if not shown:
                lines += ["No metric can be computed on this dataset.", ""]
            else:
                lines.append("| Category | " + " | ".join(_METRIC_HEADERS[n] for n in shown) + " |")
                lines.append("|---|" + "---:|" * len(shown))
                for category, entry in block["categories"].items():
                    failed = f" ({entry['num_failed']} failed)" if entry["num_failed"] else ""
                    cells = [_percent(entry["metrics"][n]) for n in shown]
                    lines.append(f"| {category}{failed} | " + " | ".join(cells) + " |")
                lines.append("| **mean** | " + " | ".join(f"**{_percent(block['mean'][n])}**" for n in shown) + " |")
            partial = [
                f"{_METRIC_HEADERS[n]} over {block['mean_num_categories'][n]} of {len(block['categories'])}"
                for n in shown
                if block["mean_num_categories"][n] != len(block["categories"])
            ]
            notes = block["notes"] + ([f"means over fewer categories: {', '.join(partial)}"] if partial else [])
            if notes:
                lines.append("")
                lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _scores_csv(rows: list[dict[str, Any]], extra_names: list[str]) -> str:
    columns = ["method", "dataset", "category", "path", "label", "defect", "score", "raw_score", "status", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns + extra_names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if value is None else value) for key, value in row.items()})
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------


def evaluate(
    methods: list[str] | str,
    data: list[str] | str,
    out_dir: str | os.PathLike,
    categories: list[str] | str | None = None,
    model: str | None = None,
    image_size: int | None = None,
    device: str | None = None,
    precision: str | None = None,
    full_resolution: bool = False,
    resume: bool = False,
    aupro_variant: str = "cflow",
    checkpoint: str | os.PathLike | Sequence[str] | Mapping[str, str] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> dict[str, Any]:
    """Evaluate methods on datasets and write ``results.json``, ``results.md`` and ``scores.csv``.

    Args:
        methods: registered method ids (``["winclip", "sdp"]`` or ``"winclip,sdp"``).
        data: dataset specs (``["mvtec:/data/mvtec", "visa:/data/visa"]`` or ``"mvtec:/a,visa:/b"``).
        out_dir: output folder (created).
        categories: only these categories (each must exist in at least one dataset; a dataset with
            none of them is skipped).
        model: backbone for every method (default: each method's paper backbone).
        image_size: input side S for every method (default: each method's paper size).
        device: "cpu", "cuda", "cuda:1"... (default: CUDA when available; under torchrun each rank
            uses ``cuda:LOCAL_RANK``).
        precision: "fp32", "fp16", "bf16" (default: fp32 on CPU, fp16 on CUDA).
        full_resolution: pixel metrics at each image's own size instead of the papers' S x S.
        resume: reuse finished categories saved in ``out_dir/partial`` by an earlier run with the same
            settings (a mismatch raises :class:`EvaluationError`).
        aupro_variant: "cflow" (papers) or "official" (alias "mvtec"), see :func:`zsad_core.metrics.aupro`.
        checkpoint: trained parameters for the methods that load one (e.g. SDP+, AdaCLIP): ``{method:
            checkpoint}``, ``"METHOD=CHECKPOINT"`` strings, or one bare checkpoint when exactly one
            learnable method runs (:func:`zsad_core.registry.assign_checkpoints`).
        batch_size: images per forward pass (default: each method's own).
        progress: show a tqdm progress bar (images x methods, with the time left) on stderr.
        limit: at most this many images per category, both labels kept (:func:`select_samples`).

    Returns:
        The content of ``results.json``::

            {"format", "zsad_version", "started_at", "finished_at", "elapsed_seconds",
             "settings": {"protocol", "aupro_variant", "device", "precision", "batch_size", "limit",
                          "checkpoint", "world_size", "resume", "datasets": {key: spec}, "categories"},
             "methods": {method: {"model", "image_size", "precision", ...}},
             "counts": {"images", "failed", "categories", "resumed_categories"},
             "results": {method: {dataset_key: {
                 "dataset", "spec", "image_metrics": bool, "pixel_metrics": bool, "notes": [str],
                 "categories": {category: {"metrics": {name: fraction | None}, "num_images",
                                 "num_normal", "num_anomalous", "num_failed", "failures",
                                "pixel_metrics_exact", "seconds", "resumed"}},
                 "mean": {name: fraction | None}, "mean_num_categories": {name: int}}}}}

        Metric names are :data:`zsad_core.metrics.METRIC_NAMES`; ``None`` where not available.
        ``pixel_metrics_exact`` says whether the category's pixels fitted the exact buffer of
        :class:`~zsad_core.metrics.PixelMetricAccumulator` (about 4.2 M pixels) or were binned
        (10,000 bins, within 1e-3 of the exact values; see its docstring).
        Under torchrun every rank returns this dict; only rank 0 writes files.

    Raises:
        EvaluationError: bad arguments, unknown methods/datasets/categories, a backbone or
            checkpoint that cannot be loaded, or partial results made with other settings.
    """
    config = _build_config(
        methods, data, out_dir, categories, model, image_size, device, precision, full_resolution,
        resume, aupro_variant, checkpoint, batch_size, limit, progress,
    )  # fmt: skip
    dist = _init_distributed(device)
    try:
        return _evaluate(config, dist)
    finally:
        dist.close()


def _evaluate(config: _RunConfig, dist: _Distributed) -> dict[str, Any]:
    started_at, began = _now(), time.perf_counter()
    try:
        device = resolve_device(dist.device)
        settings = {m: _method_settings(m, config, device) for m in config.methods}
    except (ModelSpecError, TypeError, ValueError) as error:
        raise EvaluationError(str(error)) from error
    datasets = _open_datasets(config)
    if not datasets:
        raise EvaluationError("no dataset has any of the requested categories")
    samples = {
        (key, category): select_samples(dataset.samples[category], config.limit)
        for key, (_, dataset) in datasets.items()
        for category in dataset.categories()
    }

    def note(message: str) -> None:
        if dist.is_main:
            tqdm.write(message, file=sys.stderr)

    # Plan: rank 0 loads what --resume can reuse and tells every rank what to skip.
    done: dict[str, dict[str, Any]] = {}
    error: str | None = None
    if dist.is_main:
        try:
            config.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as problem:
            error = f"cannot create the output folder {config.out_dir}: {problem}"
        if config.resume and error is None:
            try:
                for method in config.methods:
                    for (key, category), chosen in samples.items():
                        identity = {"dataset": key, "method": method, "category": category}
                        path = _partial_path(config.out_dir, key, method, category)
                        loaded = _load_partial(path, identity, settings[method], chosen)
                        if loaded is not None:
                            done[_outcome_key(key, method, category)] = loaded
            except EvaluationError as problem:
                error = str(problem)
    error, done_keys = dist.broadcast((error, sorted(done))) if dist.active else (error, sorted(done))
    if error:
        raise EvaluationError(error)
    if done_keys:
        note(
            f"resume: {len(done_keys)} finished categor{'y' if len(done_keys) == 1 else 'ies'} loaded from {config.out_dir / 'partial'}"
        )

    todo = [
        (method, key, category)
        for method in config.methods
        for key, (_, dataset) in datasets.items()
        for category in dataset.categories()
        if _outcome_key(key, method, category) not in done_keys
    ]
    total = sum(len(samples[(key, category)]) for _, key, category in todo)
    outcomes: dict[str, dict[str, Any]] = dict(done)
    processed = 0
    bar = tqdm(total=total, unit="img", desc="eval", disable=not (config.progress and dist.is_main), dynamic_ncols=True)
    try:
        for method in config.methods:
            work = [(key, category) for m, key, category in todo if m == method]
            if not work:
                continue
            detector = _create_detector(method, config, settings[method], dist.device)
            for key, category in work:
                spec, dataset = datasets[key]
                chosen = samples[(key, category)]
                bar.set_postfix_str(f"{method} {key}/{category}")
                began_category = time.perf_counter()
                detector.prepare(dataset.prompt_name(category))
                metrics = _run_category(detector, dataset, chosen, config, dist, bar)
                processed += len(chosen)
                if not dist.is_main:
                    continue
                if dist.active:  # the per-batch updates were estimates
                    bar.n = processed
                    bar.refresh()
                outcome = _category_outcome(
                    detector, method, category, dataset, metrics, time.perf_counter() - began_category
                )
                outcome = {
                    "format": PARTIAL_FORMAT,
                    "key": {"dataset": key, "method": method, "category": category},
                    "settings": settings[method],
                    "spec": spec,
                    **outcome,
                }
                _write_atomic(_partial_path(config.out_dir, key, method, category), _json_text(outcome))
                outcomes[_outcome_key(key, method, category)] = outcome
                if outcome["num_failed"]:
                    note(
                        f"{method} {key}/{category}: {outcome['num_failed']} image(s) failed, e.g. {outcome['failures'][0]['error']}"
                    )
    finally:
        bar.close()

    results = None
    if dist.is_main:
        results = _assemble(
            config, dist, datasets, settings, outcomes, set(done), started_at, time.perf_counter() - began, device
        )
        _write_reports(config.out_dir, results, outcomes, datasets)
    return dist.broadcast(results) if dist.active else results


def _outcome_key(dataset_key: str, method: str, category: str) -> str:
    return f"{dataset_key}\0{method}\0{category}"


def _create_detector(method: str, config: _RunConfig, settings: dict[str, Any], device: str | None) -> Any:
    from .registry import create_detector

    overrides: dict[str, Any] = {}
    if settings["checkpoint"] is not None:
        overrides["checkpoint"] = settings["checkpoint"]
    try:
        return create_detector(
            method,
            model=settings["model"],
            image_size=settings["image_size"],
            device=device,
            precision=settings["precision"],
            **overrides,
        )
    except (ModelSpecError, WeightsNotFoundError, FileNotFoundError, TypeError, ValueError) as error:
        raise EvaluationError(f"cannot create method {method!r}: {error}") from error


def _assemble(
    config: _RunConfig,
    dist: _Distributed,
    datasets: dict[str, tuple[str, AnomalyDataset]],
    settings: dict[str, dict[str, Any]],
    outcomes: dict[str, dict[str, Any]],
    resumed: set[str],
    started_at: str,
    elapsed: float,
    device: str,
) -> dict[str, Any]:
    from . import __version__

    per_method: dict[str, Any] = {}
    images = failed = 0
    for method in config.methods:
        per_dataset: dict[str, Any] = {}
        for key, (spec, dataset) in datasets.items():
            categories: dict[str, Any] = {}
            for category in dataset.categories():
                outcome_key = _outcome_key(key, method, category)
                outcome = outcomes[outcome_key]
                categories[category] = {name: outcome.get(name) for name in _CATEGORY_FIELDS}
                categories[category]["resumed"] = outcome_key in resumed
                images += outcome["num_images"]
                failed += outcome["num_failed"]
            means, counts = _mean_over_categories(categories)
            per_dataset[key] = {
                "dataset": dataset.name,
                "spec": spec,
                "image_metrics": bool(dataset.has_image_labels),
                "pixel_metrics": bool(dataset.has_masks),
                "notes": _dataset_notes(dataset),
                "categories": categories,
                "mean": means,
                "mean_num_categories": counts,
            }
        per_method[method] = per_dataset
    return {
        "format": RESULTS_FORMAT,
        "zsad_version": __version__,
        "started_at": started_at,
        "finished_at": _now(),
        "elapsed_seconds": round(elapsed, 3),
        "settings": {
            "protocol": config.protocol,
            "protocol_description": _PROTOCOL_DESCRIPTIONS[config.protocol],
            "aupro_variant": config.aupro_variant,
            "aupro_description": _AUPRO_DESCRIPTIONS[config.aupro_variant],
            "device": device,
            "precision": resolve_precision(config.precision, device),
            "batch_size": config.batch_size,
            "limit": config.limit,
            "checkpoint": config.checkpoints or None,
            "world_size": dist.world_size,
            "resume": config.resume,
            "datasets": {key: spec for key, (spec, _) in datasets.items()},
            "categories": config.categories,
        },
        "methods": {m: {k: v for k, v in settings[m].items() if k != "method"} for m in config.methods},
        "counts": {
            "images": images,
            "failed": failed,
            "categories": sum(len(ds.categories()) for _, ds in datasets.values()) * len(config.methods),
            "resumed_categories": len(resumed),
        },
        "results": per_method,
    }


def _write_reports(
    out_dir: Path,
    results: dict[str, Any],
    outcomes: dict[str, dict[str, Any]],
    datasets: dict[str, tuple[str, AnomalyDataset]],
) -> None:
    rows: list[dict[str, Any]] = []
    extra_names: list[str] = []
    for method, per_dataset in results["results"].items():
        for key in per_dataset:
            for category in datasets[key][1].categories():
                for image in outcomes[_outcome_key(key, method, category)]["images"]:
                    for name in image["extras"]:
                        if name not in extra_names:
                            extra_names.append(name)
                    rows.append(
                        {
                            "method": method,
                            "dataset": key,
                            "category": category,
                            "path": image["path"],
                            "label": image["label"],
                            "defect": image["defect"],
                            "score": image["score"],
                            "raw_score": image["raw_score"],
                            "status": "failed" if image["error"] else "ok",
                            "error": image["error"],
                            **image["extras"],
                        }
                    )
    _write_atomic(out_dir / "scores.csv", _scores_csv(rows, extra_names))
    _write_atomic(out_dir / "results.md", _markdown(results))
    _write_atomic(out_dir / "results.json", _json_text(results))


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``eval`` options to ``parser`` (used by ``python -m zsad_core eval``)."""
    parser.add_argument("--methods", required=True, help="comma-separated method ids, e.g. winclip,sdp")
    parser.add_argument(
        "--data",
        required=True,
        action="append",
        help="dataset spec(s) '<format>:<path>', comma-separated or repeated, e.g. mvtec:/data/mvtec,visa:/data/visa",
    )
    parser.add_argument("--out", required=True, help="output folder for results.json, results.md, scores.csv")
    parser.add_argument("--categories", help="only these categories (comma-separated)")
    parser.add_argument("--model", help="backbone for every method (default: each method's paper backbone)")
    parser.add_argument("--image-size", type=int, help="input side S for every method (default: paper size)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    parser.add_argument(
        "--precision", choices=["fp32", "fp16", "bf16", "auto"], help="default: fp32 on CPU, fp16 on CUDA"
    )
    parser.add_argument("--batch-size", type=int, help="images per forward pass (default: the method's)")
    parser.add_argument(
        "--full-resolution",
        action="store_true",
        help="pixel metrics at each image's own size (default: the papers' S x S model map)",
    )
    parser.add_argument("--resume", action="store_true", help="reuse finished categories from OUT/partial")
    parser.add_argument(
        "--aupro",
        default="cflow",
        choices=["cflow", "official"],
        help="AUPRO variant: cflow (as the papers, default) or official (MVTec AD)",
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        metavar="[METHOD=]CHECKPOINT",
        help="trained parameters of a learnable method (SDP+, AdaCLIP), e.g. --checkpoint adaclip=a.safetensors; "
        "repeat for each; a bare CHECKPOINT when exactly one learnable method runs",
    )
    parser.add_argument("--limit", type=int, help="at most N images per category (both labels kept), for quick looks")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_eval(args: argparse.Namespace) -> int:
    """Run ``eval`` from parsed arguments.

    Returns:
        0 when every image was evaluated, 1 when some images failed (recorded in the outputs),
        2 for a usage or configuration error (printed as ``error: ...`` on stderr).
    """
    quiet = int(os.environ.get("RANK", "0") or 0) != 0
    try:
        results = evaluate(
            methods=args.methods,
            data=args.data,
            out_dir=args.out,
            categories=args.categories,
            model=args.model,
            image_size=args.image_size,
            device=args.device,
            precision=None if args.precision == "auto" else args.precision,
            full_resolution=args.full_resolution,
            resume=args.resume,
            aupro_variant=args.aupro,
            checkpoint=args.checkpoint,
            batch_size=args.batch_size,
            progress=not getattr(args, "no_progress", False),
            limit=args.limit,
        )
    except EvaluationError as error:
        if not quiet:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if not quiet:
            print(
                f"error: interrupted; finished categories are kept, rerun with --resume --out {args.out}",
                file=sys.stderr,
            )
        return 130
    if not quiet:
        out = Path(args.out)
        print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'scores.csv'}", file=sys.stderr)
    return 1 if results["counts"]["failed"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zsad_core.evaluate ...`` (same options as ``python -m zsad_core eval``)."""
    parser = argparse.ArgumentParser(prog="python -m zsad_core.evaluate", description=__doc__.split("\n")[0])
    add_eval_arguments(parser)
    return run_eval(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
