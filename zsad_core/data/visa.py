"""VisA layout, read through its official split file.

Accepted layout (``visa:/path``)::

    <root>/split_csv/1cls.csv                     columns: object, split, label, image, mask
    <root>/<cls>/Data/Images/{Normal,Anomaly}/*.JPG
    <root>/<cls>/Data/Masks/Anomaly/*.png         instance indices (binarised with > 0)

Only rows with ``split == test`` are used (962 normal, 1200 anomalous in the full set). ``label``
is ``normal``/``anomaly`` (``good``/``0`` and ``1`` also accepted); ``image``/``mask`` are relative
to the root, ``mask`` is empty for normal rows. The spec path may also be the CSV file itself.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from .base import AnomalyDataset, DatasetLayoutError, Sample, build_dataset, natural_key

__all__ = ["LAYOUT", "read_visa"]

LAYOUT = (
    "<root>/split_csv/1cls.csv (columns object,split,label,image,mask; rows with split=test), "
    "paths relative to <root>"
)

_NORMAL = {"normal", "good", "0"}
_ANOMALY = {"anomaly", "anomalous", "abnormal", "bad", "1"}


def _locate(path: Path) -> tuple[Path, Path]:
    """(root, csv file) for a root folder or a CSV path."""
    if path.is_file():
        root = path.parent.parent if path.parent.name == "split_csv" else path.parent
        return root, path
    csv_path = path / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"'{csv_path}' not found (VisA needs its split file split_csv/1cls.csv)")
    return path, csv_path


def read_visa(root: Path, *, name: str = "visa", categories: Sequence[str] | None = None) -> AnomalyDataset:
    """Read the VisA test split listed in ``split_csv/1cls.csv``."""
    root, csv_path = _locate(root)
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = {(h or "").strip().lower() for h in reader.fieldnames or []}
        missing = {"object", "split", "label", "image", "mask"} - fields
        if missing:
            raise DatasetLayoutError(f"'{csv_path}' lacks columns {sorted(missing)} (has {sorted(fields)})")
        rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    wanted = set(categories) if categories is not None else None
    samples: dict[str, list[Sample]] = {}
    all_objects: set[str] = set()
    missing_files: list[str] = []
    for n, row in enumerate(rows, start=2):
        if row["split"].lower() != "test":
            continue
        obj = row["object"]
        all_objects.add(obj)
        if wanted is not None and obj not in wanted:
            continue
        lab = row["label"].lower()
        if lab not in _NORMAL | _ANOMALY:
            raise DatasetLayoutError(f"'{csv_path}' line {n}: unknown label {row['label']!r}")
        label = 0 if lab in _NORMAL else 1
        image = root / row["image"]
        mask = root / row["mask"] if row["mask"] and label == 1 else None
        for p in (image, mask):
            if p is not None and not p.is_file():
                missing_files.append(str(p))
        defect = "good" if label == 0 else "anomaly"
        samples.setdefault(obj, []).append(
            Sample(image_path=image, label=label, category=obj, mask_path=mask, defect=defect)
        )
    if wanted is not None:
        unknown = sorted(wanted - all_objects)
        if unknown:
            raise ValueError(f"unknown categories {unknown}; available: {sorted(all_objects)}")
    if not samples:
        raise DatasetLayoutError(f"'{csv_path}' has no rows with split == 'test'")
    if missing_files:
        raise FileNotFoundError(
            f"{len(missing_files)} files listed in '{csv_path}' are missing, e.g. {missing_files[:3]}"
        )
    return build_dataset(name, root, {c: samples[c] for c in sorted(samples, key=natural_key)})
