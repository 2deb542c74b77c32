"""Numbers that matter, pinned through the public API: a change to any of them must fail here.

1. Between the user and the model: the normalisation constants and channel order that reach the
   model, the resize of the map back to the picture (orientation and interpolation, against an
   independent numpy computation), and the files ``python -m zsad_core detect`` writes (a map saved
   flipped or transposed, or an overlay painted in the wrong place, fails).
2. SDP's dataset-level score fusion on numbers worked out by hand.
3. Every setting of every method's config changes what it should, in the expected way; a new
   setting without an entry in :data:`SETTING_CHECKS` fails :func:`test_every_setting_has_a_check`.

The maps of (1) come from a stand-in ``predict`` that returns the model input's red channel, so
where the picture is bright, the map is hot: the orientation is then known without a trained model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from conftest import make_image, tiny_settings
from PIL import Image
from scipy.ndimage import gaussian_filter

from zsad_core import AnomalyResult, create_detector, get_method, list_methods
from zsad_core.cli import main
from zsad_core.methods.base import Detector, ModelOutput

METHOD_IDS = [info.id for info in list_methods()]
CATEGORY = "bottle"
UNTRAINED_OK = pytest.mark.filterwarnings("ignore:.*no checkpoint loaded:UserWarning")

# CLIP's (OpenAI) normalisation, methods.md §1.1; every backbone the project ships uses it.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# A non-square picture, dark, with one bright block in the top-left: H 48 x W 80.
HEIGHT, WIDTH = 48, 80
HOT_ROWS, HOT_COLS = slice(4, 16), slice(6, 26)


def hot_corner_picture() -> Image.Image:
    pixels = np.full((HEIGHT, WIDTH, 3), 30, dtype=np.uint8)
    pixels[HOT_ROWS, HOT_COLS] = (250, 240, 230)
    return Image.fromarray(pixels)


def tiny_detector(method_id: str, **settings) -> Detector:
    return create_detector(method_id, **tiny_settings(method_id, **settings))


def red_channel_stand_in(calls: list[torch.Tensor]) -> Callable[..., object]:
    """A stand-in for the model that records its input and returns the red channel as the map, score 0."""

    def forward(pixels: torch.Tensor, text: object, passes: object = None) -> object:
        calls.append(pixels.detach().clone())
        return ModelOutput(scores=torch.zeros(len(pixels)), maps=pixels[:, 0].detach().float())

    return forward


def install_stand_in(detector: Detector, calls: list[torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    """Put :func:`red_channel_stand_in` where ``detect`` calls the model (``detector.model``)."""
    monkeypatch.setattr(detector, "model", red_channel_stand_in(calls))


def bilinear_half_pixel(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Independent bilinear resize with half-pixel centres, edges clamped, no antialias (align_corners=False)."""

    def axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0)
        low = np.minimum(np.floor(source).astype(int), size_in - 1)
        return low, np.minimum(low + 1, size_in - 1), source - low

    rows_low, rows_high, row_weight = axis(image.shape[0], height)
    cols_low, cols_high, col_weight = axis(image.shape[1], width)
    rows = image[rows_low] * (1 - row_weight)[:, None] + image[rows_high] * row_weight[:, None]
    return rows[:, cols_low] * (1 - col_weight) + rows[:, cols_high] * col_weight


# ------------------------------------------------------------------------ 1. user <-> model values
@pytest.mark.parametrize("method_id", METHOD_IDS)
@UNTRAINED_OK
def test_the_model_receives_clip_normalised_rgb(method_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flat (200, 100, 50) picture reaches the model as (v / 255 - mean) / std per channel, in RGB order.

    Any resampling of a constant picture is constant (interpolation weights sum to 1; float32 rounding
    of that sum, ~4 ulp, times 1/std < 4, stays below 1e-5).
    """
    detector = tiny_detector(method_id).prepare(CATEGORY)
    assert detector.backbone.mean_std == (CLIP_MEAN, CLIP_STD)
    calls: list[torch.Tensor] = []
    install_stand_in(detector, calls, monkeypatch)
    detector.detect(Image.new("RGB", (WIDTH, HEIGHT), (200, 100, 50)))
    assert len(calls) == 1, "detect no longer calls the model where install_stand_in puts the stand-in"
    pixels = calls[0]
    size = detector.config.image_size
    assert pixels.shape == (1, 3, size, size) and pixels.dtype == torch.float32
    expected = [(value / 255 - mean) / std for value, mean, std in zip((200, 100, 50), CLIP_MEAN, CLIP_STD)]
    np.testing.assert_allclose(pixels[0].mean(dim=(1, 2)).numpy(), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(pixels[0].amax(dim=(1, 2)) - pixels[0].amin(dim=(1, 2)), 0, atol=1e-5)


@pytest.mark.parametrize("method_id", METHOD_IDS)
@UNTRAINED_OK
def test_map_comes_back_at_the_picture_size_in_its_orientation(method_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model map (S x S) comes back as H x W by bilinear resizing, the hot block where the picture is bright."""
    detector = tiny_detector(method_id).prepare(CATEGORY)
    calls: list[torch.Tensor] = []
    install_stand_in(detector, calls, monkeypatch)
    result = detector.detect(hot_corner_picture())
    assert len(calls) == 1
    size = detector.config.image_size
    assert result.model_map.shape == (size, size) and result.anomaly_map.shape == (HEIGHT, WIDTH)
    # the model input: the bright block scaled into the S x S square (rows x S/48, columns x S/80)
    model_hot = result.model_map > 0
    rows, cols = np.nonzero(model_hot)
    assert rows.min() >= 4 * size / HEIGHT - 2 and rows.max() <= 16 * size / HEIGHT + 1
    assert cols.min() >= 6 * size / WIDTH - 2 and cols.max() <= 26 * size / WIDTH + 1
    # back to the picture: bilinear, half-pixel centres, no antialias, exactly as computed independently
    np.testing.assert_allclose(
        result.anomaly_map, bilinear_half_pixel(result.model_map.astype(np.float64), HEIGHT, WIDTH), atol=1e-5
    )
    hot = np.zeros((HEIGHT, WIDTH), dtype=bool)
    hot[HOT_ROWS, HOT_COLS] = True
    assert result.anomaly_map[hot].mean() > 1.0 and result.anomaly_map[~hot].mean() < -1.0  # 1.86 and -1.35 flat
    peak = np.unravel_index(result.anomaly_map.argmax(), result.anomaly_map.shape)
    assert hot[peak]


@pytest.fixture
def stand_in_detectors(monkeypatch: pytest.MonkeyPatch) -> list[Detector]:
    """Every detector the CLI builds gets the red-channel stand-in ``predict``; returns them as they are built."""
    from zsad_core import registry

    built: list[Detector] = []
    create = registry.create_detector

    def create_with_stand_in(*args, **kwargs) -> Detector:
        detector = create(*args, **kwargs)
        install_stand_in(detector, [], monkeypatch)
        built.append(detector)
        return detector

    monkeypatch.setattr(registry, "create_detector", create_with_stand_in)
    return built


def test_cli_files_keep_the_maps_orientation_and_the_overlay_its_place(
    tmp_path: Path, stand_in_detectors: list[Detector], capsys: pytest.CaptureFixture[str]
) -> None:
    """``detect --out``: the .npy is the in-memory map (H x W, not flipped or transposed); the overlay is
    ``round(0.5 picture + 0.5 jet((map - min) / (max - min)))`` (``--scale per_image``), red where the block is."""
    picture_path = tmp_path / "hot.png"
    hot_corner_picture().save(picture_path)
    out = tmp_path / "out"
    argv = ["detect", str(picture_path), "--category", CATEGORY, "--methods", "winclip,sdp", "--model", "zsad-tiny"]
    status = main([*argv, "--device", "cpu", "--image-size", "64", "--scale", "per_image", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    payload = json.loads((out / "results.json").read_text())
    entry = payload["images"][0]
    assert Path(entry["path"]).resolve() == picture_path.resolve() and entry["status"] == "ok"
    picture = np.asarray(hot_corner_picture(), dtype=np.float64)
    hot = np.zeros((HEIGHT, WIDTH), dtype=bool)
    hot[HOT_ROWS, HOT_COLS] = True
    for detector in stand_in_detectors:
        summary = entry["results"][detector.method_id]
        assert summary["map"] == f"hot__{detector.method_id}.npy" and summary["map_shape"] == [HEIGHT, WIDTH]
        saved = np.load(out / summary["map"])
        in_memory = detector.detect(hot_corner_picture()).anomaly_map
        assert saved.dtype == np.float32 and saved.shape == (HEIGHT, WIDTH)
        np.testing.assert_array_equal(saved, in_memory)
        assert hot[np.unravel_index(saved.argmax(), saved.shape)]
        with Image.open(out / summary["overlay"]) as image:
            drawn = np.asarray(image.convert("RGB"), dtype=np.float64)
        scaled = (saved - saved.min()) / (saved.max() - saved.min())
        colours = matplotlib.colormaps["jet"](scaled, bytes=True)[..., :3].astype(np.float64)
        np.testing.assert_allclose(drawn, 0.5 * picture + 0.5 * colours, atol=1.0)  # rounding to uint8
        red_minus_blue = drawn[..., 0] - drawn[..., 2]
        assert red_minus_blue[hot].mean() > 50 and red_minus_blue[~hot].mean() < -30  # jet: dark red vs dark blue


def test_cli_npy_is_the_real_models_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With the tiny model itself (no stand-in): the saved map equals the in-memory one number for number."""
    picture_path = tmp_path / "wide.png"
    make_image(HEIGHT, WIDTH, seed=5).save(picture_path)
    out = tmp_path / "out"
    argv = ["detect", str(picture_path), "--category", CATEGORY, "--methods", "sdp", "--model", "zsad-tiny"]
    assert main([*argv, "--device", "cpu", "--out", str(out)]) == 0, capsys.readouterr().err
    saved = np.load(out / "wide__sdp.npy")
    result = create_detector("sdp", model="zsad-tiny", device="cpu").prepare(CATEGORY).detect(picture_path)
    assert saved.shape == (HEIGHT, WIDTH)
    assert not np.allclose(saved, saved[::-1]) and not np.allclose(saved, saved[:, ::-1])  # a flip would show
    np.testing.assert_array_equal(saved, result.anomaly_map)
    payload = json.loads((out / "results.json").read_text())
    assert payload["images"][0]["results"]["sdp"]["score"] == pytest.approx(result.score, rel=0, abs=0)


# --------------------------------------------------------------------- 2. SDP's dataset-level fusion
def _result(score: float, p_cls: float, p_max: float) -> AnomalyResult:
    flat = np.zeros((2, 2), dtype=np.float32)
    return AnomalyResult(
        score=score, anomaly_map=flat, method="sdp", category=CATEGORY, model_map=flat,
        extras={"p_cls": p_cls, "p_max": p_max},
    )  # fmt: skip


@pytest.mark.parametrize("method_id", ["sdp", "sdp_plus"])
@UNTRAINED_OK
def test_sdp_dataset_score_is_minmax_p_cls_plus_minmax_p_max(method_id: str) -> None:
    """score_i = (p_cls_i - min) / (max - min) + (p_max_i - min) / (max - min) over the category's test set.

    By hand (every number dyadic, so exact in binary): p_cls (0.25, 0.75, 0.375, 0.5) -> (0, 1, 0.25, 0.5);
    p_max (0.5, -0.5, 0, 0.25) -> (1, 0, 0.5, 0.75); sums (1, 1, 0.75, 1.25). The single-image scores
    (first field) play no part. A constant component contributes 0.
    """
    detector = tiny_detector(method_id)
    results = [
        _result(9.0, 0.25, 0.5),
        _result(-3.0, 0.75, -0.5),
        _result(0.0, 0.375, 0.0),
        _result(1.0, 0.5, 0.25),
    ]
    scores = detector.dataset_scores(results)
    np.testing.assert_array_equal(scores, [1.0, 1.0, 0.75, 1.25])
    constant_p_cls = [_result(0.0, 0.5, p_max) for p_max in (0.0, 1.0, 0.5)]
    np.testing.assert_array_equal(detector.dataset_scores(constant_p_cls), [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(tiny_detector("winclip").dataset_scores(results), [9.0, -3.0, 0.0, 1.0])


@pytest.mark.parametrize("method_id", ["sdp", "sdp_plus"])
@UNTRAINED_OK
def test_sdp_single_image_score_formula(method_id: str) -> None:
    """Without a test set: 0.5 p_cls + 0.5 sigmoid(p_max / map_score_scale), p_max the model map's maximum."""
    detector = tiny_detector(method_id).prepare(CATEGORY)
    for result in detector.detect([make_image(50, 70, seed=1), make_image(64, 64, seed=2)]):
        p_cls, p_max = result.extras["p_cls"], result.extras["p_max"]
        assert p_max == pytest.approx(float(result.model_map.max()), rel=0, abs=1e-7)
        expected = 0.5 * p_cls + 0.5 / (1.0 + np.exp(-p_max / detector.config.map_score_scale))
        assert result.score == pytest.approx(expected, rel=1e-6)  # evaluated in float32: a few ulp


# ------------------------------------------------------------------ 3. every setting does its job
def pictures() -> list[Image.Image]:
    return [make_image(40, 56, seed=1), make_image(64, 48, seed=2)]


def run(method_id: str, **settings) -> list[AnomalyResult]:
    """Results of a tiny detector with ``settings`` on :func:`pictures`."""
    return tiny_detector(method_id, **settings).prepare(CATEGORY).detect(pictures())


def model_maps(results: list[AnomalyResult]) -> np.ndarray:
    return np.stack([result.model_map for result in results])


def picture_maps(results: list[AnomalyResult]) -> list[np.ndarray]:
    return [result.anomaly_map for result in results]


def assert_maps_differ(first: list[AnomalyResult], second: list[AnomalyResult], by: float = 1e-4) -> None:
    gaps = [np.abs(a - b).max() for a, b in zip(picture_maps(first), picture_maps(second))]
    assert min(gaps) > by, f"the setting left the maps (nearly) unchanged: largest differences {gaps}"


def assert_same_maps(first: list[AnomalyResult], second: list[AnomalyResult], atol: float = 0.0) -> None:
    for a, b in zip(first, second):
        np.testing.assert_allclose(a.model_map, b.model_map, rtol=0, atol=atol)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=0, atol=atol)


def scores(results: list[AnomalyResult], name: str | None = None) -> np.ndarray:
    return np.array([result.score if name is None else result.extras[name] for result in results])


def sharpest_kink(anomaly_map: np.ndarray, border: int = 0) -> float:
    """Largest absolute second difference along either axis, ``border`` pixels left out on every side."""
    values = np.asarray(anomaly_map, dtype=np.float64)
    inner = slice(border, values.shape[0] - 2 - border), slice(border, values.shape[1] - 2 - border)
    rows = np.abs(np.diff(values, 2, axis=0))[:, 1:-1]
    cols = np.abs(np.diff(values, 2, axis=1))[1:-1, :]
    return float(max(rows[inner].max(), cols[inner].max()))


def config_field_names(method_id: str) -> set[str]:
    return {f.name for f in fields(get_method(method_id).config_class)}


def patch_size(method_id: str) -> int:
    return tiny_settings(method_id)["image_size"] // 4


# Settings every method has (MethodConfig), checked for each method.
def check_sigma(method_id: str) -> None:
    """The model map with sigma is scipy's gaussian_filter (reflect, truncate 4) of the unsmoothed one, and smoother.

    Tolerance: float32 rounding of the two separable passes and their sums, 32 ulp of the map's magnitude.
    Only SDP's and SDP+'s scores read the smoothed map (p_max); WinCLIP's and AdaCLIP's never do.
    """
    raw, smoothed = run(method_id, sigma=0.0), run(method_id, sigma=2.0)
    for flat, smooth in zip(raw, smoothed):
        expected = gaussian_filter(flat.model_map.astype(np.float64), 2.0, mode="reflect", truncate=4.0)
        tolerance = 32 * np.finfo(np.float32).eps * float(np.abs(flat.model_map).max())
        np.testing.assert_allclose(smooth.model_map, expected, rtol=0, atol=tolerance)
        # 8 px (truncate x sigma) from the border the smoothed second differences are a Gaussian average of the
        # unsmoothed ones, so no larger; strictly smaller, as a bilinear map's bends are isolated lines
        assert sharpest_kink(smooth.model_map, border=8) < sharpest_kink(flat.model_map)
    if method_id in ("sdp", "sdp_plus"):
        np.testing.assert_allclose(scores(smoothed, "p_max"), model_maps(smoothed).max(axis=(1, 2)), atol=1e-6)
        assert np.all(scores(smoothed, "p_max") != scores(raw, "p_max"))
    else:
        np.testing.assert_array_equal(scores(smoothed), scores(raw))


def check_batch_size(method_id: str) -> None:
    """Images per forward pass: the same numbers, within the fp32 batching tolerance of test_methods."""
    from test_methods import batch_tolerance

    detector = tiny_detector(method_id, batch_size=1).prepare(CATEGORY)
    images = pictures() + [make_image(33, 71, seed=3)]
    alone = detector.detect(images)
    together = tiny_detector(method_id, batch_size=3).prepare(CATEGORY).detect(images)
    for single, batched in zip(alone, together):
        tolerance = batch_tolerance(detector, single)
        assert batched.score == pytest.approx(single.score, rel=0, abs=tolerance.score)
        np.testing.assert_allclose(batched.model_map, single.model_map, rtol=0, atol=tolerance.map)


def check_quick_gelu(method_id: str) -> None:
    """QuickGELU (x sigmoid(1.702 x)) replaces GELU in both towers, which moves every map."""
    from open_clip.transformer import QuickGELU

    def uses_quick_gelu(detector: Detector) -> bool:
        return any(isinstance(module, QuickGELU) for module in detector.backbone.model.modules())

    assert uses_quick_gelu(tiny_detector(method_id, quick_gelu=True)) and not uses_quick_gelu(tiny_detector(method_id))
    assert_maps_differ(run(method_id), run(method_id, quick_gelu=True))


def check_image_size(method_id: str) -> None:
    """The model map is S x S; the returned map stays at the picture's size; the numbers change."""
    size = 6 * patch_size(method_id)
    larger = run(method_id, image_size=size)
    assert all(result.model_map.shape == (size, size) for result in larger)
    assert [m.shape for m in picture_maps(larger)] == [(40, 56), (64, 48)]
    assert_maps_differ(run(method_id), larger)


def check_model(method_id: str) -> None:
    """Another backbone is another network: other widths, other maps (compared at the picture size)."""
    tiny = tiny_detector(method_id)
    toy = tiny_detector(method_id, model="zsad-toy", image_size=64)
    assert toy.config.model == "zsad-toy" and toy.backbone.width != tiny.backbone.width
    assert_maps_differ(run(method_id), toy.prepare(CATEGORY).detect(pictures()))


# each method's reference resizes this way (issue 15): anomalib a float tensor without clamping, CLIP-AD and AdaCLIP PIL
REFERENCE_RESIZE = {
    "winclip": "tensor-bicubic-unclamped",
    "sdp": "pil-bicubic",
    "sdp_plus": "pil-bicubic",
    "adaclip": "pil-bicubic",
}


def check_resize(method_id: str) -> None:
    """The resize policy changes the model input as documented: Pillow's rounds to uint8 grey levels, the tensor
    one clamps to [0, 1], the unclamped one keeps bicubic overshoots; and so the maps. Defaults: the references'."""
    assert get_method(method_id).config_class().resize == REFERENCE_RESIZE[method_id]
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    inputs = {
        policy: tiny_detector(method_id, resize=policy).preprocess(pictures())[0] * std + mean  # back to [0, 1] units
        for policy in ("pil-bicubic", "tensor-bicubic", "tensor-bicubic-unclamped")
    }
    grey_levels = inputs["pil-bicubic"] * 255
    torch.testing.assert_close(grey_levels, grey_levels.round(), rtol=0, atol=1e-3)  # float32 round trip
    assert 0 <= inputs["tensor-bicubic"].min() and inputs["tensor-bicubic"].max() <= 1 + 1e-6
    unclamped = inputs["tensor-bicubic-unclamped"]
    assert unclamped.min() < -1e-3 or unclamped.max() > 1 + 1e-3  # random pixels make bicubic overshoot
    torch.testing.assert_close(inputs["tensor-bicubic"], unclamped.clamp(0, 1), rtol=0, atol=1e-6)
    assert (inputs["pil-bicubic"] - inputs["tensor-bicubic"]).abs().max() > 2 / 255
    assert_maps_differ(run(method_id, resize="pil-bicubic"), run(method_id, resize="tensor-bicubic-unclamped"), 1e-6)


COMMON_CHECKS: dict[str, Callable[[str], None]] = {
    "resize": check_resize,
    "sigma": check_sigma,
    "batch_size": check_batch_size,
    "quick_gelu": check_quick_gelu,
    "image_size": check_image_size,
    "model": check_model,
}


# WinCLIP
def check_winclip_scales(method_id: str) -> None:
    """A window as large as the grid is the full-image forward ([CLS] + every patch, own positions), so the
    map is the image score everywhere (harmonic mean of s and s). Other scales move the map, never the score.

    Tolerance: the same sequence in another batch, WinCLIP's batching bound (~8e-6, test_methods).
    """
    grid = 4  # tiny_settings: 4 x 4 patches
    for result in run(method_id, scales=(grid,)):
        np.testing.assert_allclose(result.model_map, result.score, rtol=0, atol=1e-5)
    both, small = run(method_id), run(method_id, scales=(2,))
    assert_maps_differ(both, small)
    np.testing.assert_array_equal(scores(both), scores(small))


def check_winclip_temperature(method_id: str) -> None:
    """p = sigmoid((c_abnormal - c_normal) / tau): tau * logit(p) is the same for every tau; a colder tau is sharper.

    Tolerance: each cosine within 1e-6 (fp32), so the difference within 2e-6, plus float32 rounding of p.
    """
    base, cold = run(method_id), run(method_id, temperature=0.01)

    def cosine_gap(results: list[AnomalyResult], tau: float) -> np.ndarray:
        p = scores(results)
        return tau * np.log(p / (1.0 - p))

    np.testing.assert_allclose(cosine_gap(cold, 0.01), cosine_gap(base, 0.07), rtol=0, atol=3e-6)
    assert np.all(np.abs(scores(cold) - 0.5) > np.abs(scores(base) - 0.5))
    assert_maps_differ(base, cold)


def check_winclip_window_batch(method_id: str) -> None:
    """Window sequences per forward chunk: memory only; WinCLIP's batching bound (~8e-6, test_methods)."""
    chunked, whole = run(method_id, window_batch=7), run(method_id)
    assert_same_maps(chunked, whole, atol=1e-5)
    np.testing.assert_array_equal(scores(chunked), scores(whole))


# SDP and SDP+
def check_sdp_layers(method_id: str) -> None:
    """Other stage ends, other surgery stages (map), but the same last block: p_cls (its class token) stays."""
    default, two_stages = run(method_id), run(method_id, layers=(4, 8))
    assert_maps_differ(default, two_stages)
    np.testing.assert_allclose(scores(two_stages, "p_cls"), scores(default, "p_cls"), rtol=0, atol=1e-7)


def check_sdp_rvs(method_id: str) -> None:
    """The text reduction moves the anchors, so both the map and p_cls."""
    dbscan, mean = run(method_id), run(method_id, rvs="mean")
    assert_maps_differ(dbscan, mean, by=1e-6)
    assert np.all(scores(dbscan, "p_cls") != scores(mean, "p_cls"))


def _assert_like_the_plain_mean(method_id: str, **dbscan_settings) -> None:
    # anchors equal to the fp32 mean's within float64-vs-float32 rounding (~1e-7); x100 in p_cls
    exact = {"round_text_fp16": False} if "round_text_fp16" in config_field_names(method_id) else {}  # mean is never
    like_mean, mean = run(method_id, **dbscan_settings, **exact), run(method_id, rvs="mean")  # rounded to fp16
    assert_same_maps(like_mean, mean, atol=1e-5)
    np.testing.assert_allclose(scores(like_mean, "p_cls"), scores(mean, "p_cls"), rtol=0, atol=1e-5)
    assert_maps_differ(run(method_id), mean, by=1e-6)  # the default DBSCAN does drop sentences here


def check_sdp_rvs_eps(method_id: str) -> None:
    """eps larger than any distance of unit vectors (2) puts every sentence in one cluster: the plain mean."""
    _assert_like_the_plain_mean(method_id, rvs_eps=10.0)


def check_sdp_rvs_min_samples(method_id: str) -> None:
    """More samples than sentences (198/220): all noise, and RVS falls back to the plain mean (documented)."""
    _assert_like_the_plain_mean(method_id, rvs_min_samples=1000)


def check_sdp_reference_aliasing(method_id: str) -> None:
    """The in-place aliasing shifts the early stages' class token (map) but not the last one (p_cls)."""
    aliased, clean = run(method_id), run(method_id, reference_aliasing=False)
    assert_maps_differ(aliased, clean, by=1e-6)
    np.testing.assert_array_equal(scores(aliased, "p_cls"), scores(clean, "p_cls"))


def check_sdp_map_score_scale(method_id: str) -> None:
    """Only the single-image score's sigmoid: same maps and extras, score = 0.5 p_cls + 0.5 sigmoid(p_max / m)."""
    default, scaled = run(method_id), run(method_id, map_score_scale=0.5)
    assert_same_maps(default, scaled)
    for name in ("p_cls", "p_max"):
        np.testing.assert_array_equal(scores(default, name), scores(scaled, name))
    expected = 0.5 * scores(scaled, "p_cls") + 0.5 / (1.0 + np.exp(-scores(scaled, "p_max") / 0.5))
    np.testing.assert_allclose(scores(scaled), expected, rtol=1e-6)  # evaluated in float32: a few ulp
    assert np.all(scores(default) != scores(scaled))


def check_sdp_round_text_fp16(method_id: str) -> None:
    """The reference's fp16 text vectors: a small move of map and p_cls (bound in test_reference_agreement)."""
    rounded, exact = run(method_id, round_text_fp16=True), run(method_id, round_text_fp16=False)
    assert_maps_differ(rounded, exact, by=0.0)
    assert_same_maps(rounded, exact, atol=0.16)


def check_sdp_plus_checkpoint(method_id: str, tmp_path: Path) -> None:
    """The checkpoint replaces the seeded layers: all-zero layers give SDP's map + 4 x 0.5 (softmax of equal logits)."""
    zeros = {name: torch.zeros_like(value) for name, value in tiny_detector(method_id).learned.state_dict().items()}
    torch.save({"linear_layers": zeros}, tmp_path / "zeros.pth")
    zeroed = run(method_id, sigma=0.0, checkpoint=str(tmp_path / "zeros.pth"))
    sdp = run("sdp", sigma=0.0)
    np.testing.assert_allclose(model_maps(zeroed), model_maps(sdp) + 2.0, rtol=0, atol=1e-6)
    assert_maps_differ(zeroed, run(method_id, sigma=0.0))


# AdaCLIP (K = 4 clusters for the HSF checks: the tiny grid has 16 patches)
def check_adaclip_layers(method_id: str) -> None:
    assert_maps_differ(run(method_id), run(method_id, layers=(4, 8)))


def check_adaclip_prompt_length(method_id: str) -> None:
    assert_maps_differ(run(method_id), run(method_id, prompt_length=2))


def check_adaclip_prompt_depth(method_id: str) -> None:
    """Depth 0 is no prompting at all: the same numbers as no prompted branch; depth 2 differs from 4."""
    assert_same_maps(run(method_id, prompt_depth=0), run(method_id, branches=""), atol=1e-6)
    assert_maps_differ(run(method_id), run(method_id, prompt_depth=2))


def check_adaclip_prompt_type(method_id: str) -> None:
    hybrid = run(method_id)
    assert_maps_differ(hybrid, run(method_id, prompt_type="S"))
    assert_maps_differ(hybrid, run(method_id, prompt_type="D"))


def check_adaclip_branches(method_id: str) -> None:
    both = run(method_id)
    assert_maps_differ(both, run(method_id, branches="V"))
    assert_maps_differ(both, run(method_id, branches="L"))


def check_adaclip_use_hsf(method_id: str) -> None:
    """Without HSF the image score is the projected global embedding's (``global_score``); the map is unchanged."""
    with_hsf, without = run(method_id, hsf_clusters=4), run(method_id, use_hsf=False)
    np.testing.assert_array_equal(scores(without), scores(without, "global_score"))
    assert np.all(scores(with_hsf) != scores(with_hsf, "global_score"))
    assert_same_maps(with_hsf, without)


def _assert_hsf_only_moves_the_score(first: list[AnomalyResult], second: list[AnomalyResult]) -> None:
    assert_same_maps(first, second)
    np.testing.assert_array_equal(scores(first, "global_score"), scores(second, "global_score"))
    assert np.any(scores(first) != scores(second))


def check_adaclip_hsf_clusters(method_id: str) -> None:
    _assert_hsf_only_moves_the_score(run(method_id, hsf_clusters=4), run(method_id, hsf_clusters=2))


def check_adaclip_hsf_topk_factor(method_id: str) -> None:
    """factor 1 clusters the 4 most anomalous patches, factor 4 all 16."""
    _assert_hsf_only_moves_the_score(run(method_id, hsf_clusters=4, hsf_topk_factor=1), run(method_id, hsf_clusters=4))


def check_adaclip_hsf_alpha(method_id: str) -> None:
    """alpha 0 keeps only the global embedding: the score is ``global_score`` (within a renormalisation, 1e-6)."""
    only_global = run(method_id, hsf_clusters=4, hsf_alpha=0.0)
    np.testing.assert_allclose(scores(only_global), scores(only_global, "global_score"), rtol=0, atol=1e-6)
    _assert_hsf_only_moves_the_score(run(method_id, hsf_clusters=4), run(method_id, hsf_clusters=4, hsf_alpha=1.0))


def check_adaclip_hsf_seed(method_id: str) -> None:
    """KMeans' seed: a fixed one repeats the score exactly; it never touches the map."""
    first, again = run(method_id, hsf_clusters=4, hsf_seed=3), run(method_id, hsf_clusters=4, hsf_seed=3)
    np.testing.assert_array_equal(scores(first), scores(again))
    assert_same_maps(first, run(method_id, hsf_clusters=4, hsf_seed=4))


def check_adaclip_hsf_kmeans(method_id: str) -> None:
    """The k-means backend (scikit-learn's, or the exportable torch one): other clusters, the same maps."""
    _assert_hsf_only_moves_the_score(run(method_id, hsf_clusters=4), run(method_id, hsf_clusters=4, hsf_kmeans="torch"))


def check_adaclip_seed(method_id: str) -> None:
    """The untrained parts' initialisation: another seed, other prompts and projections, other maps."""
    assert_maps_differ(run(method_id), run(method_id, seed=5))


def check_adaclip_round_prompts_fp16(method_id: str) -> None:
    """Rounding the inserted prompts to fp16 (the authors' code) moves the maps a little (fixture: ~1.7e-4)."""
    rounded, exact = run(method_id, round_prompts_fp16=True), run(method_id)
    assert_maps_differ(rounded, exact, by=0.0)
    assert_same_maps(rounded, exact, atol=1e-2)


def check_learnable_checkpoint(method_id: str, tmp_path: Path) -> None:
    """A checkpoint's parameters replace the seeded ones: a seed-5 detector's file reproduces its maps exactly."""
    source = tiny_detector(method_id, seed=5)
    source.save_checkpoint(tmp_path / "seed5.safetensors")
    loaded = run(method_id, checkpoint=str(tmp_path / "seed5.safetensors"))
    assert_same_maps(loaded, source.prepare(CATEGORY).detect(pictures()))
    assert_maps_differ(loaded, run(method_id))


SETTING_CHECKS: dict[tuple[str, str], Callable[..., None]] = {
    ("winclip", "scales"): check_winclip_scales,
    ("winclip", "temperature"): check_winclip_temperature,
    ("winclip", "window_batch"): check_winclip_window_batch,
    **{
        (method_id, name): check
        for method_id in ("sdp", "sdp_plus")
        for name, check in {
            "layers": check_sdp_layers,
            "rvs": check_sdp_rvs,
            "rvs_eps": check_sdp_rvs_eps,
            "rvs_min_samples": check_sdp_rvs_min_samples,
            "reference_aliasing": check_sdp_reference_aliasing,
            "map_score_scale": check_sdp_map_score_scale,
            "round_text_fp16": check_sdp_round_text_fp16,
        }.items()
    },
    ("sdp_plus", "checkpoint"): check_sdp_plus_checkpoint,
    ("adaclip", "layers"): check_adaclip_layers,
    ("adaclip", "prompt_length"): check_adaclip_prompt_length,
    ("adaclip", "prompt_depth"): check_adaclip_prompt_depth,
    ("adaclip", "prompt_type"): check_adaclip_prompt_type,
    ("adaclip", "branches"): check_adaclip_branches,
    ("adaclip", "use_hsf"): check_adaclip_use_hsf,
    ("adaclip", "hsf_clusters"): check_adaclip_hsf_clusters,
    ("adaclip", "hsf_topk_factor"): check_adaclip_hsf_topk_factor,
    ("adaclip", "hsf_alpha"): check_adaclip_hsf_alpha,
    ("adaclip", "hsf_seed"): check_adaclip_hsf_seed,
    ("adaclip", "hsf_kmeans"): check_adaclip_hsf_kmeans,
    ("adaclip", "seed"): check_adaclip_seed,
    ("adaclip", "round_prompts_fp16"): check_adaclip_round_prompts_fp16,
    ("adaclip", "checkpoint"): check_learnable_checkpoint,
}


def settings_of_every_method() -> list[tuple[str, str]]:
    return [(method_id, name) for method_id in METHOD_IDS for name in sorted(config_field_names(method_id))]


def test_every_setting_has_a_check() -> None:
    missing = [
        f"{method_id}.{name}"
        for method_id, name in settings_of_every_method()
        if name not in COMMON_CHECKS and (method_id, name) not in SETTING_CHECKS
    ]
    assert not missing, (
        f"settings without a check of what they change: {missing}; add one to SETTING_CHECKS in {Path(__file__).name}"
    )

    def known(method_id: str, name: str) -> bool:
        return name in config_field_names(method_id)

    stale = [key for key in SETTING_CHECKS if not known(*key)]
    stale += [name for name in COMMON_CHECKS if not all(known(method_id, name) for method_id in METHOD_IDS)]
    assert not stale, f"checks for settings that no longer exist: {stale}"


@pytest.mark.parametrize(("method_id", "name"), settings_of_every_method(), ids=lambda value: str(value))
@UNTRAINED_OK
def test_setting_changes_what_it_should(method_id: str, name: str, tmp_path: Path) -> None:
    check = COMMON_CHECKS.get(name) or SETTING_CHECKS.get((method_id, name))
    if check is None:
        pytest.fail(f"{method_id}.{name} has no check (see test_every_setting_has_a_check)")
    if "tmp_path" in check.__code__.co_varnames[: check.__code__.co_argcount]:
        check(method_id, tmp_path)
    else:
        check(method_id)
