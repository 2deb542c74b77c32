"""The one output path every method shares: upsampling, Gaussian smoothing, resizing, aggregation.

Order, as in the methods' references: patch-level maps are upsampled to the model input size
S x S (bilinear), smoothed there with a Gaussian of the method's sigma, and only then resized to
the original image size for display, so maps from different methods on the same image are
directly comparable pixel by pixel.

Everything here is torch and stays on the maps' device, so a method's model is exportable. The
smoothing (:func:`gaussian_blur`) is the references' ``scipy.ndimage.gaussian_filter`` (``truncate=4``,
``mode="reflect"``) written as two 1-D convolutions over an index-mirrored padding; it equals scipy
to float32 rounding (``tests/test_postprocess.py``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_SIGMA = 4.0


def upsample_patch_maps(maps: torch.Tensor, size: int, align_corners: bool = False) -> torch.Tensor:
    """Bilinear upsampling of patch-grid maps to the model input size.

    Args:
        maps: (B, g, g) or (B, C, g, g).
        size: S, the side of the output.
        align_corners: as the method's reference (AdaCLIP and SDP+ heads use True, SDP and WinCLIP False).
    Returns:
        (B, S, S) or (B, C, S, S) float32.
    """
    squeeze = maps.dim() == 3
    grid = maps.unsqueeze(1) if squeeze else maps
    out = F.interpolate(grid.float(), size=(size, size), mode="bilinear", align_corners=align_corners)
    return out[:, 0] if squeeze else out


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy's 1-D Gaussian weights: radius ``int(truncate * sigma + 0.5)``, normalised to sum 1.

    Returns:
        (2r+1,) float64 tensor.
    """
    radius = int(truncate * float(sigma) + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / float(sigma)) ** 2)
    return weights / weights.sum()


def symmetric_indices(length: int, radius: int) -> torch.Tensor:
    """Indices of a padding by ``radius`` on both sides in scipy's ``reflect`` mode (``dcba|abcd|dcba``).

    Mirrors repeatedly, so radii longer than the signal work as in scipy. Returns (length + 2r,) long.
    """
    positions = torch.arange(-radius, length + radius)
    period = positions.remainder(2 * length)
    return torch.where(period < length, period, 2 * length - 1 - period)


def gaussian_blur(maps: torch.Tensor, sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """Gaussian smoothing of each map, as ``scipy.ndimage.gaussian_filter(m, sigma)`` (truncate 4, reflect).

    Args:
        maps: (B, H, W) float maps, on any device.
        sigma: standard deviation in pixels; 0 returns the maps unchanged.
    Returns:
        (B, H, W) float32 maps on the same device.
    """
    maps = maps.float()
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel(sigma).to(device=maps.device, dtype=torch.float32)
    radius = (kernel.numel() - 1) // 2
    height, width = maps.shape[-2:]
    rows = symmetric_indices(height, radius).to(maps.device)
    cols = symmetric_indices(width, radius).to(maps.device)
    x = maps.unsqueeze(1)  # (B, 1, H, W)
    x = F.conv2d(x.index_select(3, cols), kernel.view(1, 1, 1, -1))  # along W
    x = F.conv2d(x.index_select(2, rows), kernel.view(1, 1, -1, 1))  # along H
    return x[:, 0]


def resize_map_tensor(anomaly_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w) map -> (H, W) float32 by bilinear interpolation (``align_corners=False``), on its device."""
    anomaly_map = anomaly_map.float()
    if tuple(anomaly_map.shape) == tuple(size):
        return anomaly_map.clone()
    return F.interpolate(anomaly_map[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """:func:`resize_map_tensor` for a numpy map: (h, w) -> (H, W) float32."""
    tensor = torch.from_numpy(np.ascontiguousarray(anomaly_map, dtype=np.float32))
    return resize_map_tensor(tensor, size).numpy()
