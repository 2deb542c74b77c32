"""Every registered method on odd inputs; known answers on a hand-built backbone; slow reference loops.

Three kinds of test:

1. Registry-parametrized (like timm's ``test_models``): every id in ``list_methods()`` is built on a
   tiny backbone and must give finite maps of each input's own size for odd sizes and PIL modes,
   the same numbers from two separately built detectors, and the same numbers in a batch as one by
   one. A newly registered method is tested without touching this file.
2. Known answers: a hand-built backbone whose tokens are controlled exactly (construction in
   :func:`known_answer_backbone`); each training-free method must put its map maximum on the
   anomalous patch and score that image above a normal one.
3. Slow independent references: WinCLIP's windows as a plain loop of standard open_clip forwards,
   and SDP's dual path as an explicit per-block, per-head loop with the reference's in-place
   aliasing and the (B, 1+N, 2, D) feature-surgery product tensor (methods.md §3.3-3.4).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_image, open_clip_forward, tiny_settings
from PIL import Image
from scipy.ndimage import gaussian_filter

from zsad_core import AnomalyResult, ImageError, create_detector, get_method, list_methods
from zsad_core.backbone import (
    BackboneSpec,
    ClipBackbone,
    clear_backbone_cache,
    create_backbone,
    resize_positional_embedding,
)
from zsad_core.methods.adaclip import LOGIT_SCALE as ADACLIP_LOGIT_SCALE
from zsad_core.methods.base import Detector
from zsad_core.methods.clipad import SDP, SDPConfig, feature_surgery, staged_dual_path
from zsad_core.methods.winclip import WinCLIP, WinCLIPConfig, harmonic_window_aggregation, window_indices
from zsad_core.prompts import clear_text_caches

METHOD_IDS = [info.id for info in list_methods()]
CATEGORY = "bottle"


# learned methods built without a checkpoint warn that their maps mean little; expected here
UNTRAINED_OK = pytest.mark.filterwarnings("ignore:.*no checkpoint loaded:UserWarning")

_DETECTORS: dict[str, Detector] = {}


def prepared_detector(method_id: str) -> Detector:
    if method_id not in _DETECTORS:
        _DETECTORS[method_id] = create_detector(method_id, **tiny_settings(method_id)).prepare(CATEGORY)
    return _DETECTORS[method_id]


def _sixteen_bit(height: int, width: int) -> Image.Image:
    rng = np.random.default_rng(height + width)
    return Image.fromarray((rng.random((height, width)) * 4000 + 500).astype(np.uint16))


# (mode, height, width): every PIL mode the brief names, paired with odd sizes down to a 2-pixel side
ODD_INPUTS = [
    ("RGB", 37, 53),
    ("L", 301, 199),
    ("LA", 2, 2),
    ("P", 2, 97),
    ("RGBA", 61, 3),
    ("I;16", 45, 29),
    ("CMYK", 17, 240),
    ("1", 33, 33),
]


def odd_images() -> list[Image.Image]:
    images = []
    for index, (mode, height, width) in enumerate(ODD_INPUTS):
        image = _sixteen_bit(height, width) if mode == "I;16" else make_image(height, width, seed=index, mode=mode)
        assert image.mode == mode
        images.append(image)
    return images


# ------------------------------------------------------------------------------ 1. every method
def test_registry_lists_the_training_free_methods() -> None:
    assert {"winclip", "sdp"} <= set(METHOD_IDS)
    assert len(METHOD_IDS) == len(set(METHOD_IDS))
    with pytest.raises(ValueError, match="unknown method"):
        get_method("no-such-method")


@pytest.mark.parametrize("method_id", METHOD_IDS)
@UNTRAINED_OK
def test_detect_gives_finite_maps_of_each_input_size(method_id: str) -> None:
    detector = prepared_detector(method_id)
    info = detector.info
    size = detector.config.image_size
    results = detector.detect(odd_images(), batch_size=3)
    assert isinstance(results, list) and len(results) == len(ODD_INPUTS)
    for result, (mode, height, width) in zip(results, ODD_INPUTS):
        assert isinstance(result, AnomalyResult)
        assert result.anomaly_map.shape == (height, width), mode
        assert result.anomaly_map.dtype == np.float32 and result.model_map.dtype == np.float32
        assert result.model_map.shape == (size, size)
        assert np.isfinite(result.anomaly_map).all() and np.isfinite(result.model_map).all(), mode
        assert np.isfinite(result.score), mode
        low, high = info.map_range
        assert low - 1e-6 <= result.model_map.min() and result.model_map.max() <= high + 1e-6
        assert info.score_range[0] - 1e-6 <= result.score <= info.score_range[1] + 1e-6
        assert result.method == method_id and result.category == CATEGORY
        assert set(result.timings) == {"preprocess", "model", "postprocess", "total"}
        assert all(np.isfinite(value) for value in result.extras.values())
    single = detector.detect(odd_images()[0])
    assert isinstance(single, AnomalyResult) and single.anomaly_map.shape == (37, 53)
    scores = detector.dataset_scores(results)
    assert scores.shape == (len(results),) and np.isfinite(scores).all()


@pytest.mark.parametrize("method_id", METHOD_IDS)
@UNTRAINED_OK
def test_two_separately_built_detectors_give_identical_results(method_id: str) -> None:
    images = [make_image(50, 70, seed=3), make_image(64, 64, seed=4)]
    outputs = []
    for _ in range(2):
        clear_backbone_cache()  # rebuild the weights from their seed ...
        clear_text_caches()  # ... and re-encode the prompts
        detector = create_detector(method_id, **tiny_settings(method_id)).prepare(CATEGORY)
        outputs.append(detector.detect(images))
    _DETECTORS.clear()
    for first, second in zip(*outputs):
        assert first.score == second.score
        np.testing.assert_array_equal(first.anomaly_map, second.anomaly_map)
        assert first.extras == second.extras


# Batched and one-by-one fp32 runs do the same maths in another order (GEMM blocking, reductions), so
# they agree only up to rounding. The tolerances below follow from a stated error model, not from a run:
#
# - COSINE_ERROR: every cosine between unit vectors a method computes (image or patch feature against a
#   text anchor) differs by at most 1e-6 between the two runs, i.e. ~8 ulp of fp32 at 1.0 (2**-23 =
#   1.19e-7). The tiny towers (2-3 blocks) show about 1 ulp: AdaCLIP's score 0.15922226 batched vs
#   0.15922403 alone is 1.8e-6 = 2 * 100 * p(1-p) * 0.66e-7 by the softmax rule below.
# - ARITHMETIC_ERROR: the fp32 arithmetic after the cosines (window harmonic sums, stage and layer sums,
#   resizing, smoothing) may be reordered too; another ~8 ulp relative to the largest magnitude involved.
#
# Propagation: a two-class probability p = sigmoid(s * (c_abnormal - c_normal)) with logit scale s moves
# by at most 2 * s * COSINE_ERROR * p(1-p) <= s * COSINE_ERROR / 2 (each cosine by COSINE_ERROR, the
# difference by twice that; the second-order term is at most s eps = 1e-4 of the first-order one). Bilinear
# resizing and Gaussian smoothing are convex combinations, so they never enlarge an error bound
# (the map resized to each input's own size is bilinear too, so it keeps the model map's bound).
COSINE_ERROR = 1e-6
ARITHMETIC_ERROR = 1e-6

# Factor on the cosines before each method's softmax. A newly registered method gets a KeyError from
# batch_tolerance until it states its scale here and its propagation rule in _TOLERANCE_RULES.
LOGIT_SCALES: dict[str, float] = {
    "winclip": 1.0 / WinCLIPConfig.temperature,  # softmax(cos / 0.07)
    "sdp": 100.0,  # p_cls = softmax(100 cos); the map is a feature-surgery sum, not scaled
    "sdp_plus": 100.0,  # p_cls as SDP; each stage head is softmax(100 q T)
    "adaclip": 100.0,  # LOGIT_SCALE for the score, global_score and the map's softmax
}


@dataclass(frozen=True)
class BatchTolerance:
    """Largest honest |batched - alone| difference of one result's score, maps (model and resized) and extras."""

    score: float
    map: float
    extras: dict[str, float]


def softmax_change(scale: float, probability: float) -> float:
    """Bound on the change of a two-class softmax probability when each cosine moves by COSINE_ERROR."""
    return 2.0 * scale * COSINE_ERROR * probability * (1.0 - probability)


def _arithmetic(result: AnomalyResult) -> float:
    # maps and scores live within a few units (SDP +-4, SDP+ up to 8): ~8 ulp of the largest one
    return ARITHMETIC_ERROR * max(1.0, float(np.abs(result.model_map).max()), abs(result.score))


def _winclip_tolerance(detector: Detector, scale: float, alone: AnomalyResult) -> BatchTolerance:
    # Map: each window score p moves by <= 2 s eps p(1-p). A harmonic mean H of such values moves by
    # sum_i H^2 / (n x_i^2) * 2 s eps x_i (1 - x_i) = 2 s eps H (1 - H) (as sum 1/x_i = n / H), the same
    # form, so the nested means (windows per patch, then scales and image) keep <= s eps / 2.
    arithmetic = _arithmetic(alone)
    return BatchTolerance(
        score=softmax_change(scale, alone.score) + arithmetic,
        map=scale * COSINE_ERROR / 2 + arithmetic,
        extras={},
    )


def _surgery_map_change(detector: Detector) -> float:
    # Per stage the abnormal channel of feature surgery is (w1 c1 - w0 c0) / 2 with w = 2 softmax(cls cosines)
    # (scale 1, w0 + w1 = 2, so |dw1| = |dw0| <= 2 * 1/4 * 2 eps = eps):
    # |w1 dc1 - w0 dc0| <= 2 eps and |dw1 (c1 + c0)| <= 2 eps, hence <= 2 eps per stage, summed over the stages.
    return 2.0 * COSINE_ERROR * len(detector.stage_ends)


def _sdp_tolerance(detector: Detector, scale: float, alone: AnomalyResult, map_change: float) -> BatchTolerance:
    # score = 0.5 p_cls + 0.5 sigmoid(p_max / m); p_max is a map maximum, which moves no more than the map
    arithmetic = _arithmetic(alone)
    p_cls = softmax_change(scale, alone.extras["p_cls"]) + arithmetic
    p_max = map_change + arithmetic
    m = detector.config.map_score_scale
    squashed = 1.0 / (1.0 + np.exp(-alone.extras["p_max"] / m))
    score = 0.5 * p_cls + 0.5 * squashed * (1.0 - squashed) / m * p_max + arithmetic
    return BatchTolerance(score=score, map=p_max, extras={"p_cls": p_cls, "p_max": p_max})


def _sdp_only_tolerance(detector: Detector, scale: float, alone: AnomalyResult) -> BatchTolerance:
    return _sdp_tolerance(detector, scale, alone, _surgery_map_change(detector))


def _sdp_plus_tolerance(detector: Detector, scale: float, alone: AnomalyResult) -> BatchTolerance:
    # SDP's map plus, per stage, softmax(upsampled scale * q T)[abnormal]: <= scale * eps / 2 each (4 stages:
    # 8e-6 + 2e-4; the per-stage probabilities are not in the result, so p(1-p) takes its maximum 1/4)
    heads = len(detector.stage_ends) * scale * COSINE_ERROR / 2
    return _sdp_tolerance(detector, scale, alone, _surgery_map_change(detector) + heads)


def _adaclip_tolerance(detector: Detector, scale: float, alone: AnomalyResult) -> BatchTolerance:
    # Map: softmax of the layer-averaged, upsampled 100x logits (averages are convex): <= scale * eps / 2.
    arithmetic = _arithmetic(alone)
    return BatchTolerance(
        score=softmax_change(scale, alone.score) + arithmetic,
        map=scale * COSINE_ERROR / 2 + arithmetic,
        extras={"global_score": softmax_change(scale, alone.extras["global_score"]) + arithmetic},
    )


_TOLERANCE_RULES: dict[str, Callable[[Detector, float, AnomalyResult], BatchTolerance]] = {
    "winclip": _winclip_tolerance,
    "sdp": _sdp_only_tolerance,
    "sdp_plus": _sdp_plus_tolerance,
    "adaclip": _adaclip_tolerance,
}


def batch_tolerance(detector: Detector, alone: AnomalyResult) -> BatchTolerance:
    """fp32 tolerance of batched against one-by-one results for ``detector``'s method (see the notes above).

    Raises:
        KeyError: a method without a stated logit scale and propagation rule.
    """
    method_id = detector.method_id
    if method_id not in LOGIT_SCALES or method_id not in _TOLERANCE_RULES:
        raise KeyError(f"{method_id!r}: state its logit scale in LOGIT_SCALES and its rule in _TOLERANCE_RULES")
    return _TOLERANCE_RULES[method_id](detector, LOGIT_SCALES[method_id], alone)


def test_logit_scales_are_the_methods() -> None:
    assert set(LOGIT_SCALES) == set(METHOD_IDS) == set(_TOLERANCE_RULES)
    assert LOGIT_SCALES["winclip"] == pytest.approx(1 / 0.07) and WinCLIPConfig.temperature == 0.07
    assert LOGIT_SCALES["adaclip"] == ADACLIP_LOGIT_SCALE == 100.0
    # worst cases (p = 1/2): WinCLIP's score 7.1e-6, AdaCLIP's map 5e-5; SDP's map 2 eps x 4 stages = 8e-6
    assert LOGIT_SCALES["winclip"] * COSINE_ERROR / 2 == pytest.approx(7.14e-6, rel=1e-3)
    with pytest.raises(KeyError, match="LOGIT_SCALES"):
        batch_tolerance(SimpleNamespace(method_id="not-registered"), prepared_detector("winclip").detect(make_image()))


@pytest.mark.parametrize("method_id", METHOD_IDS)
@UNTRAINED_OK
def test_batch_results_equal_one_by_one_results(method_id: str) -> None:
    detector = prepared_detector(method_id)
    images = [make_image(40 + 7 * index, 90 - 5 * index, seed=10 + index) for index in range(5)]
    batched = detector.detect(images, batch_size=5)
    alone = [detector.detect(image) for image in images]
    for together, single in zip(batched, alone):
        tolerance = batch_tolerance(detector, single)
        assert together.score == pytest.approx(single.score, rel=0, abs=tolerance.score)
        np.testing.assert_allclose(together.model_map, single.model_map, rtol=0, atol=tolerance.map)
        np.testing.assert_allclose(together.anomaly_map, single.anomaly_map, rtol=0, atol=tolerance.map)
        assert together.extras.keys() == single.extras.keys() == tolerance.extras.keys()
        for name in together.extras:
            assert together.extras[name] == pytest.approx(single.extras[name], rel=0, abs=tolerance.extras[name])
    assert not np.allclose(batched[0].model_map, batched[1].model_map)  # different images, different maps


@pytest.mark.parametrize("method_id", METHOD_IDS)
@UNTRAINED_OK
def test_detect_before_prepare_and_bad_images_are_clear_errors(method_id: str, tmp_path: Path) -> None:
    detector = create_detector(method_id, **tiny_settings(method_id))
    assert detector.category is None
    with pytest.raises(RuntimeError, match="prepare"):
        detector.detect(make_image(20, 20))
    broken = tmp_path / "upload.png"
    broken.write_bytes(b"junk")
    with pytest.raises(ImageError, match="upload.png"):  # names the failing source
        prepared_detector(method_id).detect([make_image(20, 20), broken])
    with pytest.raises(TypeError, match="valid settings"):
        create_detector(method_id, **tiny_settings(method_id), no_such_setting=1)


# ------------------------------------------------------------------------------- 2. known answers
KNOWN_SIZE, KNOWN_PATCH = 128, 16  # 8 x 8 patches


@dataclass
class KnownAnswerSetup:
    backbone: ClipBackbone
    anchors: torch.Tensor  # (D, 2): normal = direction a, abnormal = direction b


@pytest.fixture(scope="module")
def known_answer() -> KnownAnswerSetup:
    """A zsad-tiny copy with weights set by hand so that every token is known.

    Channels of the residual stream (C = 64, two heads of 32): ``a = e0 - e1`` is "normal",
    ``b = e2 - e3`` is "abnormal" (both have zero mean, so every LayerNorm with unit weight and
    zero bias only rescales them: LN(a) = 8 a/|a|; LN(0) = 0).

    - Patch embedding: ``conv1`` averages the red channel onto ``a`` and the green channel onto
      ``b``; positional and class embeddings are zero. A red patch is token ``a``, a green one ``b``,
      and the class token is 0.
    - Blocks 2..8: attention out-projection and MLP output zeroed, so they are the identity on the
      residual stream and their v-v outputs are 0 (SDP stages 2-4 contribute nothing to patches).
    - Block 1 (MLP output zero, out-projection identity, head 0 only; head 1 has v = 0):
      * v = LN(x) (identity value projection), so v of the class token is 0;
      * q = 12 u . LN(x) and k = -u . LN(x) on one channel, with ``u`` along ``a + b`` (each
        patch has u . LN(x) = 5.66): the class token's query is 0, so it attends uniformly and
        becomes the mean of the patch values (an image or window embedding proportional to
        ``n_a a + n_b b``); every patch's query scores other patches at -12 * 32 / sqrt(32) = -68
        and the class token at 0, so patches attend to the class token, whose value is 0: patch
        tokens leave block 1 unchanged.
      * the v-v attention ``softmax(v v^T / sqrt(32)) v`` gives each patch the mean of the patches
        of its own colour (logit 64 / sqrt(32) = 11.3 for equal, 0 for orthogonal colours): the SDP
        surgery token of a green patch is ``b``, of a red patch ``a``.
    - ``ln_post`` is plain LayerNorm and ``proj`` keeps the first 32 channels, so projected tokens
      are ``a`` or ``b`` in the joint space, and the anchors are those directions.

    So a green patch in a red image is the anomaly: WinCLIP's windows containing it score higher,
    SDP's surgery similarity is highest there, and each image embedding leans towards ``b``.
    """
    base = create_backbone("zsad-tiny")
    model = copy.deepcopy(base.model)  # never mutate the cached shared instance
    visual = model.visual
    width, embed_dim = visual.conv1.out_channels, visual.proj.shape[1]
    eye = torch.eye(width)
    normal_direction, abnormal_direction = eye[0] - eye[1], eye[2] - eye[3]
    with torch.no_grad():
        resize_positional_embedding(visual, KNOWN_SIZE)
        visual.positional_embedding.zero_()
        visual.class_embedding.zero_()
        visual.conv1.weight.zero_()
        visual.conv1.weight[:, 0] = normal_direction[:, None, None] / KNOWN_PATCH**2
        visual.conv1.weight[:, 1] = abnormal_direction[:, None, None] / KNOWN_PATCH**2
        for norm in (visual.ln_pre, visual.ln_post):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        visual.proj.zero_()
        visual.proj[:embed_dim] = torch.eye(embed_dim)
        for index, block in enumerate(visual.transformer.resblocks):
            block.ln_1.weight.fill_(1.0)
            block.ln_1.bias.zero_()
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.zero_()
            attention = block.attn
            attention.in_proj_weight.zero_()
            attention.in_proj_bias.zero_()
            attention.out_proj.weight.zero_()
            attention.out_proj.bias.zero_()
            if index == 0:
                head_width = width // attention.num_heads
                along = F.normalize(normal_direction + abnormal_direction, dim=0)
                attention.in_proj_weight[0] = 12.0 * along  # query, head 0, channel 0
                attention.in_proj_weight[width] = -along  # key, head 0, channel 0
                attention.in_proj_weight[2 * width : 2 * width + head_width] = eye[:head_width]  # value, head 0
                attention.out_proj.weight.copy_(eye)
    backbone = ClipBackbone(
        model, BackboneSpec("zsad-tiny (hand-set known-answer weights)", KNOWN_SIZE), base.tokenizer
    )
    anchors = torch.stack(
        [F.normalize(normal_direction[:embed_dim], dim=0), F.normalize(abnormal_direction[:embed_dim], dim=0)], dim=1
    )
    return KnownAnswerSetup(backbone, anchors)


def known_answer_pixels(anomalous_patch: tuple[int, int] | None) -> torch.Tensor:
    """(1, 3, S, S) red image, with one green patch at (row, column) of the patch grid."""
    pixels = torch.zeros(1, 3, KNOWN_SIZE, KNOWN_SIZE)
    pixels[:, 0] = 1.0
    if anomalous_patch is not None:
        rows, cols = (slice(k * KNOWN_PATCH, (k + 1) * KNOWN_PATCH) for k in anomalous_patch)
        pixels[:, 0, rows, cols] = 0.0
        pixels[:, 1, rows, cols] = 1.0
    return pixels


def test_known_answer_backbone_does_what_its_docstring_says(known_answer: KnownAnswerSetup) -> None:
    backbone = known_answer.backbone
    pixels = known_answer_pixels((2, 5))
    with torch.no_grad():
        tokens = backbone.embed_patches(pixels)
        _, layer_tokens = open_clip_forward(backbone, pixels, layers=(1, 8))
    grid = backbone.grid_size
    anomalous = 1 + 2 * grid + 5
    assert torch.allclose(tokens[0, anomalous, :4], torch.tensor([0.0, 0.0, 1.0, -1.0]))
    assert torch.allclose(tokens[0, 1, :4], torch.tensor([1.0, -1.0, 0.0, 0.0])) and tokens[0, 0].abs().max() == 0
    after = layer_tokens[8][0]
    torch.testing.assert_close(after[1:], backbone.visual.ln_pre(tokens)[0, 1:], atol=1e-5, rtol=0)  # patches unchanged
    cls = after[0, :4] / after[0, :4].abs().max()
    assert cls[0] > 0.9 and 0 < cls[2] < 0.1  # the class token is the mean: mostly a, a little b
    assert create_backbone("zsad-tiny").visual.class_embedding.abs().sum() > 0  # the shared model was not touched


def _known_answer_detector(method_id: str, backbone: ClipBackbone) -> Detector:
    cls = get_method(method_id)
    config = cls.config_class().replace(model=backbone.spec.model, image_size=KNOWN_SIZE)
    return cls(config, backbone)


@pytest.mark.parametrize("method_id", ["winclip", "sdp"])
def test_known_answer_map_maximum_on_the_anomaly(method_id: str, known_answer: KnownAnswerSetup) -> None:
    detector = _known_answer_detector(method_id, known_answer.backbone)
    anomalies = [(2, 5), (5, 2), (3, 3)]
    pixels = torch.cat([known_answer_pixels(None)] + [known_answer_pixels(patch) for patch in anomalies])
    with torch.no_grad():
        prediction = detector.predict(pixels, known_answer.anchors)
    assert prediction.maps.shape == (4, KNOWN_SIZE, KNOWN_SIZE)
    for anomaly_map, (row, col) in zip(prediction.maps[1:], anomalies):
        peak_row, peak_col = np.unravel_index(anomaly_map.argmax(), anomaly_map.shape)
        assert (peak_row // KNOWN_PATCH, peak_col // KNOWN_PATCH) == (row, col)
        inside = anomaly_map[row * KNOWN_PATCH : (row + 1) * KNOWN_PATCH, col * KNOWN_PATCH : (col + 1) * KNOWN_PATCH]
        assert inside.mean() > anomaly_map.mean()
    assert np.ptp(prediction.maps[0]) < 1e-6  # a uniform normal image gives a flat map
    assert prediction.maps[1].max() > prediction.maps[0].max()
    assert (prediction.scores[1:] > prediction.scores[0]).all()
    for name, values in prediction.extras.items():  # SDP: p_cls and p_max both rise too
        assert (values[1:] >= values[0]).all(), name


def test_known_answer_winclip_windows(known_answer: KnownAnswerSetup) -> None:
    detector = _known_answer_detector("winclip", known_answer.backbone)
    pixels = known_answer_pixels((2, 5))
    windows = window_indices(known_answer.backbone.grid_size, 2)
    with torch.no_grad():
        tokens = known_answer.backbone.embed_patches(pixels)
        scores = detector.model.class_scores(detector.model.window_embeddings(tokens, windows), known_answer.anchors)[0]
    holds_anomaly = (windows == 2 * 8 + 5).any(dim=1)
    assert holds_anomaly.sum() == 4
    assert scores[holds_anomaly].min() > scores[~holds_anomaly].max()  # windows holding the anomaly score higher


def test_known_answer_sdp_surgery_tokens(known_answer: KnownAnswerSetup) -> None:
    with torch.no_grad():
        paths = staged_dual_path(known_answer.backbone, known_answer_pixels((2, 5)), (2, 4, 6, 8))
    surgery = F.normalize(paths.surgery[0][0, 1:], dim=-1)  # stage 1, patches
    cosines = surgery @ known_answer.anchors
    anomalous = 2 * 8 + 5
    assert cosines[anomalous, 1] > 0.99 and cosines[anomalous, 0].abs() < 0.01  # green patch -> b
    others = torch.arange(64) != anomalous
    assert (cosines[others, 0] > 0.99).all()  # red patches -> a
    for later_stage in paths.surgery[1:]:  # identity blocks: no v-v output, no surgery patch tokens
        assert later_stage[0, 1:].abs().max() < 1e-6


# ----------------------------------------------------------------------------- 3. slow references
def _standard_visual_forward(backbone: ClipBackbone, sequence: torch.Tensor) -> torch.Tensor:
    """(B, L, C) tokens (with positional embedding) -> (B, D), open_clip's own modules in order."""
    visual = backbone.visual
    x = visual.transformer(visual.ln_pre(sequence))
    return visual.ln_post(x[:, 0]) @ visual.proj


def _two_class_abnormal(embedding: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    return (F.normalize(embedding, dim=-1) @ anchors / temperature).softmax(dim=-1)[..., 1]


def test_winclip_equals_a_plain_loop_over_windows() -> None:
    detector = create_detector("winclip", model="zsad-tiny", image_size=96).prepare(CATEGORY)
    backbone, anchors, config = detector.backbone, detector.text_features, detector.config
    grid, patch = backbone.grid_size, backbone.patch_size
    pixels = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    visual = backbone.visual
    with torch.no_grad():
        prediction = detector.predict(pixels, anchors)
        patches = F.conv2d(pixels, visual.conv1.weight, stride=patch).flatten(2).transpose(1, 2)  # (B, N, C)
        positions = visual.positional_embedding
        class_token = visual.class_embedding + positions[0]
        image_scores = _two_class_abnormal(visual(pixels), anchors, config.temperature)
        expected_maps = []
        for image in range(2):
            inverse_sum = 1.0 / image_scores[image].item()
            for k in config.scales:
                window_scores = {}
                for top in range(grid - k + 1):
                    for left in range(grid - k + 1):
                        members = [(top + r) * grid + (left + c) for r in range(k) for c in range(k)]
                        sequence = torch.cat(
                            [class_token[None], patches[image, members] + positions[[m + 1 for m in members]]]
                        )
                        embedding = _standard_visual_forward(backbone, sequence[None])[0]
                        window_scores[(top, left)] = _two_class_abnormal(embedding, anchors, config.temperature).item()
                scale_map = np.zeros((grid, grid))
                for row in range(grid):
                    for col in range(grid):
                        covering = [
                            score
                            for (top, left), score in window_scores.items()
                            if top <= row < top + k and left <= col < left + k
                        ]
                        scale_map[row, col] = len(covering) / sum(1.0 / s for s in covering)
                inverse_sum = inverse_sum + 1.0 / scale_map
            patch_map = (len(config.scales) + 1) / inverse_sum
            expected_maps.append(torch.from_numpy(patch_map).float())
        upsampled = F.interpolate(
            torch.stack(expected_maps)[:, None], size=(96, 96), mode="bilinear", align_corners=False
        )
    np.testing.assert_allclose(prediction.scores, image_scores.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(prediction.maps, upsampled[:, 0].numpy(), rtol=1e-4, atol=1e-6)
    assert np.ptp(prediction.maps) > 1e-3  # the comparison is not between two flat maps


def test_window_indices_and_harmonic_aggregation_small_cases() -> None:
    assert window_indices(3, 2).tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    assert window_indices(3, 3).tolist() == [list(range(9))]
    with pytest.raises(ValueError, match="does not fit"):
        window_indices(2, 3)
    scores = torch.tensor([[0.5, 0.25, 1.0, 0.2]])
    aggregated = harmonic_window_aggregation(scores, window_indices(3, 2), 9)
    assert aggregated[0, 0] == pytest.approx(0.5)  # one window
    assert aggregated[0, 1] == pytest.approx(2 / (2 + 4))  # windows 0 and 1
    assert aggregated[0, 4] == pytest.approx(4 / (2 + 4 + 1 + 5))  # all four


def _reference_dual_path(
    backbone: ClipBackbone, pixels: torch.Tensor, anchors: torch.Tensor, stage_length: int, aliasing: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """CLIP-AD's dual path written out: per-block, per-head v-v attention from the nn.MultiheadAttention
    weights, stage resets, the original path updated *in place* (so a stored stage-end tensor also gets
    the next block's attention residual, when ``aliasing``), and the (B, 1+N, 2, D) feature surgery.

    Returns per-stage similarities (B, 1+N, 2), per-stage normalised surgery features, and p_cls (B,).
    """
    visual = backbone.visual
    width = backbone.width
    x_original = visual.ln_pre(backbone.embed_patches(pixels))
    stored_original, stored_surgery = [], []
    surgery = None
    for index, block in enumerate(backbone.blocks):
        hidden = block.ln_1(x_original)
        attention = block.attn
        query_key = attention(hidden, hidden, hidden, need_weights=False)[0]  # batch_first
        values = hidden @ attention.in_proj_weight[2 * width :].T + attention.in_proj_bias[2 * width :]
        head_width = width // attention.num_heads
        heads = []
        for head in range(attention.num_heads):
            v = values[..., head * head_width : (head + 1) * head_width]
            weights = (v @ v.transpose(1, 2) * head_width**-0.5).softmax(dim=-1)
            heads.append(weights @ v)
        value_value = attention.out_proj(torch.cat(heads, dim=-1))
        x_original += query_key  # in place, as the reference
        x_original = x_original + block.mlp(block.ln_2(x_original))
        surgery = value_value if index % stage_length == 0 else surgery + value_value
        if (index + 1) % stage_length == 0:
            stored_original.append(x_original if aliasing else x_original.clone())
            stored_surgery.append(surgery.clone())
    similarities, features = [], []
    for surgery_tokens, original_tokens in zip(stored_surgery, stored_original):
        tokens = surgery_tokens.clone()
        tokens[:, 0] = original_tokens[:, 0]  # read after the whole forward, like the reference
        feature = F.normalize(visual.ln_post(tokens) @ visual.proj, dim=-1)  # (B, 1+N, D)
        text = anchors.T  # (2, D)
        class_weights = (feature[:, 0] @ anchors).softmax(dim=-1)  # (B, 2), no temperature
        class_weights = class_weights / class_weights.mean(dim=-1, keepdim=True)
        product = feature[:, :, None, :] * text[None, None] * class_weights[:, None, :, None]  # (B, 1+N, 2, D)
        product = product - product.mean(dim=2, keepdim=True)
        similarities.append(product.sum(dim=-1))
        features.append(feature)
    p_cls = (100.0 * features[-1][:, 0] @ anchors).softmax(dim=-1)[:, 1]
    return similarities, features, p_cls


@pytest.mark.parametrize("aliasing", [True, False])
def test_sdp_equals_an_explicit_reference_loop(aliasing: bool) -> None:
    backbone = create_backbone("zsad-tiny", image_size=96)
    grid = backbone.grid_size
    pixels = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(6))
    anchors = F.normalize(torch.randn(32, 2, generator=torch.Generator().manual_seed(7)), dim=0)
    detector = SDP(SDPConfig(model="zsad-tiny", image_size=96, reference_aliasing=aliasing), backbone)
    with torch.no_grad():
        expected_stages, expected_features, expected_p_cls = _reference_dual_path(
            backbone, pixels, anchors, stage_length=backbone.num_layers // 4, aliasing=aliasing
        )
        paths = staged_dual_path(backbone, pixels, detector.stage_ends, reference_aliasing=aliasing)
        stages = [feature_surgery(F.normalize(s, dim=-1), anchors) for s in paths.surgery]
        similarity, _ = detector.model.surgery_similarity(pixels, anchors)
        prediction = detector.predict(pixels, anchors)
        standard, _ = open_clip_forward(backbone, pixels)
    assert detector.stage_ends == (2, 4, 6, 8)
    for mine, theirs, features, expected_features_stage in zip(
        stages, expected_stages, paths.surgery, expected_features
    ):
        torch.testing.assert_close(F.normalize(features, dim=-1), expected_features_stage, rtol=0, atol=1e-5)
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(similarity, sum(expected_stages), rtol=0, atol=2e-5)
    # the original path's final class embedding is CLIP's image embedding
    torch.testing.assert_close(backbone.pool(paths.original[-1]), standard, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(paths.surgery[-1][:, 0], standard, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prediction.extras["p_cls"], expected_p_cls.numpy(), rtol=1e-4, atol=1e-6)
    patch_map = sum(expected_stages)[:, 1:, 1].reshape(2, 1, grid, grid)
    upsampled = F.interpolate(patch_map, size=(96, 96), mode="bilinear", align_corners=False)[:, 0].numpy()
    smoothed = np.stack([gaussian_filter(m, sigma=8.0, mode="reflect", truncate=4.0) for m in upsampled])
    np.testing.assert_allclose(prediction.maps, smoothed, rtol=0, atol=2e-5)
    np.testing.assert_allclose(prediction.extras["p_max"], smoothed.reshape(2, -1).max(1), rtol=0, atol=2e-5)
    assert np.ptp(smoothed) > 1e-3


def test_sdp_aliasing_only_moves_the_class_token_of_early_stages() -> None:
    backbone = create_backbone("zsad-tiny", image_size=96)
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        aliased = staged_dual_path(backbone, pixels, (2, 4, 6, 8), reference_aliasing=True)
        clean = staged_dual_path(backbone, pixels, (2, 4, 6, 8), reference_aliasing=False)
    for stage in range(3):
        torch.testing.assert_close(aliased.surgery[stage][:, 1:], clean.surgery[stage][:, 1:])
        assert not torch.allclose(aliased.surgery[stage][:, 0], clean.surgery[stage][:, 0])
    torch.testing.assert_close(aliased.surgery[3], clean.surgery[3])
    with pytest.raises(ValueError, match="do not fit"):
        staged_dual_path(backbone, pixels, (2, 4, 6, 9))


def test_winclip_defaults_are_the_papers() -> None:
    config = WinCLIPConfig()
    assert (config.model, config.image_size, config.scales, config.temperature, config.sigma) == (
        "ViT-B-16-plus-240:laion400m_e31",
        240,
        (2, 3),
        0.07,
        0.0,
    )
    sdp = SDPConfig()
    assert (sdp.image_size, sdp.sigma, sdp.rvs, sdp.rvs_eps, sdp.rvs_min_samples) == (240, 8.0, "dbscan", 0.5, 15)
    assert WinCLIP.info.training_free and SDP.info.training_free
