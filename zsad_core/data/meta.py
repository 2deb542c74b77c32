"""The ``meta.json`` index shared by April-GAN, AnomalyCLIP, AdaCLIP and CLIP-AD (methods.md §6.4).

Schema (written at the dataset root; only ``"test"`` is read)::

    {
      "train": {"<cls>": [<item>, ...]},    # may be {}
      "test":  {"<cls>": [<item>, ...]}
    }
    <item> = {"img_path": "<relative to root>", "mask_path": "<relative>" or "",
              "cls_name": "<cls>", "specie_name": "<defect folder>" or "", "anomaly": 0 | 1}

``meta:/path`` accepts the root folder holding ``meta.json`` or the JSON file itself. Absolute
``img_path``/``mask_path`` values are accepted too (:func:`write_meta_json` writes them for files
outside the root).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from .base import AnomalyDataset, DatasetLayoutError, Sample, build_dataset, natural_key

__all__ = ["LAYOUT", "read_meta", "write_meta_json"]

LAYOUT = (
    "<root>/meta.json with {'test': {<cls>: [{'img_path', 'mask_path', 'cls_name', 'specie_name', "
    "'anomaly'}, ...]}}, paths relative to <root>"
)


def _locate(path: Path) -> tuple[Path, Path]:
    if path.is_file():
        return path.parent, path
    meta = path / "meta.json"
    if not meta.is_file():
        raise FileNotFoundError(f"'{meta}' not found")
    return path, meta


def read_meta(root: Path, *, name: str = "meta", categories: Sequence[str] | None = None) -> AnomalyDataset:
    """Read the ``"test"`` part of a ``meta.json`` index."""
    root, meta_path = _locate(root)
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetLayoutError(f"'{meta_path}' is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("test"), dict):
        raise DatasetLayoutError(f"'{meta_path}' has no 'test' object mapping class names to item lists")
    wanted = set(categories) if categories is not None else None
    samples: dict[str, list[Sample]] = {}
    seen: set[str] = set()
    missing: list[str] = []
    for key, items in meta["test"].items():
        if not isinstance(items, list):
            raise DatasetLayoutError(f"'{meta_path}': test['{key}'] is not a list")
        for i, item in enumerate(items):
            try:
                img_rel = str(item["img_path"])
                anomaly = int(item["anomaly"])
            except (KeyError, TypeError, ValueError):
                raise DatasetLayoutError(
                    f"'{meta_path}': test['{key}'][{i}] needs 'img_path' and an integer 'anomaly'"
                ) from None
            if anomaly not in (0, 1):
                raise DatasetLayoutError(f"'{meta_path}': test['{key}'][{i}] has anomaly={anomaly}")
            cls = str(item.get("cls_name") or key)
            seen.add(cls)
            if wanted is not None and cls not in wanted:
                continue
            mask_rel = str(item.get("mask_path") or "")
            image = root / img_rel
            mask = root / mask_rel if mask_rel else None
            for p in (image, mask):
                if p is not None and not p.is_file():
                    missing.append(str(p))
            samples.setdefault(cls, []).append(
                Sample(
                    image_path=image,
                    label=anomaly,
                    category=cls,
                    mask_path=mask,
                    defect=str(item.get("specie_name") or ""),
                )
            )
    if wanted is not None:
        unknown = sorted(wanted - seen)
        if unknown:
            raise ValueError(f"unknown categories {unknown}; available: {sorted(seen, key=natural_key)}")
    if not samples:
        raise DatasetLayoutError(f"'{meta_path}' lists no test images")
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} files listed in '{meta_path}' are missing, e.g. {missing[:3]}"
        )
    return build_dataset(name, root, {c: samples[c] for c in sorted(samples, key=natural_key)})


def _rel(path: Path, base: Path) -> str:
    absolute = Path(os.path.abspath(path))
    if absolute.is_relative_to(base):
        return absolute.relative_to(base).as_posix()
    return absolute.as_posix()


def write_meta_json(dataset: AnomalyDataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` as a ``meta.json`` index (the April-GAN / AdaCLIP schema above).

    Args:
        dataset: any :class:`AnomalyDataset`.
        path: the JSON file to write, or a folder (then ``<folder>/meta.json``). Image and mask
            paths are written relative to the JSON file's folder when they lie inside it, and as
            absolute paths otherwise. ``"train"`` is written empty.

    Returns:
        The path of the written file. ``open_dataset("meta:<its folder>")`` gives back the same
        samples (``cls_name`` = category, ``specie_name`` = defect).
    """
    out = Path(path)
    if out.is_dir() or out.suffix.lower() != ".json":
        out = out / "meta.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    base = Path(os.path.abspath(out.parent))
    test = {
        cat: [
            {
                "img_path": _rel(s.image_path, base),
                "mask_path": _rel(s.mask_path, base) if s.mask_path is not None else "",
                "cls_name": cat,
                "specie_name": s.defect,
                "anomaly": int(s.label),
            }
            for s in samples
        ]
        for cat, samples in dataset.samples.items()
    }
    with open(out, "w", encoding="utf-8") as f:
        f.write(json.dumps({"train": {}, "test": test}, indent=4) + "\n")
    return out
