"""Medical sets: image-label folders (HeadCT, BrainMRI, Br35H) and image+mask folders (ISIC,
CVC-ClinicDB, CVC-ColonDB, Kvasir-SEG, TN3K).

Every medical set has one category, named after the format (``"brainmri"``, ``"clinicdb"``...),
except in the AdaCLIP-processed layout with several category folders. Prompts use
``MEDICAL_PROMPT_NAMES`` (brainmri -> "brain", isic -> "skin", clinicdb -> "colon", ...).

Image-label sets (``headct:``, ``brainmri:``, ``br35h:``), image-level metrics only; tried in order:

1. AdaCLIP-processed: ``<root>/[<Name>/]test/good/*`` normal, every other ``test/<folder>/``
   anomalous (``ground_truth/<folder>/`` masks used if present).
2. Label folders, in ``<root>`` or up to two levels below it (e.g. Kaggle's
   ``brain_tumor_dataset/{no,yes}``): normal folders named one of ``MEDICAL_NORMAL_NAMES``
   (no, good, normal, healthy, negative, ok, 0), anomalous folders one of
   ``MEDICAL_ABNORMAL_NAMES`` (yes, anomaly, abnormal, ungood, defect, bad, tumor, tumour,
   hemorrhage, haemorrhage, positive, disease, lesion, 1); case-insensitive. Br35H's unlabelled
   ``pred/`` folder and mask folders are ignored; any other folder holding images is an error.
3. Kaggle HeadCT: ``labels.csv`` (columns ``id, hemorrhage``) beside the images ``NNN.png``
   (in the same folder or up to two levels below, e.g. ``head_ct/head_ct/``).

Image+mask sets (``isic:``, ``clinicdb:``, ``colondb:``, ``kvasir:``, ``tn3k:``), every image
anomalous (pixel metrics only); tried in order:

1. AdaCLIP-processed: ``<root>/[<Name>/]test/<folder>/*`` + ``ground_truth/<folder>/*``.
2. An image folder and a mask folder side by side, in ``<root>`` or up to two levels below it.
   Folder names are compared lower-case without spaces/punctuation; an image folder ends with
   images/image/imgs/img/original/data/input/frames (``images/``, ``Original/``,
   ``ISIC2016_Task1_Test_Data/``, ``test-image/``), a mask folder with masks/mask/groundtruth/gt/
   segmentation/labels/annotations (``masks/``, ``Ground Truth/``,
   ``ISIC2016_Task1_Test_GroundTruth/``, ``test-mask/``). When several folders are found, their
   common prefixes must agree (``..._Test_Data`` <-> ``..._Test_GroundTruth``). If several pairs
   qualify, the one whose path names the dataset (``CVC-ColonDB/``) wins, then the shallowest, then
   a ``test`` one, then the first in sorted order (``PNG/`` before ``TIF/`` for CVC-ClinicDB).
   Masks are paired by stem, the suffixes ``_mask``/``_Segmentation``/``_gt`` allowed, never by
   sorted order.

The original CVC-ColonDB release (images and ``p<N>.tiff`` masks in one folder) is not accepted:
split it into ``images/`` and ``masks/``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

from .base import AnomalyDataset, DatasetLayoutError, Sample, build_dataset, list_images, pair_masks, subdirs
from .mvtec import find_test_categories, read_test_category

__all__ = [
    "IMAGE_LABEL_LAYOUT",
    "IMAGE_MASK_LAYOUT",
    "MEDICAL_ABNORMAL_NAMES",
    "MEDICAL_NORMAL_NAMES",
    "read_image_label_set",
    "read_image_mask_set",
]

MEDICAL_NORMAL_NAMES = ("no", "good", "normal", "healthy", "negative", "ok", "0")
MEDICAL_ABNORMAL_NAMES = (
    "yes", "anomaly", "abnormal", "ungood", "defect", "bad", "tumor", "tumour",
    "hemorrhage", "haemorrhage", "positive", "disease", "lesion", "1",
)  # fmt: skip
_IGNORED = ("pred", "train", "ground_truth", "groundtruth", "gt", "masks", "mask")

IMAGE_LABEL_LAYOUT = (
    "<root>/no/* normal + <root>/yes/* abnormal (also good|normal|healthy / anomaly|abnormal|tumor|"
    "hemorrhage..., possibly one or two folders down), or AdaCLIP's <root>/<Name>/test/{good,<defect>}/*, "
    "or Kaggle HeadCT labels.csv + NNN.png"
)
IMAGE_MASK_LAYOUT = (
    "<root>/images/* + <root>/masks/* (also Original/ + 'Ground Truth/', *_Test_Data/ + "
    "*_Test_GroundTruth/ with *_Segmentation masks, possibly one or two folders down), or AdaCLIP's "
    "<root>/<Name>/test/<defect>/* + ground_truth/<defect>/*; every image anomalous"
)

_IMG_ENDINGS = (
    "images",
    "image",
    "imgs",
    "img",
    "originals",
    "original",
    "data",
    "inputs",
    "input",
    "frames",
)
_MASK_ENDINGS = (
    "masks", "mask", "groundtruth", "gt", "segmentations", "segmentation", "labels", "label", "annotations",
)  # fmt: skip
_KEYWORDS = {
    "isic": ("isic", "isbi"),
    "clinicdb": ("clinicdb", "clinic"),
    "colondb": ("colondb", "colon"),
    "kvasir": ("kvasir",),
    "tn3k": ("tn3k",),
}


def _walk(root: Path, depth: int = 2) -> list[tuple[int, Path]]:
    """``root`` and its visible sub-folders down to ``depth`` levels, breadth first."""
    out = [(0, root)]
    frontier = [root]
    for level in range(1, depth + 1):
        frontier = [c for d in frontier for c in subdirs(d)]
        out.extend((level, d) for d in frontier)
    return out


def _check_categories(available: list[str], categories: Sequence[str] | None) -> None:
    if categories is not None:
        unknown = [c for c in categories if c not in available]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; available: {available}")


def _from_test_layout(
    root: Path, name: str, categories: Sequence[str] | None
) -> dict[str, list[Sample]] | None:
    """AdaCLIP-processed layout; one test/ folder gives the category ``name``."""
    found = find_test_categories(root)
    if not found:
        return None
    if len(found) == 1:
        found = [(name, found[0][1])]
    _check_categories([c for c, _ in found], categories)
    return {
        cat: read_test_category(d, cat, normal_names=MEDICAL_NORMAL_NAMES)
        for cat, d in found
        if categories is None or cat in categories
    }


# ----------------------------------------------------------------------------- image-label sets


def _label_folders(folder: Path) -> tuple[list[Path], list[Path], list[Path]] | None:
    normal, abnormal, unknown = [], [], []
    for d in subdirs(folder):
        low = d.name.lower()
        if low in _IGNORED:
            continue
        if low in MEDICAL_NORMAL_NAMES:
            normal.append(d)
        elif low in MEDICAL_ABNORMAL_NAMES:
            abnormal.append(d)
        elif list_images(d):
            unknown.append(d)
    if not any(list_images(d) for d in normal + abnormal):
        return None
    return normal, abnormal, unknown


def _from_labels_csv(root: Path, name: str) -> list[Sample] | None:
    csvs = [d / "labels.csv" for _, d in _walk(root, 1) if (d / "labels.csv").is_file()]
    if not csvs:
        return None
    csv_path = csvs[0]
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = [[c.strip() for c in row] for row in csv.reader(f) if row]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise DatasetLayoutError(f"'{csv_path}' should have a header and rows 'id, label'")
    defect = rows[0][1] or "anomaly"
    by_id: dict[int, Path] = {}
    for _, d in _walk(csv_path.parent, 2):
        for img in list_images(d):
            if img.stem.isdigit():
                by_id.setdefault(int(img.stem), img)
    samples, missing = [], []
    for row in rows[1:]:
        try:
            idx, lab = int(row[0]), int(float(row[1]))
        except (ValueError, IndexError):
            raise DatasetLayoutError(
                f"'{csv_path}': bad row {row} (expected integer id and 0/1 label)"
            ) from None
        if idx not in by_id:
            missing.append(idx)
            continue
        label = 1 if lab else 0
        samples.append(Sample(by_id[idx], label, name, None, defect=defect if label else "good"))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} ids in '{csv_path}' have no image named like '{missing[0]:03d}.png' "
            f"below '{csv_path.parent}'"
        )
    return samples


def read_image_label_set(root: Path, *, name: str, categories: Sequence[str] | None = None) -> AnomalyDataset:
    """Read an image-level medical set (see the module docstring for the accepted layouts)."""
    samples = _from_test_layout(root, name, categories)
    if samples is not None:
        return build_dataset(name, root, samples)
    _check_categories([name], categories)
    for _, d in _walk(root, 2):
        found = _label_folders(d)
        if found is None:
            continue
        normal, abnormal, unknown = found
        if unknown:
            raise DatasetLayoutError(
                f"unrecognised image folders {[u.name for u in unknown]} in '{d}': name normal images "
                f"one of {list(MEDICAL_NORMAL_NAMES)} and abnormal ones one of {list(MEDICAL_ABNORMAL_NAMES)}"
            )
        items = [
            Sample(img, label, name, None, defect=folder.name)
            for label, folders in ((0, normal), (1, abnormal))
            for folder in folders
            for img in list_images(folder)
        ]
        return build_dataset(name, root, {name: items})
    items = _from_labels_csv(root, name)
    if items:
        return build_dataset(name, root, {name: items})
    raise FileNotFoundError(
        f"no normal/abnormal image folders ({'/'.join(MEDICAL_NORMAL_NAMES[:3])} + "
        f"{'/'.join(MEDICAL_ABNORMAL_NAMES[:4])}...), no test/ folder and no labels.csv in '{root}' "
        f"or two levels below it"
    )


# ----------------------------------------------------------------------------- image+mask sets


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _classify(name: str) -> tuple[str, str] | None:
    n = _norm(name)
    for kind, endings in (("mask", _MASK_ENDINGS), ("image", _IMG_ENDINGS)):
        for e in endings:
            if n.endswith(e):
                return kind, n[: -len(e)]
    return None


def _pairs_in(folder: Path) -> list[tuple[Path, Path]]:
    images, masks = [], []
    for d in subdirs(folder):
        kind = _classify(d.name)
        if kind is None or not list_images(d):
            continue
        (images if kind[0] == "image" else masks).append((d, kind[1]))
    if len(images) == 1 and len(masks) == 1:
        return [(images[0][0], masks[0][0])]
    return [(i, m) for i, ib in images for m, mb in masks if ib == mb]


def _find_image_mask_dirs(root: Path, name: str) -> tuple[Path, Path] | None:
    candidates = [(depth, i, m) for depth, d in _walk(root, 2) for i, m in _pairs_in(d)]
    if not candidates:
        return None
    keywords = _KEYWORDS.get(name, (name,))

    def names_dataset(c: tuple[int, Path, Path]) -> bool:
        rel = _norm(c[1].relative_to(root).as_posix()) + _norm(root.name)
        return any(k in rel for k in keywords)

    if any(names_dataset(c) for c in candidates):
        candidates = [c for c in candidates if names_dataset(c)]
    shallowest = min(c[0] for c in candidates)
    candidates = [c for c in candidates if c[0] == shallowest]
    tests = [c for c in candidates if "test" in _norm(c[1].name)]
    candidates = tests or candidates
    return candidates[0][1], candidates[0][2]


def read_image_mask_set(root: Path, *, name: str, categories: Sequence[str] | None = None) -> AnomalyDataset:
    """Read a pixel-level medical set (see the module docstring for the accepted layouts)."""
    samples = _from_test_layout(root, name, categories)
    if samples is not None:
        return build_dataset(name, root, samples)
    _check_categories([name], categories)
    found = _find_image_mask_dirs(root, name)
    if found is None:
        raise FileNotFoundError(
            f"no image folder + mask folder pair (images/ + masks/, Original/ + 'Ground Truth/', "
            f"*_Data/ + *_GroundTruth/) and no test/ folder in '{root}' or two levels below it"
        )
    image_dir, mask_dir = found
    images = list_images(image_dir)
    masks = pair_masks(images, mask_dir)
    items = [Sample(img, 1, name, m, defect="anomaly") for img, m in zip(images, masks, strict=True)]
    return build_dataset(name, root, {name: items})
