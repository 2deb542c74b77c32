"""zsad_core.visualize: colours, overlays, colour scales, masks and panels (no model needed)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from zsad_core import get_method
from zsad_core.types import AnomalyResult
from zsad_core.visualize import (
    colorbar_strip,
    colorize,
    display_range,
    display_ranges,
    map_min_max,
    outline,
    overlay,
    panel,
    relative_threshold,
    save_png,
    threshold_mask,
    threshold_overlay,
    with_colorbar,
)


def make_result(method: str, anomaly_map: np.ndarray, score: float = 0.5) -> AnomalyResult:
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    return AnomalyResult(
        score=score, anomaly_map=anomaly_map, method=method, category="bottle", model_map=anomaly_map.copy()
    )


def ramp(height: int = 20, width: int = 30, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    return np.linspace(low, high, height * width, dtype=np.float32).reshape(height, width)


@pytest.mark.parametrize("cmap", ["jet", "viridis"])
def test_colorize_endpoints_are_the_first_and_last_colours(cmap: str) -> None:
    colormap = matplotlib.colormaps[cmap]
    first = np.array(colormap(0.0, bytes=True)[:3])
    last = np.array(colormap(1.0, bytes=True)[:3])
    values = np.array([[2.0, 3.0, 6.0, -10.0, 99.0]], dtype=np.float32)
    colours = colorize(values, vmin=2.0, vmax=6.0, cmap=cmap)
    assert colours.shape == (1, 5, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours[0, 0], first)  # vmin
    np.testing.assert_array_equal(colours[0, 2], last)  # vmax
    np.testing.assert_array_equal(colours[0, 3], first)  # below the scale: clipped
    np.testing.assert_array_equal(colours[0, 4], last)  # above the scale: clipped
    assert not np.array_equal(colours[0, 1], first) and not np.array_equal(colours[0, 1], last)


def test_colorize_flat_scale_and_non_finite_values() -> None:
    first = np.array(matplotlib.colormaps["jet"](0.0, bytes=True)[:3])
    flat = colorize(np.full((3, 4), 0.7, dtype=np.float32), 0.7, 0.7)
    assert (flat == first).all()
    odd = colorize(np.array([[np.nan, np.inf, -np.inf]], dtype=np.float32), 0.0, 1.0)
    np.testing.assert_array_equal(odd[0, 0], first)
    np.testing.assert_array_equal(odd[0, 2], first)
    np.testing.assert_array_equal(odd[0, 1], matplotlib.colormaps["jet"](1.0, bytes=True)[:3])


def test_colorize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="colour map"):
        colorize(ramp(), 0, 1, cmap="no-such-map")
    with pytest.raises(ValueError, match="2-D"):
        colorize(np.zeros((2, 3, 4)), 0, 1)


def test_overlay_keeps_the_image_size_and_blends() -> None:
    image = make_image(37, 53)
    anomaly_map = ramp(37, 53)
    blended = overlay(image, anomaly_map, 0.0, 1.0, alpha=0.5)
    assert blended.mode == "RGB" and blended.size == image.size
    np.testing.assert_array_equal(np.asarray(overlay(image, anomaly_map, 0.0, 1.0, alpha=0.0)), np.asarray(image))
    np.testing.assert_array_equal(
        np.asarray(overlay(image, anomaly_map, 0.0, 1.0, alpha=1.0)), colorize(anomaly_map, 0.0, 1.0)
    )
    expected = np.round(0.5 * np.asarray(image, dtype=np.float32) + 0.5 * colorize(anomaly_map, 0, 1)).astype(np.uint8)
    assert np.abs(np.asarray(blended).astype(int) - expected.astype(int)).max() <= 1


def test_overlay_resizes_other_maps_and_accepts_any_mode() -> None:
    grey = make_image(40, 60, mode="L")
    result = overlay(grey, ramp(10, 15), alpha=0.4)
    assert result.size == (60, 40) and result.mode == "RGB"
    with pytest.raises(ValueError, match="alpha"):
        overlay(grey, ramp(40, 60), alpha=1.5)


def test_overlay_default_scale_is_the_method_range_for_results_and_min_max_for_arrays() -> None:
    image = make_image(24, 32)
    values = ramp(24, 32, 0.4, 0.6)
    result = make_result("winclip", values)
    low, high = get_method("winclip").info.map_range
    np.testing.assert_array_equal(np.asarray(overlay(image, result)), np.asarray(overlay(image, values, low, high)))
    np.testing.assert_array_equal(np.asarray(overlay(image, values)), np.asarray(overlay(image, values, 0.4, 0.6)))


def test_colorbar_widens_the_image() -> None:
    image = make_image(64, 48)
    with_bar = with_colorbar(image, -1.0, 2.5)
    assert with_bar.height == 64 and with_bar.width > 48
    np.testing.assert_array_equal(np.asarray(with_bar)[:, :48], np.asarray(image))
    barred = overlay(image, ramp(64, 48), colorbar=True)  # default scale: the map's min and max, 0 and 1
    assert barred.size == with_colorbar(overlay(image, ramp(64, 48)), 0.0, 1.0).size


def test_display_range_modes() -> None:
    winclip_map = ramp(10, 10, 0.2, 0.7)
    sdp_map = ramp(10, 10, -1.5, 0.3)
    results = {"winclip": make_result("winclip", winclip_map), "sdp": make_result("sdp", sdp_map)}

    shared = display_range(results, "shared")
    assert len(set(shared.values())) == 1
    low, high = shared["winclip"]
    for anomaly_map in (winclip_map, sdp_map):
        assert low <= anomaly_map.min() and high >= anomaly_map.max()
    assert (low, high) == pytest.approx((-1.5, 0.7))

    absolute = display_range(results, "absolute")
    for method in results:
        assert absolute[method] == tuple(float(v) for v in get_method(method).info.map_range)

    per_image = display_range(results, "per_image")
    assert per_image["winclip"] == pytest.approx((0.2, 0.7)) and per_image["sdp"] == pytest.approx((-1.5, 0.3))

    arrays = {"mine": winclip_map}
    assert display_range(arrays, "absolute", map_ranges={"mine": (0, 2)}) == {"mine": (0.0, 2.0)}
    with pytest.raises(ValueError, match="unknown method"):
        display_range(arrays, "absolute")
    with pytest.raises(ValueError, match="colour-scale mode"):
        display_range(results, "loudest")  # type: ignore[arg-type]


def test_map_min_max_ignores_non_finite_values() -> None:
    values = np.array([[np.nan, 1.0], [3.0, np.inf]], dtype=np.float32)
    assert map_min_max(values) == (1.0, 3.0)
    assert map_min_max(np.full((2, 2), np.nan, dtype=np.float32)) == (0.0, 0.0)


def test_threshold_mask() -> None:
    values = np.array([[0.1, 0.5], [0.9, np.nan]], dtype=np.float32)
    mask = threshold_mask(values, 0.5)
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, [[False, True], [True, False]])
    np.testing.assert_array_equal(threshold_mask(make_result("sdp", values), 0.95), np.zeros((2, 2), bool))


@pytest.mark.parametrize("mode", ["absolute", "per_image", "shared"])
def test_panel_renders_a_grid(mode: str) -> None:
    image = make_image(48, 64)
    results = {
        "winclip": make_result("winclip", ramp(48, 64, 0.3, 0.8), score=0.71),
        "sdp": make_result("sdp", ramp(48, 64, -2.0, 1.0), score=0.12),
    }
    one = panel(image, {"winclip": results["winclip"]}, mode=mode)
    both = panel(image, results, mode=mode, title="shot.png - bottle")
    assert isinstance(both, Image.Image) and both.mode == "RGB"
    assert both.width > one.width
    assert np.asarray(both).std() > 0  # something was drawn
    with pytest.raises(ValueError, match="at least one"):
        panel(image, {})


def test_panel_wraps_into_rows() -> None:
    image = make_image(32, 32)
    results = {f"m{index}": make_result("winclip", ramp(32, 32), score=index / 10) for index in range(5)}
    grid = panel(image, results, columns=3, mode="shared")
    row = panel(image, dict(list(results.items())[:2]), columns=3, mode="shared")
    assert grid.height > row.height


def test_save_png_round_trip(tmp_path) -> None:
    image = overlay(make_image(20, 30), ramp(20, 30))
    path = save_png(tmp_path / "overlay.png", image)
    with Image.open(path) as reread:
        assert reread.format == "PNG"
        np.testing.assert_array_equal(np.asarray(reread.convert("RGB")), np.asarray(image))


# ------------------------------------------------------------------- scales over several images
def test_display_ranges_fit_each_method_over_all_images() -> None:
    images = [
        {"winclip": ramp(low=0.50, high=0.52), "sdp": ramp(low=-1e-4, high=2e-5)},
        {"winclip": ramp(low=0.51, high=0.54), "sdp": ramp(low=-3e-5, high=7e-5)},
        {"winclip": ramp(low=0.505, high=0.51)},  # a method may be missing on an image
    ]
    per_method = display_ranges(images, "per_method")
    assert per_method[0]["winclip"] == pytest.approx((0.50, 0.54)) and per_method[2]["winclip"] == per_method[0]["winclip"]
    assert per_method[1]["sdp"] == pytest.approx((-1e-4, 7e-5)) and "sdp" not in per_method[2]
    shared = display_ranges(images, "shared")
    assert all(r == pytest.approx((-1e-4, 0.54)) for ranges in shared for r in ranges.values())
    per_image = display_ranges(images, "per_image")
    assert per_image[1]["winclip"] == pytest.approx((0.51, 0.54))
    assert display_ranges(images[:1], "absolute")[0]["sdp"] == (-4.0, 4.0)
    assert display_range(images[0], "per_method") == display_range(images[0], "per_image")
    with pytest.raises(ValueError, match="colour-scale mode"):
        display_ranges(images, "loud")  # type: ignore[arg-type]


def test_relative_threshold_runs_from_vmin_to_vmax() -> None:
    assert relative_threshold(0.5, 0.54, 0.0) == 0.5
    assert relative_threshold(0.5, 0.54, 1.0) == pytest.approx(0.54)
    assert relative_threshold(-2.0, 6.0, 0.25) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        relative_threshold(0, 1, 1.5)


def test_outline_draws_the_inner_border_of_the_mask_only() -> None:
    mask = np.zeros((12, 16), dtype=bool)
    mask[3:8, 4:12] = True  # 5 x 8 rectangle
    drawn = np.asarray(outline(Image.new("RGB", (16, 12)), mask, colour=(255, 0, 0), width=1))
    red = (drawn == (255, 0, 0)).all(axis=-1)
    expected = mask.copy()
    expected[4:7, 5:11] = False  # the interior stays untouched: only the ring of 2 * (5 + 8) - 4 pixels
    np.testing.assert_array_equal(red, expected)
    assert red.sum() == 22
    thick = np.asarray(outline(Image.new("RGB", (16, 12)), mask, colour=(255, 0, 0), width=2))
    thick_red = (thick == (255, 0, 0)).all(axis=-1)
    assert (thick_red <= mask).all() and thick_red.sum() == 40 - 4  # two pixels deep: only the 1 x 4 core is left
    with pytest.raises(ValueError, match="does not fit"):
        outline(Image.new("RGB", (12, 16)), mask)


def test_threshold_overlay_outlines_the_pixels_above_the_relative_threshold() -> None:
    values = np.zeros((20, 30), dtype=np.float32)
    values[5:10, 10:20] = 0.8  # above 0.5 of the way from 0 to 1
    values[12:15, 2:6] = 0.4  # below
    image = Image.new("RGB", (30, 20), (0, 0, 0))
    plain = np.asarray(threshold_overlay(image, values, 0.0, 1.0, None))
    lined = np.asarray(threshold_overlay(image, values, 0.0, 1.0, 0.5, colour=(255, 255, 255)))
    changed = (plain != lined).any(axis=-1)
    assert changed[5:10, 10:20].any() and not changed[:5].any() and not changed[10:].any()
    np.testing.assert_array_equal(plain, np.asarray(overlay(image, values, 0.0, 1.0)))


def test_colorbar_strip_runs_from_low_on_the_left_to_high_on_the_right() -> None:
    strip = np.asarray(colorbar_strip(0.0, 1.0, "jet", label="relative"))
    row = strip[strip.shape[0] // 4]  # through the colour band
    coloured = np.where(np.ptp(row.astype(int), axis=-1) > 60)[0]  # jet is saturated, the frame grey
    left, right = row[coloured[0] + 2], row[coloured[-1] - 2]
    assert left[2] > 100 and left[0] < 60  # dark blue at vmin
    assert right[0] > 100 and right[2] < 60  # dark red at vmax
