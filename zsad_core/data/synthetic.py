"""The project's data generator: seeded anomaly-detection images with exact defect masks.

Fourteen categories (seven textures, seven manufactured objects; :data:`CATEGORIES`), eight defect
types (:data:`DEFECTS`), a fixed split into training and held-out categories (:data:`CATEGORY_SPLIT`,
:func:`list_categories`). Every sample differs (colour, pose, scale, lighting, background, noise),
and one (category, index, seed) always gives the same pixels. The drawing is in
:mod:`zsad_core.data.scenes`.

Exact masks: a defective sample is rendered together with the same sample without the defect; the
mask is the defect's footprint, and the defective image equals the defect-free one everywhere
outside it and differs (after quantisation to uint8) at every pixel inside it. So ``mask ==
any(render_sample(c, i, s, defect=d)[0] != render_sample(c, i, s)[0], axis=-1)`` holds exactly.

- :func:`render_sample`: one sample as arrays.
- :func:`write_synthetic_dataset` / ``python -m zsad_core synth``: the MVTec AD layout.
- :func:`make_synthetic_dataset`: tiny datasets in every layout the readers accept, for tests.

>>> from zsad_core.data.synthetic import render_sample
>>> image, mask = render_sample("striped_fabric", index=3, seed=0, size=256, defect="hole")
>>> image.shape, image.dtype, mask.shape, bool(mask.any())
((256, 256, 3), dtype('uint8'), (256, 256), True)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from . import scenes

__all__ = [
    "CATEGORIES",
    "CATEGORY_INFO",
    "CATEGORY_SPLIT",
    "DEFECTS",
    "DEFECT_INFO",
    "HELDOUT_CATEGORIES",
    "SYNTHETIC_FORMATS",
    "TRAIN_CATEGORIES",
    "CategoryInfo",
    "DefectInfo",
    "add_synth_arguments",
    "caption",
    "category_defects",
    "generator_category",
    "generator_defect",
    "list_categories",
    "make_synthetic_dataset",
    "render_sample",
    "run_synth",
    "write_synthetic_dataset",
]


# -------------------------------------------------------------------------------------- catalogue
@dataclass(frozen=True)
class DefectInfo:
    """A defect type: folder name, caption words and where they go ("before" or "after" the noun)."""

    name: str
    words: str
    position: str
    structural: bool  # drawn by the scene (changes its shape) rather than painted over it


@dataclass(frozen=True)
class CategoryInfo:
    """A category: folder name, display name for captions, its article, kind and applicable defects."""

    name: str
    display: str
    article: str
    kind: str  # "texture" or "object"
    defects: tuple[str, ...]


DEFECT_INFO: dict[str, DefectInfo] = {
    d.name: d
    for d in (
        DefectInfo("scratch", "scratched", "before", False),
        DefectInfo("crack", "cracked", "before", False),
        DefectInfo("hole", "with a hole", "after", False),
        DefectInfo("stain", "stained", "before", False),
        DefectInfo("contamination", "contaminated", "before", False),
        DefectInfo("missing_part", "with a missing part", "after", True),
        DefectInfo("bent", "bent", "before", True),
        DefectInfo("colour_shift", "discoloured", "before", False),
    )
}
#: Defect folder names.
DEFECTS: tuple[str, ...] = tuple(DEFECT_INFO)

_SURFACE = ("scratch", "stain", "contamination", "colour_shift")
CATEGORY_INFO: dict[str, CategoryInfo] = {
    c.name: c
    for c in (
        CategoryInfo("woven_fabric", "woven fabric", "a", "texture", ("hole", *_SURFACE)),
        CategoryInfo("knitted_fabric", "knitted fabric", "a", "texture", ("hole", *_SURFACE)),
        CategoryInfo("wood", "wood", "a piece of", "texture", ("crack", "hole", *_SURFACE)),
        CategoryInfo("dotted_fabric", "dotted fabric", "a", "texture", ("hole", *_SURFACE)),
        CategoryInfo("striped_fabric", "striped fabric", "a", "texture", ("hole", *_SURFACE)),
        CategoryInfo("tiles", "tiles", "", "texture", ("crack", *_SURFACE)),
        CategoryInfo("leather", "leather", "a piece of", "texture", ("crack", "hole", *_SURFACE)),
        CategoryInfo("washer", "metal washer", "a", "object", ("crack", "missing_part", "bent", *_SURFACE)),
        CategoryInfo("metal_plate", "metal plate", "a", "object", ("hole", "missing_part", *_SURFACE)),
        CategoryInfo("screw", "screw", "a", "object", ("missing_part", "bent", *_SURFACE)),
        CategoryInfo("circuit_board", "circuit board", "a", "object", ("missing_part", *_SURFACE)),
        CategoryInfo("bottle_cap", "bottle cap", "a", "object", ("crack", "hole", "bent", *_SURFACE)),
        CategoryInfo("pill", "pill", "a", "object", ("crack", "missing_part", *_SURFACE)),
        CategoryInfo("hex_nut", "hex nut", "a", "object", ("crack", "missing_part", *_SURFACE)),
    )
}
#: Category folder names: seven textures, then seven objects.
CATEGORIES: tuple[str, ...] = tuple(CATEGORY_INFO)

#: The fixed split: "train" categories may be used for any training (the small CLIP, the learnable
#: methods); "heldout" ones never are, and are for zero-shot evaluation only.
CATEGORY_SPLIT: dict[str, str] = {
    "woven_fabric": "train",
    "knitted_fabric": "train",
    "wood": "heldout",
    "dotted_fabric": "train",
    "striped_fabric": "heldout",
    "tiles": "train",
    "leather": "train",
    "washer": "heldout",
    "metal_plate": "train",
    "screw": "train",
    "circuit_board": "train",
    "bottle_cap": "heldout",
    "pill": "heldout",
    "hex_nut": "train",
}
TRAIN_CATEGORIES: tuple[str, ...] = tuple(c for c in CATEGORIES if CATEGORY_SPLIT[c] == "train")
HELDOUT_CATEGORIES: tuple[str, ...] = tuple(c for c in CATEGORIES if CATEGORY_SPLIT[c] == "heldout")
SPLITS = ("train", "heldout", "all")


def list_categories(split: str = "all") -> list[str]:
    """The categories of ``split``: "train", "heldout" or "all" (in :data:`CATEGORIES` order)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return [c for c in CATEGORIES if split == "all" or CATEGORY_SPLIT[c] == split]


def _category(name: str) -> CategoryInfo:
    try:
        return CATEGORY_INFO[name]
    except KeyError:
        raise ValueError(f"unknown category {name!r}; known: {', '.join(CATEGORIES)}") from None


def category_defects(category: str) -> tuple[str, ...]:
    """The defect types that apply to ``category`` (in :data:`DEFECTS` order)."""
    applicable = _category(category).defects
    return tuple(d for d in DEFECTS if d in applicable)


def caption(category: str, defect: str | None = None) -> str:
    """``"a photo of a scratched striped fabric"``, ``"a photo of a metal plate with a hole"``,
    ``"a photo of a flawless metal washer"``."""
    info = _category(category)
    if defect is None:
        words = ["flawless", info.display]
    else:
        d = DEFECT_INFO.get(defect)
        if d is None:
            raise ValueError(f"unknown defect {defect!r}; known: {', '.join(DEFECTS)}")
        words = [d.words, info.display] if d.position == "before" else [info.display, d.words]
    return " ".join(["a photo of", *([info.article] if info.article else []), *words])


# ------------------------------------------------------------------------------------- rendering
def _size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = (int(v) for v in size)
    return h, w


def _rng(seed: int, category: str, index: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(category.encode()), int(index), *stream])


def _min_area(h: int, w: int) -> int:
    return max(1, round(h * w * 0.0008))


def _clean(region: np.ndarray, fill: bool) -> np.ndarray:
    """Drop specks of a few pixels (large images only); fill enclosed holes of structural changes."""
    h, w = region.shape
    if fill:
        region = ndimage.binary_fill_holes(region)
    speck = (h * w) // 16384
    if speck >= 2 and region.any():
        labels, n = ndimage.label(region)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= speck
        keep[0] = False
        region = keep[labels]
    return region


def _compose(good: np.ndarray, good_f: np.ndarray, bad_f: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The defective image: ``bad_f`` quantised inside ``region``, ``good`` outside, every region pixel
    different from ``good`` (pixels that quantise equal are moved one level towards the defect)."""
    out = np.where(region[..., None], scenes.to_uint8(bad_f), good)
    same = region & (out == good).all(-1)
    if same.any():
        step = np.where((bad_f - good_f).mean(-1)[same] < 0, -1, 1)[:, None]
        g = good[same].astype(np.int16)
        moved = g + step
        moved = np.where((moved < 0) | (moved > 255), g - step, moved)
        out[same] = moved.astype(np.uint8)
    return out


def render_sample(
    category: str, index: int = 0, seed: int = 0, size: int | Sequence[int] = 256, defect: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One generated sample: an (H, W, 3) uint8 RGB image and its (H, W) bool defect mask.

    Args:
        category: one of :data:`CATEGORIES`.
        index: which sample (any int >= 0); each index is a different piece, pose, colour, light.
        seed: the generator seed (>= 0).
        size: ``int`` or ``(height, width)``, at least 8.
        defect: ``None`` (a defect-free sample, all-False mask) or one of
            :func:`category_defects(category) <category_defects>`.

    The defective sample is the defect-free sample of the same (category, index, seed, size) with
    the defect added: the two differ exactly at the mask's pixels. The mask is never empty and covers
    at most about half of the image.
    """
    info = _category(category)
    if defect is not None and defect not in info.defects:
        raise ValueError(
            f"defect {defect!r} does not apply to {category}; choose one of {', '.join(category_defects(category))}"
        )
    if int(seed) < 0 or int(index) < 0:
        raise ValueError("seed and index must be >= 0")
    h, w = _size(size)
    if min(h, w) < 8:
        raise ValueError(f"size must be at least 8 pixels, got {h}x{w}")
    canvas = scenes.Canvas.make(h, w, _rng(seed, category, index, 0))
    draw = scenes.SCENES[category]
    layers = draw(canvas, _rng(seed, category, index, 1))
    light = scenes.lighting(canvas, _rng(seed, category, index, 2))
    noise_rng = _rng(seed, category, index, 3)
    noise = noise_rng.normal(0, noise_rng.uniform(0.005, 0.018), (h, w, 3)).astype(np.float32)
    lit = layers.rgb * light
    good_f = lit + noise
    good = scenes.to_uint8(good_f)
    if defect is None:
        return good, np.zeros((h, w), bool)
    drng = np.random.default_rng([int(seed), zlib.crc32(category.encode()), int(index), 4, zlib.crc32(defect.encode())])
    structural = DEFECT_INFO[defect].structural
    region = np.zeros((h, w), bool)
    bad_f = good_f
    for _attempt in range(6):
        if structural:
            bad_lit = draw(canvas, _rng(seed, category, index, 1), defect, drng).rgb * light
            region = np.abs(bad_lit - lit).max(-1) > 0.05
        else:
            rgb, alpha = scenes.paint_defect(canvas, layers, defect, drng)
            bad_lit = rgb * light
            region = alpha >= 0.5
        region = _clean(region, fill=structural)
        area = int(region.sum())
        if _min_area(h, w) <= area <= 0.5 * h * w:
            bad_f = bad_lit + noise
            break
    else:  # very small images: keep the last defect if it left anything, else one darkened pixel
        if not 0 < region.sum() <= 0.5 * h * w:
            region = np.zeros((h, w), bool)
            region[h // 2, w // 2] = True
            bad_lit = lit * np.float32(0.5)
        bad_f = bad_lit + noise
    return _compose(good, good_f, bad_f, region), region


# ----------------------------------------------------------------------------- MVTec AD layout
def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, optimize=False)


def write_synthetic_dataset(
    out: str | os.PathLike,
    split: str = "train",
    seed: int = 0,
    per_category: int = 10,
    size: int = 256,
    *,
    categories: Sequence[str] | None = None,
    progress: bool = False,
) -> str:
    """Write the categories of ``split`` in the MVTec AD layout under ``out``; returns ``"mvtec:<out>"``.

    Per category: ``per_category`` images in ``train/good/``, ``per_category`` in ``test/good/``, and
    ``per_category`` per applicable defect in ``test/<defect>/`` with ``ground_truth/<defect>/
    <stem>_mask.png`` (0/255). Sample indices: train goods ``0..n-1``, test goods ``n..2n-1``, then
    each defect in :data:`DEFECTS` order. ``out/synth.json`` records the settings and the command.

    Args:
        categories: a subset of the split's categories (default: all of them).
    """
    names = list_categories(split)
    if categories is not None:
        unknown = [c for c in categories if c not in names]
        if unknown:
            raise ValueError(f"categories not in split {split!r}: {', '.join(unknown)}; it has {', '.join(names)}")
        names = [c for c in names if c in categories]
    if int(per_category) < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 32 <= int(size) <= 2048:
        raise ValueError(f"size must be between 32 and 2048 pixels, got {size}")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--out {root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        raise ValueError(f"--out {root} is not empty; choose a new folder")
    n = int(per_category)
    jobs = []
    for cat in names:
        index = 0
        for folder in ("train", "test"):
            for i in range(n):
                jobs.append((cat, index, None, root / cat / folder / "good" / f"{i:03d}.png"))
                index += 1
        for defect in category_defects(cat):
            for i in range(n):
                jobs.append((cat, index, defect, root / cat / "test" / defect / f"{i:03d}.png"))
                index += 1
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), unit="image", desc="synth", file=sys.stderr, disable=not progress or None,
               dynamic_ncols=True)  # fmt: skip
    try:
        for cat, index, defect, path in jobs:
            image, mask = render_sample(cat, index, seed, size, defect)
            _save_png(path, image)
            if defect is not None:
                _save_png(root / cat / "ground_truth" / defect / f"{path.stem}_mask.png", mask.astype(np.uint8) * 255)
            bar.update(1)
    finally:
        bar.close()
    record = {
        "generator": "zsad_core.data.synthetic",
        "split": split,
        "seed": int(seed),
        "per_category": n,
        "size": int(size),
        "categories": {c: list(category_defects(c)) for c in names},
        "command": f"python -m zsad_core synth --split {split} --out {root} --seed {seed} --per-category {n} "
        f"--size {size}" + (f" --categories {','.join(names)}" if categories is not None else ""),
    }
    (root / "synth.json").write_text(json.dumps(record, indent=2) + "\n")
    return f"mvtec:{root}"


def _whole(text: str, name: str, minimum: int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"{name} expects a whole number, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``synth`` command's arguments (values are checked by :func:`run_synth`, one-line errors)."""
    parser.add_argument("--split", help="train, heldout or all (the fixed category split)")
    parser.add_argument("--out", "-o", help="folder to create (must be new or empty)")
    parser.add_argument("--seed", default="0", help="generator seed, >= 0 (default 0)")
    parser.add_argument(
        "--per-category", default="10", help="images per folder: train/good, test/good and each defect (default 10)"
    )
    parser.add_argument("--size", default="256", help="image side in pixels, 32-2048 (default 256)")
    parser.add_argument("--categories", help="comma-separated subset of the split's categories")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_synth(args: argparse.Namespace) -> int:
    """Run ``synth`` from parsed arguments; prints the spec to open the result with; returns the exit status."""
    try:
        if not args.split:
            raise ValueError("--split is required: train, heldout or all")
        if args.split not in SPLITS:
            raise ValueError(f"--split must be train, heldout or all, got {args.split!r}")
        if not args.out:
            raise ValueError("--out is required: the folder to write")
        categories = None
        if args.categories is not None:
            categories = [c.strip() for c in args.categories.split(",") if c.strip()]
            if not categories:
                raise ValueError("--categories is empty")
        spec = write_synthetic_dataset(
            args.out,
            args.split,
            seed=_whole(args.seed, "--seed", 0),
            per_category=_whole(args.per_category, "--per-category", 1),
            size=_whole(args.size, "--size", 1),
            categories=categories,
            progress=not args.no_progress,
        )
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(spec)
    return 0


# ------------------------------------------------------------------------ tiny test datasets
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
# familiar dataset names drawn as the closest generator category; others are picked by a hash
_ALIASES = {
    "metal_nut": "hex_nut", "nut": "hex_nut", "cap": "bottle_cap", "bottle": "bottle_cap", "ring": "washer",
    "capsule": "pill", "capsules": "pill", "pcb": "circuit_board", "board": "circuit_board", "tile": "tiles",
    "carpet": "knitted_fabric", "grid": "woven_fabric", "fabric": "woven_fabric", "plate": "metal_plate",
}  # fmt: skip
_DEFECT_WORDS = (
    ("scratch", "scratch"), ("line", "scratch"), ("crack", "crack"), ("hole", "hole"), ("stain", "stain"),
    ("blob", "contamination"), ("contamin", "contamination"), ("particle", "contamination"),
    ("missing", "missing_part"), ("bent", "bent"), ("dent", "bent"), ("colo", "colour_shift"),
)  # fmt: skip


def generator_category(name: str) -> str:
    """The generator category a dataset category name is drawn as (deterministic for any name)."""
    key = name.lower()
    if key in CATEGORY_INFO:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    return CATEGORIES[zlib.crc32(name.encode()) % len(CATEGORIES)]


def generator_defect(category: str, name: str) -> str:
    """The defect type a defect folder name is drawn as on ``category`` (deterministic for any name)."""
    applicable = category_defects(category)
    key = name.lower()
    for word, defect in _DEFECT_WORDS:
        if word in key and defect in applicable:
            return defect
    return applicable[zlib.crc32(name.encode()) % len(applicable)]


class _Writer:
    """Writes one dataset category's images: samples of its generator category, numbered in order."""

    def __init__(self, seed: int, category: str, size, image_ext, color, mask_value: int):
        self.seed = seed
        self.category = generator_category(category)
        self.salt = zlib.crc32(category.encode()) << 16  # two dataset names drawn alike still differ
        self.size = size
        self.exts = [image_ext] if isinstance(image_ext, str) else list(image_ext)
        self.color = color
        self.mask_value = mask_value
        self.count = 0

    def image(
        self, folder: Path, stem: str, defect: str | None = None, ext: str | None = None
    ) -> tuple[Path, np.ndarray]:
        i = self.count
        self.count += 1
        kind = None if defect is None else generator_defect(self.category, defect)
        arr, mask = render_sample(self.category, self.salt + i, self.seed, self.size, kind)
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
        Image.fromarray(mask.astype(np.uint8) * np.uint8(self.mask_value if value is None else value)).save(path)
        return path


def _two_instances(mask: np.ndarray) -> np.ndarray:
    """VisA-style instance indices: the mask's pixels split into instance 1 and instance 2."""
    inst = mask.astype(np.uint8)
    ys, xs = np.nonzero(mask)
    if len(ys) >= 2:
        order = np.lexsort((ys, xs))[len(ys) // 2 :]
        inst[ys[order], xs[order]] = 2
    return inst


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

    Images are samples of :func:`render_sample`: each category name is drawn as a generator category
    (:func:`generator_category`: its own name, a familiar alias such as ``metal_nut`` -> ``hex_nut``,
    else one picked by a hash of the name), each defect folder as a defect type
    (:func:`generator_defect`). A written mask is exactly the changed region of its RGB image.

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
        defects: defect folder names. A name containing a defect word (scratch, line, crack, hole,
            stain, blob, contamination, missing, bent, dent, colour/color) is drawn as that defect
            where it applies; other names as a defect picked by a hash of the name.
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
                # every second mask holds two instances (indices 1, 2), as VisA masks do
                inst = _two_instances(m) if i % 2 else m.astype(np.uint8)
                mp = data / "Masks" / "Anomaly" / f"{p.stem}.png"
                w.mask(mp, inst, value=1)
                rows.append([cat, "test", "anomaly", p.relative_to(root).as_posix(), mp.relative_to(root).as_posix()])
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
