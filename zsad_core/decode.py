"""Image decoding: any path, bytes, PIL image or array -> an 8-bit RGB PIL image, or a clear error.

:func:`load_image` is the one entry point (re-exported by :mod:`zsad_core.preprocess` and the
package). What it does with awkward input:

- EXIF orientation is applied, so the map lines up with the picture as a viewer shows it.
- Any PIL mode: ``L``/``1``/``P``/``CMYK``/``YCbCr``/``LAB``/``HSV`` convert to RGB; images with
  transparency (``RGBA``, ``LA``, ``P`` with a transparent colour) are composited over white;
  16-bit and 32-bit images (``I;16``, ``I``, ``F``, common for medical scans) are min-max scaled
  to 0..255 by their own range, since their nominal range (65535) is rarely used.
- Animated images (GIF, APNG, WebP, multi-page TIFF): the first frame is used, and a
  :class:`DecodeWarning` says so.
- Pixel limit: images declaring more than :func:`max_image_pixels` pixels (``ZSAD_MAX_IMAGE_PIXELS``,
  default 100,000,000) are refused from their header, before any pixel is decoded. Pillow's own
  decompression-bomb check (a warning above 89.5 MP, an error above 178.9 MP) is replaced by this
  one for the duration of the header read only, under a lock, so the limit can be raised past
  Pillow's without its warning and no other thread's check is changed for longer than that.
- Truncated files are errors, never partly black pictures: Pillow's ``LOAD_TRUNCATED_IMAGES`` is
  honoured as ``False`` whatever another library set it to, and a PNG whose compressed data holds
  fewer rows than its header declares (which Pillow decodes silently) is refused.
- ``reduce_to`` (used by the command line for huge pictures): an image with more pixels is decoded
  at its size divided by the smallest whole factor that fits (rounded up), keeping its aspect
  ratio: JPEGs through Pillow's ``draft`` (the decoder itself skips the detail, so the full-size
  picture is never in memory) then a box filter for the rest of the way, other formats with a box
  filter after decoding.
- ``pixel_limit``: a caller's own limit below :func:`max_image_pixels` (a server's), same wording.
- Corrupt, truncated, empty, too small and oversized files, folders and missing paths raise
  :class:`ImageError` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
MAX_PIXELS_VARIABLE = "ZSAD_MAX_IMAGE_PIXELS"
MIN_IMAGE_SIDE = 2
FULL_SIZE_KEY = "zsad_full_size"  # image.info entry: (W, H) before a ``reduce_to`` reduction
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height

# Pillow's bomb check and truncation switch are module globals: they are changed only under this lock,
# and only around the calls that read them.
_PILLOW_GLOBALS_LOCK = threading.Lock()


class ImageError(ValueError):
    """An input image that cannot be used; the message names it and says why."""


class DecodeWarning(UserWarning):
    """Something about an input image the user should know (e.g. only its first frame is used)."""


def max_image_pixels() -> int:
    """The pixel limit: ``ZSAD_MAX_IMAGE_PIXELS`` when set (read at each call), else 100,000,000.

    Raises:
        ImageError: the variable is not a positive whole number.
    """
    text = os.environ.get(MAX_PIXELS_VARIABLE, "").strip().replace("_", "").replace(",", "")
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ImageError(
            f"{MAX_PIXELS_VARIABLE} must be a positive whole number, got {os.environ[MAX_PIXELS_VARIABLE]!r}"
        )
    return value


def _describe(source: ImageInput, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<{type(source).__name__}>"


def _check_pixels(width: int, height: int, label: str, pixel_limit: int | None = None) -> None:
    """Refuse more than ``pixel_limit`` pixels (a caller's own, lower limit) or :func:`max_image_pixels`."""
    limit = max_image_pixels()
    own = pixel_limit is not None and pixel_limit < limit
    limit = pixel_limit if own else limit
    if width * height > limit:
        raise ImageError(
            f"{label}: {width}x{height} is {width * height:,} pixels, more than the limit of {limit:,}"
            + ("" if own else f" (set {MAX_PIXELS_VARIABLE} to raise it)")
        )


# ----------------------------------------------------------------------------------------- modes
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


# ------------------------------------------------------------------------------------ file checks
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_expected_bytes(width: int, height: int, bit_depth: int, colour_type: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines a PNG of this header decompresses to (one filter byte per row)."""
    bits = _PNG_CHANNELS.get(colour_type, 1) * bit_depth
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            total += rows * (1 + -(-(columns * bits) // 8))
    return total


def _png_is_short(handle: IO[bytes]) -> bool:
    """True when the PNG's IDAT stream inflates to fewer bytes than its header declares.

    Pillow fills the missing rows with zeros without an error; this reads the chunks again,
    inflating in 1 MiB steps (memory stays bounded whatever the image size).
    """
    handle.seek(0)
    if handle.read(8) != _PNG_SIGNATURE:
        return False
    expected, produced = None, 0
    inflater = zlib.decompressobj()
    while True:
        header = handle.read(8)
        if len(header) < 8:
            break
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", handle.read(13))
            expected = _png_expected_bytes(width, height, depth, colour, bool(interlace))
            handle.seek(length - 13 + 4, io.SEEK_CUR)
        elif kind == b"IDAT":
            remaining = length
            while remaining:
                data = handle.read(min(remaining, 1 << 20))
                if not data:
                    break
                remaining -= len(data)
                try:
                    produced += len(inflater.decompress(data))
                    while inflater.unconsumed_tail:
                        produced += len(inflater.decompress(inflater.unconsumed_tail))
                except zlib.error:
                    return True
            handle.seek(4, io.SEEK_CUR)
        elif kind == b"IEND":
            break
        else:
            handle.seek(length + 4, io.SEEK_CUR)
    with contextlib.suppress(zlib.error):
        produced += len(inflater.flush())
    return expected is not None and produced < expected


@contextlib.contextmanager
def _pillow_checks_off(truncated_images_too: bool = False) -> Iterator[None]:
    """Pillow's decompression-bomb check (and, if asked, ``LOAD_TRUNCATED_IMAGES``) off, under the lock."""
    with _PILLOW_GLOBALS_LOCK:
        saved_limit, saved_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS = None
        if truncated_images_too:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved_limit
            ImageFile.LOAD_TRUNCATED_IMAGES = saved_truncated


def _reduction_factor(width: int, height: int, reduce_to: int | None) -> int:
    """The smallest integer factor that brings ``width x height`` to at most ``reduce_to`` (1: none)."""
    if not reduce_to or width * height <= reduce_to:
        return 1
    factor = max(2, math.ceil(math.sqrt(width * height / reduce_to)))
    while math.ceil(width / factor) * math.ceil(height / factor) > reduce_to:
        factor += 1
    return factor


def _first_frame(image: Image.Image, label: str) -> None:
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        image.seek(0)
        warnings.warn(
            f"{label}: animated or multi-page image with {frames} frames; only the first frame is analysed",
            DecodeWarning,
            stacklevel=4,
        )


def _decode_file(handle: IO[bytes] | Path, label: str, reduce_to: int | None, pixel_limit: int | None) -> Image.Image:
    """Open, check the declared size, decode (reduced when asked) and check for truncation."""
    with _pillow_checks_off():
        image = Image.open(handle)
    width, height = image.size
    _check_pixels(width, height, label, pixel_limit)
    _first_frame(image, label)
    factor = _reduction_factor(width, height, reduce_to)
    target = (-(-width // factor), -(-height // factor))
    image.info[FULL_SIZE_KEY] = (width, height)
    if factor > 1 and image.format == "JPEG":  # the decoder itself scales by 1/2, 1/4 or 1/8, to at least target
        image.draft(image.mode if image.mode in ("RGB", "L") else None, target)
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # set by another library: decode this file as if it were False
        with _pillow_checks_off(truncated_images_too=True):
            image.load()
    else:
        image.load()
    if image.format == "PNG":
        stream = handle if not isinstance(handle, Path) else None
        with contextlib.ExitStack() as stack:
            if stream is None:
                stream = stack.enter_context(open(handle, "rb"))
            if _png_is_short(stream):
                raise ImageError(f"{label}: truncated PNG (its image data holds fewer rows than its header declares)")
    if image.size != target:  # the rest of the way (all of it but for JPEG); EXIF kept for the orientation
        exif = image.getexif().tobytes()
        reduced = to_rgb(image).resize(target, Image.Resampling.BOX)  # box: the mean of each source area
        reduced.info.update({"exif": exif, FULL_SIZE_KEY: (width, height)})
        image = reduced
    return image


def _open_source(source: bytes | str | os.PathLike, label: str) -> IO[bytes] | Path:
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"{label}: empty data")
        return io.BytesIO(source)
    path = Path(source)
    if path.is_dir():
        raise ImageError(f"{label}: is a folder, not an image file")
    if not path.is_file():
        raise ImageError(f"{label}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{label}: empty file")
    return path


def load_image(
    source: ImageInput, name: str | None = None, *, reduce_to: int | None = None, pixel_limit: int | None = None
) -> Image.Image:
    """Decode ``source`` to an 8-bit RGB PIL image with EXIF orientation applied.

    Args:
        source: a path, encoded bytes, a PIL image or an (H, W[, C]) array.
        name: how to name the source in error messages (default: its path or type).
        reduce_to: decode larger images at a size reduced by an integer factor (aspect ratio kept)
            so that they hold at most this many pixels; None: full size.
        pixel_limit: refuse images with more pixels than this, a lower limit than
            :func:`max_image_pixels` (e.g. a server's), checked on the header before decoding; None: that one.
    Returns:
        RGB PIL image, (W, H) = the source's size after EXIF rotation (or reduced, see ``reduce_to``).
    Raises:
        ImageError: unreadable, truncated, empty, too small or too large images, folders, missing paths.
    """
    label = _describe(source, name)
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:
            _check_pixels(source.shape[1], source.shape[0], label, pixel_limit)
        image = _array_to_image(source, label)
    elif isinstance(source, Image.Image):
        _check_pixels(*source.size, label, pixel_limit)
        image = source
    elif isinstance(source, (bytes, str, os.PathLike)):
        handle = _open_source(source, label)
        try:
            image = _decode_file(handle, label, reduce_to, pixel_limit)
        except ImageError:
            raise
        except UnidentifiedImageError as error:
            raise ImageError(f"{label}: not an image file, or a format Pillow cannot read") from error
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
            raise ImageError(f"{label}: corrupt or truncated image ({error})") from error
    else:
        raise ImageError(
            f"{label}: cannot read an image from a {type(source).__name__}; "
            "give a path, bytes, a PIL image or a numpy array"
        )
    width, height = image.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageError(f"{label}: {width}x{height} is too small to analyse (at least {MIN_IMAGE_SIDE} pixels a side)")
    full = image.info.get(FULL_SIZE_KEY, image.size)
    try:
        if image.getexif().get(0x0112) in _TRANSPOSING_ORIENTATIONS:
            full = full[::-1]
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the image unusable
        pass
    rgb = to_rgb(image)
    if rgb is not source:  # never mark the caller's own image
        rgb.info[FULL_SIZE_KEY] = tuple(full)
    return rgb


def full_size(image: Image.Image) -> tuple[int, int]:
    """(W, H) of the picture :func:`load_image` decoded ``image`` from, before any ``reduce_to`` reduction."""
    width, height = image.info.get(FULL_SIZE_KEY, image.size)
    return int(width), int(height)
