"""A plain folder of images sorted into normal and defect sub-folders.

Accepted layout (``folder:/path``)::

    <root>/good/*                  normal images (folder also named normal/, ok/ or no/)
    <root>/<defect>/*              every other sub-folder holds anomalous images
    <root>/ground_truth/<defect>/<stem>.png or <stem>_mask.png    optional masks

- ``<root>`` may also hold several category folders, each in that layout; the category is the
  folder name. A category folder may put the image folders under ``test/`` (MVTec-like).
- Normal folder names are matched case-insensitively; ``ground_truth``/``masks``/``gt`` are mask
  folders, not defects. Hidden files, non-images and sub-folders without images are skipped.
- ``has_masks`` is True only when every anomalous image has a mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import AnomalyDataset, DatasetLayoutError, Sample, build_dataset, list_images, pair_masks, subdirs

__all__ = ["FOLDER_NORMAL_NAMES", "LAYOUT", "read_folder"]

#: Sub-folder names (case-insensitive) holding normal images in the ``folder:`` format.
FOLDER_NORMAL_NAMES = ("good", "normal", "ok", "no")
_MASK_DIRS = ("ground_truth", "groundtruth", "masks", "gt")

LAYOUT = (
    "<root>/good/* (or normal/, ok/, no/) normal, <root>/<defect>/* anomalous, optional "
    "<root>/ground_truth/<defect>/<stem>[_mask].png; or <root>/<category>/ in that layout"
)


def _image_root(folder: Path) -> Path | None:
    """The folder holding good/ + defect folders for a category folder, or None."""
    for base in (folder, folder / "test"):
        for d in subdirs(base):
            if d.name.lower() in FOLDER_NORMAL_NAMES and list_images(d):
                return base
    return None


def _mask_root(category_dir: Path, image_root: Path) -> Path | None:
    for base in (image_root, category_dir):
        for d in subdirs(base):
            if d.name.lower() in _MASK_DIRS:
                return d
    return None


def _read_category(category_dir: Path, image_root: Path, category: str) -> list[Sample]:
    mask_root = _mask_root(category_dir, image_root)
    samples: list[Sample] = []
    for d in subdirs(image_root):
        low = d.name.lower()
        if low in _MASK_DIRS or low == "train":
            continue
        images = list_images(d)
        if not images:
            continue
        label = 0 if low in FOLDER_NORMAL_NAMES else 1
        masks: list[Path | None] = [None] * len(images)
        if label and mask_root is not None:
            masks = pair_masks(images, mask_root / d.name)
        samples.extend(
            Sample(image_path=img, label=label, category=category, mask_path=m, defect=d.name)
            for img, m in zip(images, masks, strict=True)
        )
    return samples


def read_folder(
    root: Path, *, name: str = "folder", categories: Sequence[str] | None = None
) -> AnomalyDataset:
    """Read a plain folder (see the module docstring for the accepted layout)."""
    image_root = _image_root(root)
    if image_root is not None:
        found = [(root.name, root, image_root)]
    else:
        found = []
        for d in subdirs(root):
            ir = _image_root(d)
            if ir is not None:
                found.append((d.name, d, ir))
    if not found:
        raise FileNotFoundError(
            f"'{root}' has no normal-image folder ({'/'.join(FOLDER_NORMAL_NAMES)}) and no category "
            f"folders holding one (sub-folders: {[d.name for d in subdirs(root)][:10]})"
        )
    names = [c for c, _, _ in found]
    if categories is not None:
        unknown = [c for c in categories if c not in names]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; available: {names}")
        found = [f for f in found if f[0] in set(categories)]
    samples = {cat: _read_category(cdir, ir, cat) for cat, cdir, ir in found}
    empty = [c for c, v in samples.items() if not v]
    if empty:
        raise DatasetLayoutError(f"categories without images in '{root}': {empty}")
    return build_dataset(name, root, samples)
