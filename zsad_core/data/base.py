"""Core types and file helpers shared by every dataset reader.

A dataset is a mapping ``category -> list[Sample]`` (the *test* split only: every method in this
project reads only test images, see methods.md §6.3-6.4). Samples are sorted deterministically:
normal images first, then by defect name, then by file path in natural order ("2.png" < "10.png").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "IMAGE_EXTENSIONS",
    "MEDICAL_PROMPT_NAMES",
    "AnomalyDataset",
    "DatasetLayoutError",
    "Sample",
    "build_dataset",
    "is_image_file",
    "list_images",
    "natural_key",
    "pair_masks",
    "sort_samples",
    "subdirs",
]

#: File extensions accepted as images or masks (compared case-insensitively).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

#: Class names put into text prompts for the medical sets (the category name is not descriptive).
MEDICAL_PROMPT_NAMES: dict[str, str] = {
    "headct": "head ct",
    "brainmri": "brain",
    "br35h": "brain",
    "isic": "skin",
    "clinicdb": "colon",
    "colondb": "colon",
    "kvasir": "colon",
    "tn3k": "thyroid",
}

# Suffixes stripped from mask stems when pairing masks with images by stem
# ("000_mask.png" -> "000", "ISIC_0000003_Segmentation.png" -> "ISIC_0000003").
_MASK_SUFFIXES = ("_mask", "-mask", " mask", "_segmentation", "-segmentation", "_gt", "-gt", "_label")


class DatasetLayoutError(ValueError):
    """A dataset folder exists but its content does not match the expected layout."""


@dataclass(frozen=True)
class Sample:
    """One test image.

    Attributes:
        image_path: the image file.
        label: 0 normal, 1 anomalous.
        category: the category (class) it belongs to, e.g. ``"bottle"``.
        mask_path: the ground-truth mask file, or ``None`` (normal images, image-level-only sets).
        defect: the defect folder name (``"good"`` for normal images where known).
    """

    image_path: Path
    label: int
    category: str
    mask_path: Path | None
    defect: str = ""


@dataclass
class AnomalyDataset:
    """The test split of an anomaly-detection dataset.

    Attributes:
        name: the format / dataset name (``"mvtec"``, ``"visa"``, ``"brainmri"``, ...).
        root: the dataset root folder.
        samples: ``category -> samples``, categories and samples sorted deterministically.
        has_masks: pixel metrics are possible (every anomalous image has a mask).
        has_image_labels: image metrics are possible (both normal and anomalous images exist);
            False for pixel-only medical sets where every image is anomalous.
        prompt_names: optional per-category overrides for :meth:`prompt_name`.
    """

    name: str
    root: Path
    samples: dict[str, list[Sample]]
    has_masks: bool
    has_image_labels: bool
    prompt_names: dict[str, str] = field(default_factory=dict)

    def categories(self) -> list[str]:
        """The category names, in dataset order (natural sort)."""
        return list(self.samples)

    def prompt_name(self, category: str) -> str:
        """The class name put into text prompts for ``category``.

        Order of precedence: an explicit entry in ``prompt_names``; for the medical sets
        (``MEDICAL_PROMPT_NAMES``: headct -> "head ct", brainmri/br35h -> "brain", isic -> "skin",
        clinicdb/colondb/kvasir -> "colon", tn3k -> "thyroid"); otherwise the category verbatim
        with ``_`` replaced by a space (``"metal_nut"`` -> ``"metal nut"``).
        """
        if category in self.prompt_names:
            return self.prompt_names[category]
        if self.name in MEDICAL_PROMPT_NAMES:
            return MEDICAL_PROMPT_NAMES[self.name]
        return category.replace("_", " ")

    def all_samples(self) -> list[Sample]:
        """Every sample, category by category."""
        return [s for cat in self.samples.values() for s in cat]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.all_samples())

    def __len__(self) -> int:
        return sum(len(v) for v in self.samples.values())

    def counts(self) -> dict[str, tuple[int, int]]:
        """``category -> (n_normal, n_anomalous)``."""
        return {
            c: (sum(s.label == 0 for s in v), sum(s.label == 1 for s in v)) for c, v in self.samples.items()
        }

    def subset(self, categories: Sequence[str]) -> AnomalyDataset:
        """A copy restricted to ``categories`` (raises ``ValueError`` for unknown names)."""
        unknown = [c for c in categories if c not in self.samples]
        if unknown:
            raise ValueError(
                f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown} for dataset "
                f"'{self.name}' at {self.root}; available: {self.categories()}"
            )
        return build_dataset(
            self.name, self.root, {c: self.samples[c] for c in categories}, prompt_names=self.prompt_names
        )


_NUM = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key ordering embedded numbers numerically ("img2" < "img10"), ties broken verbatim."""
    parts = _NUM.split(text)
    # re.split with one capture group alternates text / number, starting with text.
    key = tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts))
    return (key, text)


def sort_samples(samples: Iterable[Sample]) -> list[Sample]:
    """Deterministic order: normal first, then defect name, then image path (natural order)."""
    return sorted(samples, key=lambda s: (s.label, natural_key(s.defect), natural_key(str(s.image_path))))


def is_image_file(path: Path) -> bool:
    """A visible regular file with an image extension (any case)."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (hidden files and non-images skipped), natural order."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: natural_key(p.name))


def subdirs(folder: Path) -> list[Path]:
    """Visible sub-directories of ``folder``, natural order (files such as readme.txt ignored)."""
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )


def _mask_keys(stem: str) -> set[str]:
    low = stem.lower()
    keys = {low}
    for suffix in _MASK_SUFFIXES:
        if low.endswith(suffix) and len(low) > len(suffix):
            keys.add(low[: -len(suffix)])
    return keys


def pair_masks(images: Sequence[Path], mask_dir: Path | None) -> list[Path | None]:
    """Pair each image with its mask in ``mask_dir``, by name only.

    Pairing is by file stem, case-insensitive, allowing the mask stem to carry a suffix
    (``000.png`` <-> ``000_mask.png`` / ``000.png`` / ``000_Segmentation.png``); the extensions may
    differ. Images and masks are never paired by their sorted order: when names do not match, a
    wrong pairing would silently move every pixel metric. A missing ``mask_dir`` gives ``None``
    for every image.

    Raises:
        DatasetLayoutError: an image without a mask of its name, or with several; the message names
            them and the masks left over.
    """
    if mask_dir is None or not mask_dir.is_dir():
        return [None] * len(images)
    masks = list_images(mask_dir)
    index: dict[str, list[Path]] = {}
    for m in masks:
        for k in _mask_keys(m.stem):
            index.setdefault(k, []).append(m)
    paired: list[Path | None] = []
    for img in images:
        exact = index.get(img.stem.lower(), [])
        paired.append(exact[0] if len(exact) == 1 else None)
    if all(p is not None for p in paired) and len(set(paired)) == len(paired):
        return paired
    unmatched = [img.name for img, p in zip(images, paired, strict=True) if p is None]
    left_over = sorted(m.name for m in set(masks) - set(paired))
    raise DatasetLayoutError(
        f"cannot pair masks in '{mask_dir}' ({len(masks)} files) with {len(images)} images in "
        f"'{images[0].parent if images else '?'}' by name: {len(unmatched)} image(s) without exactly one mask "
        f"of the same stem (e.g. '000.png' <-> '000.png' or '000_mask.png'): {unmatched[:5]}"
        f"{'...' if len(unmatched) > 5 else ''}; masks not matching any image: {left_over[:5]}"
        f"{'...' if len(left_over) > 5 else ''}. Rename the masks after their images (they are never paired by "
        "sorted order, which silently mismatches them)"
    )


def build_dataset(
    name: str,
    root: Path,
    samples: dict[str, list[Sample]],
    prompt_names: dict[str, str] | None = None,
) -> AnomalyDataset:
    """Sort ``samples`` and derive ``has_masks`` / ``has_image_labels``.

    ``has_masks``: there is at least one anomalous image and every anomalous image has a mask.
    ``has_image_labels``: there is at least one normal and one anomalous image.
    """
    ordered = {c: sort_samples(samples[c]) for c in samples}
    every = [s for v in ordered.values() for s in v]
    anomalous = [s for s in every if s.label == 1]
    has_masks = bool(anomalous) and all(s.mask_path is not None for s in anomalous)
    has_image_labels = bool(anomalous) and any(s.label == 0 for s in every)
    return AnomalyDataset(
        name=name,
        root=root,
        samples=ordered,
        has_masks=has_masks,
        has_image_labels=has_image_labels,
        prompt_names=dict(prompt_names or {}),
    )
