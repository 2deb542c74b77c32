"""The resize/normalise step every method shares, after decoding (one function, a policy per method).

Decoding (:func:`load_image`, any path, bytes, PIL image or array -> 8-bit RGB, bad input -> a
:class:`ImageError` naming it) lives in :mod:`zsad_core.decode` and is re-exported here.

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
