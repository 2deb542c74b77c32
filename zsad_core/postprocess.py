"""The one output path every method shares: upsampling, Gaussian smoothing, resizing, aggregation.

Order, as in the methods' references: patch-level maps are upsampled to the model input size
S x S (bilinear), smoothed there with a Gaussian of the method's sigma (scipy, ``truncate=4``,
``mode="reflect"``), and only then resized to the original image size for display, so maps from
different methods on the same image are directly comparable pixel by pixel.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

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


def gaussian_smooth(maps: np.ndarray | torch.Tensor, sigma: float = DEFAULT_SIGMA) -> np.ndarray:
    """Gaussian smoothing of each map (scipy ``gaussian_filter``, the references' choice).

    Args:
        maps: (H, W) or (B, H, W).
        sigma: standard deviation in pixels; 0 returns the maps unchanged.
    Returns:
        float32 array of the same shape.
    """
    array = maps.detach().float().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    array = array.astype(np.float32, copy=True)
    if sigma <= 0:
        return array
    if array.ndim == 2:
        return gaussian_filter(array, sigma=sigma).astype(np.float32)
    return np.stack([gaussian_filter(m, sigma=sigma) for m in array]).astype(np.float32)


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) map -> (H, W) float32 by bilinear interpolation (``align_corners=False``)."""
    if tuple(anomaly_map.shape) == tuple(size):
        return anomaly_map.astype(np.float32, copy=True)
    tensor = torch.from_numpy(np.ascontiguousarray(anomaly_map, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def aggregate_score(
    anomaly_map: np.ndarray, mode: Literal["max", "mean", "topk"] = "max", topk_fraction: float = 0.01
) -> float:
    """One number from a map: its maximum, mean, or the mean of its top ``topk_fraction`` values."""
    values = np.asarray(anomaly_map, dtype=np.float64).ravel()
    if mode == "max":
        return float(values.max())
    if mode == "mean":
        return float(values.mean())
    if mode == "topk":
        k = max(1, int(round(values.size * topk_fraction)))
        return float(np.partition(values, values.size - k)[-k:].mean())
    raise ValueError(f"unknown aggregation {mode!r}; use max, mean or topk")
