"""MVTec AD layout (also MVTec 3D-AD, MPDD, BTAD-style and AdaCLIP-processed sets).

Accepted layout (``mvtec:/path``)::

    <root>/<category>/test/good/*.png                  normal test images
    <root>/<category>/test/<defect>/*.png              anomalous test images
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   masks (or <stem>.png)
    <root>/<category>/train/...                        ignored (zero-shot: test split only)

- ``<root>`` may also be a single category folder (the one holding ``test/``); its folder name is
  the category. Files beside the category folders (readme.txt, license.txt, ...) are ignored.
- MVTec 3D-AD's original layout is accepted too: ``test/<defect>/rgb/*.png`` with masks in
  ``test/<defect>/gt/*.png`` (the xyz point clouds are ignored).
- Any image extension (png, jpg, jpeg, bmp, tif, tiff, webp), case-insensitive; hidden files skipped.
- Masks are paired by stem (``000.png`` <-> ``000_mask.png``), never by sorted order; an image
  without a mask of its name raises a :class:`DatasetLayoutError` naming it.
- A defect folder without a ``ground_truth/<defect>`` folder gives ``mask_path=None``
  (and then ``has_masks`` is False for the whole dataset).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import AnomalyDataset, DatasetLayoutError, Sample, build_dataset, list_images, pair_masks, subdirs

__all__ = ["LAYOUT", "find_test_categories", "read_mvtec", "read_test_category"]

LAYOUT = (
    "<root>/<category>/test/good/*.png, <root>/<category>/test/<defect>/*.png, "
    "<root>/<category>/ground_truth/<defect>/<stem>_mask.png (root may be one category folder; "
    "MVTec 3D-AD test/<defect>/rgb + gt also accepted)"
)

_GT_NAMES = ("ground_truth", "groundtruth", "gt")


def find_test_categories(root: Path) -> list[tuple[str, Path]]:
    """``(category, folder)`` for ``root`` itself if it holds ``test/``, else for its children that do."""
    if (root / "test").is_dir():
        return [(root.name, root)]
    return [(d.name, d) for d in subdirs(root) if (d / "test").is_dir()]


def _gt_root(cat_dir: Path) -> Path | None:
    for name in _GT_NAMES:
        if (cat_dir / name).is_dir():
            return cat_dir / name
    return None


def read_test_category(cat_dir: Path, category: str, normal_names: Sequence[str] = ("good",)) -> list[Sample]:
    """Samples of one ``<cat_dir>/test/<defect>/`` tree with masks in ``<cat_dir>/ground_truth/``.

    Folders named in ``normal_names`` (case-insensitive) are normal; every other one is a defect.
    """
    normal = {n.lower() for n in normal_names}
    gt_root = _gt_root(cat_dir)
    samples: list[Sample] = []
    for defect_dir in subdirs(cat_dir / "test"):
        defect = defect_dir.name
        images = list_images(defect_dir)
        mask_dir = gt_root / defect if gt_root is not None else None
        if not images and (defect_dir / "rgb").is_dir():  # MVTec 3D-AD: test/<defect>/{rgb,gt,xyz}
            images = list_images(defect_dir / "rgb")
            mask_dir = defect_dir / "gt"
        if not images:
            continue
        label = 0 if defect.lower() in normal else 1
        masks = pair_masks(images, mask_dir) if label else [None] * len(images)
        samples.extend(
            Sample(image_path=img, label=label, category=category, mask_path=m, defect=defect)
            for img, m in zip(images, masks, strict=True)
        )
    if not samples:
        raise FileNotFoundError(f"no test images under '{cat_dir / 'test'}' (expected test/<defect>/*.png)")
    return samples


def read_mvtec(root: Path, *, name: str = "mvtec", categories: Sequence[str] | None = None) -> AnomalyDataset:
    """Read an MVTec-AD-style tree (see the module docstring for the accepted layout)."""
    found = find_test_categories(root)
    if not found:
        raise FileNotFoundError(
            f"no category folder with a 'test/' sub-folder in '{root}' "
            f"(children: {[d.name for d in subdirs(root)][:10]})"
        )
    names = [c for c, _ in found]
    if len(set(names)) != len(names):
        raise DatasetLayoutError(f"duplicate category names in '{root}': {names}")
    if categories is not None:
        unknown = [c for c in categories if c not in names]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; available: {names}")
        found = [(c, d) for c, d in found if c in set(categories)]
    samples = {cat: read_test_category(d, cat) for cat, d in found}
    return build_dataset(name, root, samples)
