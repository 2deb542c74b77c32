"""The torch smoothing and resizing against scipy and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from zsad_core.postprocess import gaussian_blur, gaussian_kernel, resize_map, resize_map_tensor, symmetric_indices


@pytest.mark.parametrize(
    ("height", "width", "sigma"), [(240, 240, 8.0), (64, 48, 4.0), (20, 9, 4.0), (7, 5, 2.5), (33, 33, 0.7)]
)
def test_gaussian_blur_equals_scipy(height: int, width: int, sigma: float) -> None:
    """Radii longer than the map (sigma 4 on 9 px: radius 16) mirror repeatedly, as scipy's reflect mode."""
    maps = np.random.default_rng(0).standard_normal((2, height, width)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(maps), sigma).numpy()
    theirs = np.stack([gaussian_filter(m, sigma=sigma, mode="reflect", truncate=4.0) for m in maps])
    # Two passes of <= 65 float32 products each vs scipy's float64 accumulation: ~1e-7 relative to
    # the sum of |weights * values| (<= max |value| = ~4 here).
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_gaussian_blur_zero_sigma_is_identity_and_pinned_values() -> None:
    maps = torch.arange(12, dtype=torch.float32).view(1, 3, 4)
    assert torch.equal(gaussian_blur(maps, 0.0), maps)
    kernel = gaussian_kernel(1.0)  # radius int(4 * 1 + 0.5) = 4, weights exp(-x^2 / 2) normalised
    assert kernel.numel() == 9
    assert float(kernel[4]) == pytest.approx(1.0 / np.sum(np.exp(-0.5 * np.arange(-4, 5) ** 2)), rel=1e-12)
    # reflect (half-sample symmetric): d c b a | a b c d | d c b a
    assert symmetric_indices(4, 5).tolist() == [3, 3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0]
    delta = torch.zeros(1, 9, 9)
    delta[0, 4, 4] = 1.0
    blurred = gaussian_blur(delta, 1.0)[0]
    expected = np.outer(kernel.numpy(), kernel.numpy())
    np.testing.assert_allclose(blurred.numpy(), expected, rtol=1e-6, atol=1e-9)


def test_resize_map_keeps_orientation_and_is_bilinear() -> None:
    """A hot top-left corner stays top-left on a wide image; values are align_corners=False bilinear."""
    small = np.zeros((4, 4), dtype=np.float32)
    small[0, 0] = 1.0
    big = resize_map(small, (8, 16))
    assert big.shape == (8, 16)
    assert np.unravel_index(big.argmax(), big.shape) == (0, 0)
    # align_corners=False, scale 2 (rows) and 4 (cols): output (i, j) samples ((i + .5) / 2 - .5, (j + .5) / 4 - .5),
    # clamped at 0; weight of source (0, 0) = (1 - y)(1 - x) for y, x in [0, 1).
    rows = np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, None)
    cols = np.clip((np.arange(16) + 0.5) / 4 - 0.5, 0, None)
    expected = np.outer(np.clip(1 - rows, 0, None), np.clip(1 - cols, 0, None))
    np.testing.assert_allclose(big, expected, rtol=0, atol=1e-6)
    assert torch.equal(resize_map_tensor(torch.from_numpy(small), (4, 4)), torch.from_numpy(small))
