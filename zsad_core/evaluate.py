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

Modules: the settings are :class:`zsad_core.eval_config.EvalConfig`, torchrun plumbing
:mod:`zsad_core.distributed`, partial files :mod:`zsad_core.eval_resume`, report files
:mod:`zsad_core.eval_reports`; this module holds the run loop.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from .backbone import ModelSpecError, WeightsNotFoundError, resolve_device
from .data import AnomalyDataset, Sample, load_mask, open_dataset, split_data_specs
from .data.masks import check_mask_size, resize_mask
from .distributed import Distributed, init_distributed
from .eval_config import AUPRO_CHOICES, EvalConfig, EvaluationError, add_eval_arguments, method_settings
from .eval_reports import assemble_results, outcome_key, timestamp, write_json_report, write_reports
from .eval_resume import PARTIAL_FORMAT, load_partial, partial_path
from .metrics import METRIC_NAMES, PixelMetricAccumulator, image_metrics
from .preprocess import ImageError, load_image
from .types import AnomalyResult

__all__ = [
    "AUPRO_CHOICES",
    "EvalConfig",
    "EvaluationError",
    "add_eval_arguments",
    "evaluate",
    "evaluate_config",
    "main",
    "run_eval",
    "select_samples",
    "split_data_specs",
]


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


def _open_datasets(config: EvalConfig) -> dict[str, tuple[str, AnomalyDataset]]:
    """dataset key -> (spec, dataset restricted to the requested categories); keys unique."""
    opened: list[tuple[str, AnomalyDataset]] = []
    for spec in config.data:
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
    config: EvalConfig,
    dist: Distributed,
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


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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
        "completed_at": timestamp(),
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
# The driver
# ----------------------------------------------------------------------------------------------------


def evaluate(
    methods: list[str] | str,
    data: list[str] | str,
    out_dir: str | os.PathLike,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate methods on datasets and write ``results.json``, ``results.md`` and ``scores.csv``.

    Args:
        methods: registered method ids (``["winclip", "sdp"]`` or ``"winclip,sdp"``).
        data: dataset specs (``["mvtec:/data/mvtec", "visa:/data/visa"]`` or ``"mvtec:/a,visa:/b"``).
        out_dir: output folder (created).
        **options: the other fields of :class:`~zsad_core.eval_config.EvalConfig` (``categories``,
            ``model``, ``image_size``, ``device``, ``precision``, ``full_resolution``, ``resume``,
            ``aupro_variant``, ``checkpoint``, ``batch_size``, ``progress``, ``limit``), documented there.

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
    return evaluate_config(EvalConfig(methods, data, out_dir, **options))


def evaluate_config(config: EvalConfig) -> dict[str, Any]:
    """:func:`evaluate` with its arguments as one :class:`~zsad_core.eval_config.EvalConfig`."""
    dist = init_distributed(config.device)
    try:
        return _evaluate(config, dist)
    finally:
        dist.close()


def _evaluate(config: EvalConfig, dist: Distributed) -> dict[str, Any]:
    started_at, began = timestamp(), time.perf_counter()
    try:
        device = resolve_device(dist.device)
        settings = {m: method_settings(m, config, device) for m in config.methods}
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
                        path = partial_path(config.out_dir, key, method, category)
                        loaded = load_partial(path, identity, settings[method], chosen)
                        if loaded is not None:
                            done[outcome_key(key, method, category)] = loaded
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
        if outcome_key(key, method, category) not in done_keys
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
                write_json_report(partial_path(config.out_dir, key, method, category), outcome)
                outcomes[outcome_key(key, method, category)] = outcome
                if outcome["num_failed"]:
                    note(
                        f"{method} {key}/{category}: {outcome['num_failed']} image(s) failed, e.g. {outcome['failures'][0]['error']}"
                    )
    finally:
        bar.close()

    results = None
    if dist.is_main:
        results = assemble_results(
            config,
            dist.world_size,
            datasets,
            settings,
            outcomes,
            set(done),
            started_at,
            time.perf_counter() - began,
            device,
        )
        write_reports(config.out_dir, results, outcomes, datasets)
    return dist.broadcast(results) if dist.active else results


def _create_detector(method: str, config: EvalConfig, settings: dict[str, Any], device: str | None) -> Any:
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


def run_eval(args: argparse.Namespace) -> int:
    """Run ``eval`` from parsed arguments.

    Returns:
        0 when every image was evaluated, 1 when some images failed (recorded in the outputs),
        2 for a usage or configuration error (printed as ``error: ...`` on stderr).
    """
    quiet = int(os.environ.get("RANK", "0") or 0) != 0
    try:
        results = evaluate_config(EvalConfig.from_args(args))
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
