"""The report files of an evaluation: ``results.json`` (assembled from the finished categories),
``results.md`` (paper-style tables) and ``scores.csv`` (one row per image and method).

See :func:`zsad_core.evaluate.evaluate` for what each file holds.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .backbone import resolve_precision
from .data import AnomalyDataset
from .eval_config import EvalConfig
from .files import write_json_atomic, write_text_atomic
from .metrics import METRIC_NAMES

__all__ = ["RESULTS_FORMAT", "assemble_results", "outcome_key", "timestamp", "write_json_report", "write_reports"]

RESULTS_FORMAT = "zsad-eval-results/1"

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


def timestamp() -> str:
    """Now, in UTC, to the second (ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_report(path: Path, data: Any) -> None:
    """The evaluation's JSON files (partials, results.json): UTF-8, no NaN, folders created, atomically."""
    write_json_atomic(path, data, parents=True, allow_nan=False, ensure_ascii=False)


def outcome_key(dataset_key: str, method: str, category: str) -> str:
    """The key of one finished category in the run's outcomes."""
    return f"{dataset_key}\0{method}\0{category}"


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


def assemble_results(
    config: EvalConfig,
    world_size: int,
    datasets: dict[str, tuple[str, AnomalyDataset]],
    settings: dict[str, dict[str, Any]],
    outcomes: dict[str, dict[str, Any]],
    resumed: set[str],
    started_at: str,
    elapsed: float,
    device: str,
) -> dict[str, Any]:
    """The content of ``results.json`` (see :func:`zsad_core.evaluate.evaluate`) from the finished categories."""
    from . import __version__

    per_method: dict[str, Any] = {}
    images = failed = 0
    for method in config.methods:
        per_dataset: dict[str, Any] = {}
        for key, (spec, dataset) in datasets.items():
            categories: dict[str, Any] = {}
            for category in dataset.categories():
                finished = outcome_key(key, method, category)
                outcome = outcomes[finished]
                categories[category] = {name: outcome.get(name) for name in _CATEGORY_FIELDS}
                categories[category]["resumed"] = finished in resumed
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
        "finished_at": timestamp(),
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
            "checkpoint": config.checkpoint or None,
            "world_size": world_size,
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


def write_reports(
    out_dir: Path,
    results: dict[str, Any],
    outcomes: dict[str, dict[str, Any]],
    datasets: dict[str, tuple[str, AnomalyDataset]],
) -> None:
    """Write ``scores.csv``, ``results.md`` and ``results.json`` to ``out_dir``."""
    rows: list[dict[str, Any]] = []
    extra_names: list[str] = []
    for method, per_dataset in results["results"].items():
        for key in per_dataset:
            for category in datasets[key][1].categories():
                for image in outcomes[outcome_key(key, method, category)]["images"]:
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
    write_text_atomic(out_dir / "scores.csv", _scores_csv(rows, extra_names), parents=True)
    write_text_atomic(out_dir / "results.md", _markdown(results), parents=True)
    write_json_report(out_dir / "results.json", results)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
