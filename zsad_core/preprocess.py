"""Image decoding and the one resize/normalise path every method shares.

Decoding (:func:`load_image`) accepts a path, bytes, a PIL image or a numpy array, and returns an
8-bit RGB PIL image:

- EXIF orientation is applied, so the map lines up with the picture as a viewer shows it.
- Any PIL mode: ``L``/``1``/``P``/``CMYK``/``YCbCr``/``LAB``/``HSV`` convert to RGB; images with
  transparency (``RGBA``, ``LA``, ``P`` with a transparent colour) are composited over white;
  16-bit and 32-bit images (``I;16``, ``I``, ``F``, common for medical scans) are min-max scaled
  to 0..255 by their own range, since their nominal range (65535) is rarely used.
- Corrupt, truncated, empty and oversized files raise :class:`ImageError` naming the file.

Resize policy (:func:`images_to_batch`): every image is *squashed* to S x S (aspect ratio not kept,
no crop), as all the methods' reference implementations do, so every pixel of the input gets a map
value and the map can be resized straight back to the original size. The resize is done on
tensors (bicubic with antialiasing, then clamped to [0, 1]), which does not depend on the Pillow
version; the references resized PIL images, which differs by a few 1e-2 at most in normalised
units. Normalisation uses the backbone's mean and std (OpenAI's for all CLIP weights used here).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

MAX_IMAGE_PIXELS = int(os.environ.get("ZSAD_MAX_IMAGE_PIXELS", 100_000_000))
MIN_IMAGE_SIDE = 2


class ImageError(ValueError):
    """An input image that cannot be used; the message names it and says why."""


def _describe(source: ImageInput, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<{type(source).__name__}>"


def _scale_high_bit_depth(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    scaled = np.zeros_like(values) if high <= low else (np.nan_to_num(values, nan=low) - low) / (high - low)
    return Image.fromarray(np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (see the module docstring for the rules)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _scale_high_bit_depth(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def _array_to_image(array: np.ndarray, label: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{label}: array of shape {array.shape} is not an image (H,W), (H,W,3) or (H,W,4)")
    if array.dtype == np.uint8:
        return Image.fromarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{label}: float image holds NaN or infinite values")
        if array.min() >= 0 and array.max() <= 1:
            return Image.fromarray(np.round(array * 255).astype(np.uint8))
    if array.ndim == 2:  # integer or float grey image of another range: scale by its own range
        return _scale_high_bit_depth(Image.fromarray(array.astype(np.float32), mode="F"))
    raise ImageError(f"{label}: colour arrays must be uint8 or float in [0, 1], got {array.dtype}")


def load_image(source: ImageInput, name: str | None = None) -> Image.Image:
    """Decode ``source`` to an 8-bit RGB PIL image with EXIF orientation applied.

    Raises:
        ImageError: unreadable, truncated, empty, too small or too large images.
    """
    label = _describe(source, name)
    if isinstance(source, np.ndarray):
        image = _array_to_image(source, label)
    elif isinstance(source, Image.Image):
        image = source
    else:
        try:
            if isinstance(source, bytes):
                if not source:
                    raise ImageError(f"{label}: empty data")
                handle = io.BytesIO(source)
            else:
                path = Path(source)
                if not path.is_file():
                    raise ImageError(f"{label}: no such file")
                if path.stat().st_size == 0:
                    raise ImageError(f"{label}: empty file")
                handle = path
            image = Image.open(handle)
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"{label}: {width}x{height} pixels is more than the limit of {MAX_IMAGE_PIXELS:,} "
                    "(set ZSAD_MAX_IMAGE_PIXELS to raise it)"
                )
            image.load()
        except ImageError:
            raise
        except UnidentifiedImageError as error:
            raise ImageError(f"{label}: not an image file, or a format Pillow cannot read") from error
        except Image.DecompressionBombError as error:
            raise ImageError(f"{label}: image is too large to decode safely ({error})") from error
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageError(f"{label}: corrupt or truncated image ({error})") from error
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"{label}: {width}x{height} pixels is more than the limit of {MAX_IMAGE_PIXELS:,}")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageError(f"{label}: {width}x{height} is too small to analyse")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the image unusable
        pass
    return to_rgb(image)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def resize_normalize(
    image: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, S, S) float32: squash-resize (bicubic, antialiased), clamp, normalise."""
    pixels = image.unsqueeze(0).float().div_(255.0)
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        pixels = pixels.clamp_(0.0, 1.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((pixels - mean_t) / std_t)[0]


def images_to_batch(
    images: Sequence[Image.Image], size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Decoded RGB images -> ((B, 3, S, S) float32 batch, [(H, W), ...] original sizes)."""
    tensors = [image_to_tensor(image) for image in images]
    batch = torch.stack([resize_normalize(t, size, mean, std) for t in tensors])
    return batch, [(int(t.shape[1]), int(t.shape[2])) for t in tensors]
