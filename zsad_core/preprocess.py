"""The one resize/normalise path every method shares, after decoding.

Decoding (:func:`load_image`, any path, bytes, PIL image or array -> 8-bit RGB, bad input -> a
:class:`ImageError` naming it) lives in :mod:`zsad_core.decode` and is re-exported here.

Resize policy (:func:`images_to_batch`): every image is *squashed* to S x S (aspect ratio not kept,
no crop), as all the methods' reference implementations do, so every pixel of the input gets a map
value and the map can be resized straight back to the original size. The resize is done on
tensors (bicubic with antialiasing, then clamped to [0, 1]), which does not depend on the Pillow
version; the references resized PIL images, which differs by a few 1e-2 at most in normalised
units. Normalisation uses the backbone's mean and std (OpenAI's for all CLIP weights used here).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .decode import ImageError, ImageInput, load_image, to_rgb

__all__ = ["ImageError", "ImageInput", "image_to_tensor", "images_to_batch", "load_image", "resize_normalize", "to_rgb"]


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
