"""Image decoding and the resize/normalise step every method shares (one function, a policy per method).

Decoding (:func:`load_image`) accepts a path, bytes, a PIL image or a numpy array, and returns an
8-bit RGB PIL image:

- EXIF orientation is applied, so the map lines up with the picture as a viewer shows it.
- Any PIL mode: ``L``/``1``/``P``/``CMYK``/``YCbCr``/``LAB``/``HSV`` convert to RGB; images with
  transparency (``RGBA``, ``LA``, ``P`` with a transparent colour) are composited over white;
  16-bit and 32-bit images (``I;16``, ``I``, ``F``, common for medical scans) are min-max scaled
  to 0..255 by their own range, since their nominal range (65535) is rarely used.
- Corrupt, truncated, empty and oversized files raise :class:`ImageError` naming the file.

Resize policy (:func:`resize_normalize`, :func:`images_to_batch`): every image is *squashed* to
S x S (aspect ratio not kept, no crop), as all the methods' reference implementations do, so every
pixel of the input gets a map value and the map can be resized straight back to the original size.
How it is resampled is a setting (``resize``, one of :data:`RESIZE_POLICIES`, on every method's
config), because the references differ and their end-to-end numbers depend on it:

- ``"pil-bicubic"``: Pillow's bicubic on the 8-bit RGB image, then ``/ 255``. This is what CLIP-AD
  and AdaCLIP do (torchvision ``Resize((S, S), BICUBIC)`` on a PIL image, ``CenterCrop(S)`` (a no-op
  after it), ``ToTensor``, ``Normalize``). Pillow resamples in two passes and rounds and clips to
  uint8 after each, so the result is 8-bit and depends on the Pillow version (12.3 and 13.0 differ
  by up to 0.044 in normalised units on a 600 x 800 photo resized to 518). Default of SDP, SDP+ and
  AdaCLIP.
- ``"tensor-bicubic-unclamped"``: the 8-bit image scaled to [0, 1] as torchvision's
  ``to_dtype(float32, scale=True)`` does (``* (1 / 255)``), resized as a float tensor (bicubic,
  antialiased, ``align_corners=False``) and **not** clamped, so overshoot at edges stays outside
  [0, 1]. This is anomalib's WinCLIP (``read_image(as_tensor=True)``, then ``Resize((240, 240),
  antialias=True, BICUBIC)`` and ``Normalize`` on the tensor). Default of WinCLIP.
- ``"tensor-bicubic"``: as the previous one but scaled with ``/ 255`` and clamped to [0, 1] after
  resizing. No reference does exactly this; it does not depend on the Pillow version (zsad's only
  policy before the setting existed).

An image already S x S is not resampled under any policy. Normalisation uses the backbone's mean
and std (OpenAI's for all CLIP weights used here): ``(x - mean) / std`` in float32, as torchvision's
``Normalize``.
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


RESIZE_POLICIES = ("pil-bicubic", "tensor-bicubic", "tensor-bicubic-unclamped")
"""The resize policies of :func:`resize_normalize` (see the module docstring)."""


def check_resize_policy(resize: str) -> str:
    """Return ``resize`` if it names one of :data:`RESIZE_POLICIES`, else raise ``ValueError``."""
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {resize!r}; choose from {', '.join(RESIZE_POLICIES)}")
    return resize


def resize_normalize(
    image: Image.Image | torch.Tensor,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize: str = "tensor-bicubic",
) -> torch.Tensor:
    """Squash-resize one image to S x S by the ``resize`` policy and normalise it.

    Args:
        image: an RGB PIL image, or its (3, H, W) uint8 tensor (:func:`image_to_tensor`).
        size: S.
        mean, std: per-channel normalisation constants.
        resize: one of :data:`RESIZE_POLICIES` (module docstring).
    Returns:
        (3, S, S) float32 tensor ``(resized - mean) / std``.
    """
    check_resize_policy(resize)
    if resize == "pil-bicubic":
        if isinstance(image, torch.Tensor):
            image = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        pixels = image_to_tensor(image).unsqueeze(0).float().div_(255.0)  # torchvision's ToTensor
    else:
        tensor = image if isinstance(image, torch.Tensor) else image_to_tensor(image)
        if resize == "tensor-bicubic-unclamped":  # torchvision's to_dtype(scale=True), as anomalib's read_image
            pixels = tensor.unsqueeze(0).float().mul_(1.0 / 255)
        else:
            pixels = tensor.unsqueeze(0).float().div_(255.0)
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
            if resize == "tensor-bicubic":
                pixels = pixels.clamp_(0.0, 1.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((pixels - mean_t) / std_t)[0]


def images_to_batch(
    images: Sequence[Image.Image],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize: str = "tensor-bicubic",
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Decoded RGB images -> ((B, 3, S, S) float32 batch, [(H, W), ...] original sizes).

    ``resize`` is the policy of :func:`resize_normalize`; detectors pass their config's.
    """
    batch = torch.stack([resize_normalize(image, size, mean, std, resize) for image in images])
    return batch, [(image.height, image.width) for image in images]
