"""Reading ground-truth masks as boolean arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["check_mask_size", "load_mask", "mask_array", "resize_mask"]


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive (height, width), got {size!r}")
    return h, w


def mask_array(image: Image.Image) -> np.ndarray:
    """Binarise a decoded mask image: (H, W) bool, True where anomalous.

    Any non-zero value is anomalous (0/255, 0/253, instance indices as in VisA, 16-bit, float).
    Colour masks: any non-zero colour channel; alpha is ignored. Palette images are mapped through
    their palette first. JPEG masks (e.g. Kvasir-SEG) are lossy, so compression noise around 0 is
    not a defect: they are thresholded at half of the maximum (> 127) instead.
    """
    threshold = 127 if image.format == "JPEG" else 0
    if image.mode == "1":
        return np.asarray(image, dtype=bool).copy()
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGB", "RGBA", "RGBX"):
        arr = np.asarray(image)[..., :3]
    elif image.mode in ("LA", "La", "PA"):
        arr = np.asarray(image)[..., 0]
    elif image.mode in ("L", "I", "F") or image.mode.startswith("I;"):
        arr = np.asarray(image)
    else:  # CMYK, YCbCr, LAB, HSV, ...
        arr = np.asarray(image.convert("RGB"))
    out = arr > threshold
    if out.ndim == 3:
        out = out.any(axis=-1)
    return np.ascontiguousarray(out)


def load_mask(path: Path | str | None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Load a ground-truth mask as an (H, W) bool array, True where anomalous.

    Args:
        path: mask file, or ``None`` for "no defect" (normal images): an all-False mask of ``size``.
        size: optional output ``(height, width)``. The mask is resized as a float 0/1 image with
            bilinear interpolation and binarised at > 0.5 (the protocol of the reference code).
            Required when ``path`` is ``None``.

    Returns:
        ``np.ndarray`` of dtype bool and shape ``size`` (or the file's own size).

    See :func:`mask_array` for which pixel values count as anomalous.
    """
    if size is not None:
        size = _check_size(size)
    if path is None:
        if size is None:
            raise ValueError("load_mask(None) needs size=(height, width) for the all-normal mask")
        return np.zeros(size, dtype=bool)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    with Image.open(path) as im:
        mask = mask_array(im)
    return mask if size is None else resize_mask(mask, size)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool -> ``size`` (height, width) bool: bilinear on a float 0/1 image, > 0.5 (the reference protocol)."""
    h, w = _check_size(size)
    if mask.shape == (h, w):
        return mask
    resized = Image.fromarray(mask.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(resized) > 0.5


def check_mask_size(mask: np.ndarray, image_size: tuple[int, int], mask_path: Path | str, image_path: Path | str) -> None:
    """Refuse a mask whose size is not its image's: stretching it would silently misplace the defect.

    Args:
        mask: (H, W) mask at its file's own size.
        image_size: (height, width) of the decoded image.
    Raises:
        ValueError: the sizes differ; the message names both files and sizes.
    """
    if tuple(mask.shape) != tuple(image_size):
        raise ValueError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
            f"{image_size[1]}x{image_size[0]}: masks must have their image's size (not stretched)"
        )
