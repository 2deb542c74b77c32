"""Tiny generated datasets in every supported layout, for tests and documentation.

Images are smooth coloured noise (a per-category base colour); an anomalous image carries a bright
blob (or a bright line for defects named ``*scratch*``/``*line*``/``*crack*``), and its mask is
exactly that region. Generation is deterministic for a given ``seed`` and fast (64x64 by default).

>>> from zsad_core.data import make_synthetic_dataset, open_dataset
>>> ds = open_dataset(make_synthetic_dataset("/tmp/toy", "mvtec", categories=["metal_nut"]))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SYNTHETIC_FORMATS", "make_synthetic_dataset", "synthetic_image"]

#: Layouts :func:`make_synthetic_dataset` can write (``mvtec3d`` is read with ``mvtec:``).
SYNTHETIC_FORMATS = (
    "mvtec", "mvtec3d", "visa", "meta", "folder",
    "headct", "brainmri", "br35h",
    "isic", "clinicdb", "colondb", "kvasir", "tn3k",
)  # fmt: skip

_SPEC_PREFIX = {"mvtec3d": "mvtec"}
_IMAGE_MASK_DIRS = {
    "isic": ("ISIC2016_Task1_Test_Data", "ISIC2016_Task1_Test_GroundTruth"),
    "clinicdb": ("Original", "Ground Truth"),
    "colondb": ("images", "masks"),
    "kvasir": ("images", "masks"),
    "tn3k": ("test-image", "test-mask"),
}


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(v) for v in size)
    return h, w


def _defect_mask(rng: np.random.Generator, h: int, w: int, defect: str) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if any(k in defect.lower() for k in ("scratch", "line", "crack")):
        y0, x0, y1, x1 = rng.uniform(0.15, 0.85, 4) * np.array([h, w, h, w])
        d = np.array([y1 - y0, x1 - x0])
        t = np.clip(((yy - y0) * d[0] + (xx - x0) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
        dist = np.hypot(yy - (y0 + t * d[0]), xx - (x0 + t * d[1]))
        return dist <= max(1.0, 0.03 * min(h, w))
    cy, cx = rng.uniform(0.25, 0.75, 2) * np.array([h, w])
    ry, rx = rng.uniform(0.08, 0.18, 2) * min(h, w)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def synthetic_image(
    rng: np.random.Generator, size: tuple[int, int], base: Sequence[int], defect: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 textured image and its (H, W) bool defect mask (all False if no defect)."""
    h, w = size
    coarse = rng.normal(0, 25, (max(2, h // 8), max(2, w // 8), 3)) + np.asarray(base, np.float32)
    coarse_img = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize(
        (w, h), Image.Resampling.BICUBIC
    )
    img = np.asarray(coarse_img, np.float32) + rng.normal(0, 6, (h, w, 3))
    mask = np.zeros((h, w), bool) if defect is None else _defect_mask(rng, h, w, defect)
    img[mask] = 245 + rng.normal(0, 4, (int(mask.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8), mask


class _Writer:
    def __init__(self, seed: int, category: str, size, image_ext, color, mask_value: int):
        self.rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
        self.base = self.rng.integers(40, 170, 3)
        self.size = size
        self.exts = [image_ext] if isinstance(image_ext, str) else list(image_ext)
        self.color = color
        self.mask_value = mask_value
        self.count = 0

    def image(
        self, folder: Path, stem: str, defect: str | None = None, ext: str | None = None
    ) -> tuple[Path, np.ndarray]:
        arr, mask = synthetic_image(self.rng, self.size, self.base, defect)
        i = self.count
        self.count += 1
        grey = self.color == "grey" or (self.color == "mixed" and i % 2 == 1)
        ext = (ext or self.exts[i % len(self.exts)]).lstrip(".")
        im = Image.fromarray(arr).convert("L") if grey else Image.fromarray(arr)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stem}.{ext}"
        if ext.lower() in ("jpg", "jpeg"):
            im.save(path, format="JPEG", quality=92)
        else:
            im.save(path)
        return path, mask

    def mask(self, path: Path, mask: np.ndarray, value: int | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * np.uint8(self.mask_value if value is None else value)).save(
            path
        )
        return path


def make_synthetic_dataset(
    root: str | os.PathLike,
    fmt: str = "mvtec",
    categories: Sequence[str] = ("widget",),
    n_good: int = 3,
    n_bad: int = 3,
    size: int | Sequence[int] = 64,
    seed: int = 0,
    *,
    defects: Sequence[str] = ("blob",),
    image_ext: str | Sequence[str] = "png",
    color: str = "rgb",
    mask_value: int = 255,
    name_prefix: str = "",
    masks: bool = True,
) -> str:
    """Write a tiny dataset in layout ``fmt`` under ``root`` and return its spec for ``open_dataset``.

    Args:
        root: the dataset root to create (may exist).
        fmt: one of :data:`SYNTHETIC_FORMATS`. Medical formats ignore ``categories`` (one category
            named after the format); pixel-only ones (isic, clinicdb, colondb, kvasir, tn3k) ignore
            ``n_good`` (every image anomalous).
        categories: category names (industrial formats).
        n_good, n_bad: normal and anomalous test images per category; anomalous images are spread
            round-robin over ``defects``.
        size: image size, ``int`` or ``(height, width)``.
        seed: all content is a deterministic function of the arguments.
        defects: defect folder names; a name containing "scratch"/"line"/"crack" draws a line.
        image_ext: image extension, or a sequence cycled image by image (``("png", "JPG")`` mixes
            PNG and upper-case JPEG). Masks are always PNG.
        color: "rgb", "grey" or "mixed" (every second image grey).
        mask_value: the value of defect pixels in written masks (255; 253 like MVTec 3D-AD...).
            VisA masks always hold instance indices (1, 2).
        name_prefix: prefix of file stems, e.g. "img " for file names with spaces.
        masks: ``folder`` format only: write ``ground_truth/`` masks.

    Returns:
        The spec string, e.g. ``"mvtec:/tmp/toy"`` (``mvtec3d`` trees are read with ``mvtec:``).
    """
    fmt = fmt.lower()
    if fmt not in SYNTHETIC_FORMATS:
        raise ValueError(f"unknown synthetic format {fmt!r}; choose one of {SYNTHETIC_FORMATS}")
    if color not in ("rgb", "grey", "mixed"):
        raise ValueError(f"color must be 'rgb', 'grey' or 'mixed', got {color!r}")
    if n_good < 0 or n_bad < 0 or not defects:
        raise ValueError("n_good and n_bad must be >= 0 and defects non-empty")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    hw = _size(size)

    def writer(category: str) -> _Writer:
        return _Writer(seed, category, hw, image_ext, color, mask_value)

    def stem(i: int) -> str:
        return f"{name_prefix}{i:03d}"

    def bad_items(w: _Writer):
        for i in range(n_bad):
            yield i, defects[i % len(defects)]

    if fmt in ("mvtec", "meta", "folder"):
        meta: dict[str, list[dict]] = {}
        for cat in categories:
            w = writer(cat)
            cat_dir = root / cat
            img_root = cat_dir / "test" if fmt != "folder" else cat_dir
            items = []
            if fmt == "mvtec":
                w.image(cat_dir / "train" / "good", stem(0))
            for i in range(n_good):
                p, _ = w.image(img_root / "good", stem(i))
                items.append((p, None, "good", 0))
            per_defect: dict[str, int] = {}
            for _, defect in bad_items(w):
                j = per_defect.get(defect, 0)
                per_defect[defect] = j + 1
                p, m = w.image(img_root / defect, stem(j), defect)
                mp = None
                if fmt != "folder" or masks:
                    mp = w.mask(cat_dir / "ground_truth" / defect / f"{p.stem}_mask.png", m)
                items.append((p, mp, defect, 1))
            meta[cat] = [
                {
                    "img_path": p.relative_to(root).as_posix(),
                    "mask_path": mp.relative_to(root).as_posix() if mp else "",
                    "cls_name": cat,
                    "specie_name": defect,
                    "anomaly": label,
                }
                for p, mp, defect, label in items
            ]
        if fmt == "meta":
            (root / "meta.json").write_text(json.dumps({"train": {}, "test": meta}, indent=4) + "\n")
    elif fmt == "mvtec3d":
        for cat in categories:
            w = writer(cat)
            test = root / cat / "test"
            for i in range(n_good):
                p, m = w.image(test / "good" / "rgb", stem(i))
                w.mask(test / "good" / "gt" / f"{p.stem}.png", m)
            per_defect = {}
            for _, defect in bad_items(w):
                j = per_defect.get(defect, 0)
                per_defect[defect] = j + 1
                p, m = w.image(test / defect / "rgb", stem(j), defect)
                w.mask(test / defect / "gt" / f"{p.stem}.png", m)
    elif fmt == "visa":
        rows = []
        for cat in categories:
            w = writer(cat)
            data = root / cat / "Data"
            for i in range(n_good + 1):  # the last normal image goes to the train split
                p, _ = w.image(data / "Images" / "Normal", stem(i))
                split = "train" if i == n_good else "test"
                rows.append([cat, split, "normal", p.relative_to(root).as_posix(), ""])
            for i, defect in bad_items(w):
                p, m = w.image(data / "Images" / "Anomaly", stem(i), defect)
                inst = m.astype(np.uint8)
                if i % 2:  # a second instance with index 2, as VisA masks hold instance indices
                    inst[_defect_mask(w.rng, *hw, "blob") & ~m] = 2
                mp = data / "Masks" / "Anomaly" / f"{p.stem}.png"
                w.mask(mp, inst, value=1)
                rows.append(
                    [cat, "test", "anomaly", p.relative_to(root).as_posix(), mp.relative_to(root).as_posix()]
                )
        (root / "split_csv").mkdir(exist_ok=True)
        with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["object", "split", "label", "image", "mask"])
            out.writerows(rows)
    elif fmt == "headct":
        w = writer(fmt)
        folder = root / "head_ct" / "head_ct"
        labels = [1] * n_bad + [0] * n_good  # Kaggle order: hemorrhage first
        for i, lab in enumerate(labels):
            w.image(folder, f"{i:03d}", "blob" if lab else None, ext="png")
        with open(root / "labels.csv", "w", newline="") as f:
            f.write("id, hemorrhage\n" + "".join(f"{i},{lab}\n" for i, lab in enumerate(labels)))
    elif fmt in ("brainmri", "br35h"):
        w = writer(fmt)
        for i in range(n_good):
            w.image(root / "no", f"{name_prefix}{i + 1} no")
        for i in range(n_bad):
            w.image(root / "yes", f"{name_prefix}Y{i + 1}", "blob")
        if fmt == "br35h":
            w.image(root / "pred", "pred0", "blob")  # unlabelled in the Kaggle release
    else:  # image + mask sets, every image anomalous
        w = writer(fmt)
        img_dir, mask_dir = _IMAGE_MASK_DIRS[fmt]
        for i in range(n_bad):
            name = f"ISIC_{i:07d}" if fmt == "isic" else f"{name_prefix}{i + 1}"
            p, m = w.image(root / img_dir, name, defects[i % len(defects)])
            suffix = "_Segmentation" if fmt == "isic" else ""
            w.mask(root / mask_dir / f"{p.stem}{suffix}.png", m)
    return f"{_SPEC_PREFIX.get(fmt, fmt)}:{root}"
