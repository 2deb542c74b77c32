"""Number-by-number agreement with the public reference implementations (anomalib WinCLIP, CLIP-AD SDP, SDP+).

The references were run outside this repository on the project's tiny random weights and seeded
random pixels; their outputs are in ``tests/fixtures/reference/*.npz`` and the recipe, arrays and
quirks are described in ``tests/fixtures/reference/README.md``. Each test rebuilds the same weights
and inputs, runs our ``predict`` (and the pieces it is made of), and compares. A test skips, saying
which file it waits for, while its fixture is not there. AdaCLIP's fixture is checked in
``tests/test_adaclip.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from zsad_core import create_detector
from zsad_core.backbone import ClipBackbone, create_backbone
from zsad_core.methods.clipad import SDP, SDPConfig, feature_surgery, representative_vector, staged_dual_path
from zsad_core.methods.winclip import WinCLIP, harmonic_window_aggregation, window_indices
from zsad_core.prompts import CLIPAD_PROMPTS, WINCLIP_PROMPTS

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference"
CLASS_NAME = "bottle"
MAP_TOLERANCE = 1e-4  # relative to the reference map's range

# anomalib 2.7.0 prompting.py: 21 templates, one duplicated, no "a cropped photo of a {}." (README §1)
ANOMALIB_TEMPLATES = (
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)


def load_fixture(name: str) -> dict[str, np.ndarray]:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(
            f"reference fixture {path} is not there yet (it is made outside the repository; see README.md there)"
        )
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def reference_pixels() -> torch.Tensor:
    """The README's inputs: already normalised, fed straight to the model."""
    return torch.randn(2, 3, 240, 240, generator=torch.Generator().manual_seed(1))


def load_pixel_fixture(name: str) -> dict[str, np.ndarray]:
    """A fixture made on :func:`reference_pixels`, checked against its stored checksum."""
    reference = load_fixture(name)
    pixels = reference_pixels()
    np.testing.assert_allclose(
        reference["pixels_checksum"], [pixels.sum().item(), pixels[0, 0, 0, 0].item()], rtol=1e-6
    )
    return reference


def reference_backbone() -> ClipBackbone:
    """zsad-tiny at 240 px, checked equal to the README's recipe (seed 0, open_clip.create_model)."""
    backbone = create_backbone("zsad-tiny", image_size=240)
    torch.manual_seed(0)
    recipe = open_clip.create_model("zsad-tiny").state_dict()
    ours = backbone.model.state_dict()
    assert recipe.keys() == ours.keys()
    assert all(torch.equal(recipe[key], ours[key]) for key in recipe)
    return backbone


def assert_map_close(actual: np.ndarray, expected: np.ndarray, tolerance: float = MAP_TOLERANCE) -> None:
    span = float(np.ptp(expected))
    assert span > 0, "reference map is flat: the comparison would prove nothing"
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance * span)


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


# ------------------------------------------------------------------------------------ WinCLIP
@pytest.fixture(scope="module")
def winclip_run() -> tuple[dict[str, np.ndarray], WinCLIP, dict[str, object]]:
    reference = load_fixture("winclip_anomalib.npz")
    reference_backbone()
    detector = create_detector("winclip", model="zsad-tiny", image_size=240, device="cpu", precision="fp32")
    detector.prepare(CLASS_NAME, templates=ANOMALIB_TEMPLATES)
    anchors = detector.text_features
    pixels = reference_pixels()
    with torch.no_grad():
        prediction = detector.predict(pixels, anchors)
        tokens = detector.backbone.embed_patches(pixels)
        windows = {k: window_indices(detector.backbone.grid_size, k) for k in (2, 3)}
        embeddings = {k: detector.model.window_embeddings(tokens, windows[k]) for k in (2, 3)}
        image_embeddings = detector.backbone.plain_pass(pixels).pooled
    ours = {
        "prediction": prediction,
        "anchors": anchors,
        "windows": windows,
        "window_embeddings": embeddings,
        "image_embeddings": image_embeddings,
    }
    return reference, detector, ours


def test_winclip_prompts_and_text_anchors(winclip_run) -> None:
    reference, detector, ours = winclip_run
    normal, abnormal = detector.prompts.sentences(CLASS_NAME)
    assert (len(normal), len(abnormal)) == (147, 84)
    assert normal[:3] == [
        "a cropped photo of the bottle.",
        "a close-up photo of a bottle.",
        "a close-up photo of the bottle.",
    ]
    assert detector.prompts.normal_states == WINCLIP_PROMPTS.normal_states
    assert detector.prompts.abnormal_states == WINCLIP_PROMPTS.abnormal_states
    expected = F.normalize(_t(reference["text_embeddings"]).T, dim=0)  # raw means; normalised on use
    torch.testing.assert_close(ours["anchors"], expected, rtol=0, atol=1e-5)


def test_winclip_windows_embeddings_and_scores(winclip_run) -> None:
    reference, detector, ours = winclip_run
    torch.testing.assert_close(ours["image_embeddings"], _t(reference["image_embeddings"]), rtol=0, atol=1e-5)
    assert float(reference["temperature"]) == pytest.approx(detector.config.temperature)
    for k in (2, 3):
        # anomalib's masks are F.unfold columns: (k*k, n_windows); ours are (n_windows, k*k)
        np.testing.assert_array_equal(ours["windows"][k].numpy().T, reference[f"masks_{k}"])
        torch.testing.assert_close(
            ours["window_embeddings"][k], _t(reference[f"window_embeddings_{k}"]), rtol=0, atol=1e-5
        )
        scores = detector.model.class_scores(_t(reference[f"window_embeddings_{k}"]), ours["anchors"])
        np.testing.assert_allclose(scores.numpy(), reference[f"window_scores_{k}"], rtol=1e-4, atol=1e-7)
        scale_map = harmonic_window_aggregation(_t(reference[f"window_scores_{k}"]), ours["windows"][k], 225)
        assert_map_close(scale_map.view(2, 15, 15).numpy(), reference[f"scale_map_{k}"])


def test_winclip_predict_equals_anomalib(winclip_run) -> None:
    reference, detector, ours = winclip_run
    prediction = ours["prediction"]
    np.testing.assert_allclose(prediction.scores, reference["image_scores"], rtol=1e-4, atol=1e-6)
    assert detector.config.sigma == 0  # anomalib does not smooth
    assert prediction.maps.shape == reference["anomaly_map"].shape
    assert_map_close(prediction.maps, reference["anomaly_map"])
    # the patch-level map behind it: upsampling ours must give back the reference's
    patch = F.interpolate(_t(reference["patch_map"])[:, None], size=(240, 240), mode="bilinear", align_corners=False)
    assert_map_close(prediction.maps, patch[:, 0].numpy())


# ---------------------------------------------------------------------------------------- SDP
@pytest.fixture(scope="module")
def sdp_reference() -> dict[str, np.ndarray]:
    return load_pixel_fixture("sdp_clipad.npz")


@pytest.fixture(scope="module")
def sdp_paths(sdp_reference):
    backbone = reference_backbone()
    assert backbone.default_layers() == tuple(sdp_reference["features_list"].tolist())
    with torch.no_grad():
        return {
            aliasing: staged_dual_path(backbone, reference_pixels(), backbone.default_layers(), aliasing)
            for aliasing in (True, False)
        }


def _sdp(rvs: str = "dbscan", **settings) -> SDP:
    return create_detector(
        "sdp", model="zsad-tiny", image_size=240, device="cpu", precision="fp32", rvs=rvs, **settings
    )


def test_sdp_prompts_sentence_embeddings_and_dbscan(sdp_reference) -> None:
    from sklearn.cluster import DBSCAN

    backbone = reference_backbone()
    normal, abnormal = CLIPAD_PROMPTS.sentences(CLASS_NAME)
    assert (len(normal), len(abnormal)) == (198, 220)
    for name, sentences in (("normal", normal), ("abnormal", abnormal)):
        embeddings = F.normalize(backbone.encode_text(sentences), dim=-1)
        torch.testing.assert_close(embeddings, _t(sdp_reference[f"sentence_embeddings_{name}"]), rtol=0, atol=1e-5)
        labels = DBSCAN(eps=0.5, min_samples=15).fit(embeddings.double().numpy()).labels_
        np.testing.assert_array_equal(labels, sdp_reference[f"dbscan_labels_{name}"])


def _representative_vectors(sdp_reference, rvs: str, round_fp16: bool) -> torch.Tensor:
    return torch.stack(
        [
            representative_vector(_t(sdp_reference[f"sentence_embeddings_{name}"]), method=rvs, round_fp16=round_fp16)
            for name in ("normal", "abnormal")
        ],
        dim=1,
    )


@pytest.mark.parametrize("rvs", ["dbscan", "mean", "kde", "mean_shift", "pca"])
def test_sdp_representative_vectors_fp32(sdp_reference, rvs: str) -> None:
    """``round_text_fp16=False``: the reference's fp32 run (``*_fp32``) is the one to match."""
    expected = _t(sdp_reference[f"text_features_{rvs}_fp32"])
    torch.testing.assert_close(_representative_vectors(sdp_reference, rvs, False), expected, rtol=0, atol=1e-5)
    if rvs in ("dbscan", "mean"):  # and through the detector's own prepare (text encoder + RVS + cache)
        prepared = _sdp(rvs, round_text_fp16=False).prepare(CLASS_NAME).text_features
        torch.testing.assert_close(prepared, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("rvs", ["dbscan", "kde", "mean_shift", "mean"])
def test_sdp_representative_vectors_rounded_as_the_reference(sdp_reference, rvs: str) -> None:
    """``round_text_fp16=True`` (the default) gives the reference's own fp16-rounded vectors bit for bit.

    Our fp32 vectors agree with the reference's to 1.4e-7, 0.004 fp16 ulp at most (measured), so no
    component lies near enough to a rounding boundary to round the other way; ``mean`` is never rounded.
    """
    rounded = _representative_vectors(sdp_reference, rvs, True)
    if rvs == "mean":
        torch.testing.assert_close(rounded, _representative_vectors(sdp_reference, rvs, False), rtol=0, atol=0)
        return
    np.testing.assert_array_equal(rounded.numpy(), sdp_reference[f"text_features_{rvs}"])
    assert not torch.equal(rounded, _representative_vectors(sdp_reference, rvs, False))
    assert 1e-5 < (rounded.norm(dim=0) - 1).abs().max() < 5e-4  # normalised in fp16: norms off 1 by fp16 rounding
    if rvs == "dbscan":  # through the detector's own prepare (text encoder + RVS + cache): the default rounds
        detector = _sdp(rvs)
        assert detector.config.round_text_fp16 and detector.text_reducer.endswith("-fp16")
        prepared = detector.prepare(CLASS_NAME).text_features
        torch.testing.assert_close(prepared, _t(sdp_reference["text_features_dbscan"]), rtol=0, atol=1e-5)
        # the setting is in the text feature cache key: the fp32 twin on the same backbone is not served these
        twin = _sdp(rvs, round_text_fp16=False)
        assert twin.backbone is detector.backbone
        torch.testing.assert_close(
            twin.prepare(CLASS_NAME).text_features,
            _t(sdp_reference["text_features_dbscan_fp32"]),
            rtol=0,
            atol=1e-5,
        )


def test_sdp_dual_path_features(sdp_reference, sdp_paths) -> None:
    aliased, clean = sdp_paths[True], sdp_paths[False]
    surgery = torch.stack([F.normalize(stage, dim=-1) for stage in aliased.surgery])  # (4, B, 1+N, D)
    torch.testing.assert_close(surgery, _t(sdp_reference["surgery_features"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        torch.stack([tokens[:, 0] for tokens in aliased.original]), _t(sdp_reference["ori_features"]), rtol=0, atol=1e-5
    )
    clean_cls = torch.stack([F.normalize(stage[:, 0], dim=-1) for stage in clean.surgery])
    torch.testing.assert_close(clean_cls, _t(sdp_reference["surgery_cls_noalias"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        torch.stack([tokens[:, 0] for tokens in clean.original]),
        _t(sdp_reference["ori_features_noalias"]),
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "variant", ["dbscan", "dbscan_fp32", "mean", "dbscan_noalias", "dbscan_fp32_noalias", "mean_noalias"]
)
def test_sdp_feature_surgery_and_patch_maps(sdp_reference, sdp_paths, variant: str) -> None:
    rvs = variant.removesuffix("_noalias")
    paths = sdp_paths[not variant.endswith("_noalias")]
    anchors = _t(sdp_reference[f"text_features_{rvs}"])  # the reference's own anchors (fp16-rounded where it rounded)
    stages = [feature_surgery(F.normalize(stage, dim=-1), anchors) for stage in paths.surgery]
    similarity = sum(stages)
    torch.testing.assert_close(torch.stack(stages), _t(sdp_reference[f"stage_similarity_{variant}"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(similarity, _t(sdp_reference[f"similarity_{variant}"]), rtol=0, atol=2e-5)
    assert_map_close(similarity[:, 1:, 1].reshape(2, 15, 15).numpy(), sdp_reference[f"patch_map_{variant}"])


@pytest.mark.parametrize("rvs", ["dbscan", "mean"])
def test_sdp_predict_equals_clipad(sdp_reference, rvs: str) -> None:
    pixels = reference_pixels()
    detector = _sdp(rvs)
    assert detector.config.sigma == 8 == int(sdp_reference["sigma"])
    anchors = _t(sdp_reference[f"text_features_{rvs}"])
    unsmoothed = SDP(SDPConfig(model="zsad-tiny", image_size=240, sigma=0.0), detector.backbone)
    with torch.no_grad():
        prediction = detector.predict(pixels, anchors)
        raw = unsmoothed.predict(pixels, anchors)
    assert_map_close(prediction.maps[:, ::4, ::4], sdp_reference[f"map_s8_{rvs}_sub4"])
    assert_map_close(raw.maps[:, ::4, ::4], sdp_reference[f"map_raw_{rvs}_sub4"])
    if rvs == "dbscan":
        assert_map_close(prediction.maps[0], sdp_reference["map_s8_dbscan_img0"])
    np.testing.assert_allclose(prediction.extras["p_cls"], sdp_reference[f"p_cls_{rvs}"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(prediction.extras["p_max"], sdp_reference[f"p_max_s8_{rvs}"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(raw.extras["p_max"], sdp_reference[f"p_max_raw_{rvs}"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["dbscan", "dbscan_noalias", "dbscan_fp32", "dbscan_fp32_noalias", "mean_noalias"])
def test_sdp_end_to_end_from_prompts(sdp_reference, variant: str) -> None:
    """prepare() + predict(), no reference numbers fed in: our RVS (fp16-rounded by default, fp32 with
    ``round_text_fp16=False``) against the reference's run of the same kind."""
    rvs = variant.split("_")[0]
    detector = _sdp(
        rvs, reference_aliasing=not variant.endswith("_noalias"), round_text_fp16="_fp32" not in variant
    ).prepare(CLASS_NAME)
    with torch.no_grad():
        prediction = detector.predict(reference_pixels(), detector.text_features)
    np.testing.assert_allclose(prediction.extras["p_cls"], sdp_reference[f"p_cls_{variant}"], rtol=1e-4, atol=1e-6)
    span = float(np.ptp(sdp_reference[f"patch_map_{variant}"]))
    np.testing.assert_allclose(
        prediction.extras["p_max"], sdp_reference[f"p_max_s8_{variant}"], rtol=0, atol=MAP_TOLERANCE * span
    )


# --------------------------------------------------------------------------------------- SDP+
# Fixture: CLIP-AD's test_ft.py run on the tiny weights with non-zero random linear layers
# (tests/fixtures/generators/make_clipad_references.py; README.md §4).
#
# Tolerance, fp32 arithmetic: our features agree with the reference's to ~1e-6 (the SDP checks above), so a
# cosine moves by <= ~1e-6, a logit (x100) by <= 1e-4 and a softmax probability (slope <= 1/4) by <= 2.5e-5
# per stage: <= 1e-4 over the four stages, on a map whose range is ~3.5. The SDP part adds <= 2e-5 (its own
# tolerance above). Smoothing is an average, so it cannot grow the bound.
SDP_PLUS_ATOL = 1e-4


@pytest.fixture(scope="module")
def sdp_plus_reference() -> dict[str, np.ndarray]:
    return load_pixel_fixture("sdp_plus_clipad.npz")


@pytest.fixture(scope="module")
def sdp_plus_checkpoint(sdp_plus_reference, tmp_path_factory) -> Path:
    """The fixture's linear layers in the authors' checkpoint layout (what their train.py saves)."""
    state = {key.split("/", 1)[1]: _t(value) for key, value in sdp_plus_reference.items() if key.startswith("linear/")}
    assert sorted(state) == sorted(f"fc.{s}.{kind}" for s in range(4) for kind in ("weight", "bias"))
    assert all(value.abs().min() > 0 for key, value in state.items() if key.endswith("weight"))
    path = tmp_path_factory.mktemp("sdp_plus") / "train_on_tiny.pth"
    torch.save({"linear_layers": state}, path)
    return path


def _sdp_plus(checkpoint: Path, sigma: float, rvs: str = "dbscan", **settings):
    reference_backbone()
    return create_detector(
        "sdp_plus",
        model="zsad-tiny",
        image_size=240,
        device="cpu",
        precision="fp32",
        rvs=rvs,
        sigma=sigma,
        checkpoint=str(checkpoint),
        **settings,
    )


@pytest.mark.parametrize(("variant", "sigma"), [("dbscan", 8), ("dbscan", 2), ("dbscan", 0), ("mean", 8), ("mean", 0)])
def test_sdp_plus_predict_equals_clipad_test_ft(sdp_plus_reference, sdp_plus_checkpoint, variant: str, sigma: int):
    """The head on the reference's own text vectors: linear layers, x100, normalisation, upsampling, smoothing."""
    tag = {8: "s8", 2: "s2", 0: "raw"}[sigma]
    detector = _sdp_plus(sdp_plus_checkpoint, sigma, variant)
    with torch.no_grad():
        prediction = detector.predict(reference_pixels(), _t(sdp_plus_reference[f"text_features_{variant}"]))
    expected = sdp_plus_reference[f"map_{tag}_{variant}_sub4"]
    assert np.ptp(expected) > 1.0  # the trained part is far from its all-zero constant (2 everywhere)
    np.testing.assert_allclose(prediction.maps[:, ::4, ::4], expected, rtol=0, atol=SDP_PLUS_ATOL)
    if variant == "dbscan" and sigma in (8, 0):
        np.testing.assert_allclose(prediction.maps[0], sdp_plus_reference[f"map_{tag}_dbscan_img0"], atol=SDP_PLUS_ATOL)
    np.testing.assert_allclose(
        prediction.extras["p_max"], sdp_plus_reference[f"p_max_{tag}_{variant}"], atol=SDP_PLUS_ATOL
    )
    np.testing.assert_allclose(prediction.extras["p_cls"], sdp_plus_reference[f"p_cls_{variant}"], rtol=1e-4, atol=1e-6)


def test_sdp_plus_head_recomputed_from_the_reference_projections(sdp_plus_reference, sdp_reference):
    """The head written out here from the reference's linear outputs, and alternatives the fixture must reject.

    ``M_ft`` = the SDP+ raw map minus the SDP raw map of the same weights, pixels and text vectors. Each
    plausible slip in the head (logit scale, align_corners, softmax before upsampling, no normalisation)
    must move it far beyond the tolerance, or these fixtures could not catch it.
    """
    projections = _t(sdp_plus_reference["linear_outputs_img0"])  # (4, N, D), image 0, before normalisation
    anchors = _t(sdp_plus_reference["text_features_dbscan"])
    reference_ft = sdp_plus_reference["map_raw_dbscan_sub4"][0] - sdp_reference["map_raw_dbscan_sub4"][0]

    def head(scale=100.0, align_corners=True, softmax_first=False, normalize=True) -> np.ndarray:
        features = F.normalize(projections, dim=-1) if normalize else projections
        logits = (scale * features @ anchors).transpose(1, 2).reshape(4, 2, 15, 15)
        if softmax_first:
            logits = logits.softmax(dim=1)
        upsampled = F.interpolate(logits, size=(240, 240), mode="bilinear", align_corners=align_corners)
        probs = upsampled if softmax_first else upsampled.softmax(dim=1)
        return probs[:, 1].sum(0).numpy()[::4, ::4]

    np.testing.assert_allclose(head(), reference_ft, rtol=0, atol=SDP_PLUS_ATOL)
    for slip in ({"scale": 1 / 0.07}, {"align_corners": False}, {"softmax_first": True}, {"normalize": False}):
        assert np.abs(head(**slip) - reference_ft).max() > 100 * SDP_PLUS_ATOL, slip


@pytest.mark.parametrize("fp16_text", [False, True])
def test_sdp_plus_end_to_end_from_prompts(sdp_plus_reference, sdp_plus_checkpoint, fp16_text: bool):
    """prepare() + predict(): our text vectors, against the reference with or without its fp16 rounding."""
    variant = "dbscan" if fp16_text else "dbscan_fp32"
    tolerance = SDP_PLUS_ATOL
    detector = _sdp_plus(sdp_plus_checkpoint, 8, round_text_fp16=fp16_text).prepare(CLASS_NAME)
    with torch.no_grad():
        prediction = detector.predict(reference_pixels(), detector.text_features)
    np.testing.assert_allclose(
        prediction.maps[:, ::4, ::4], sdp_plus_reference[f"map_s8_{variant}_sub4"], atol=tolerance
    )
    np.testing.assert_allclose(prediction.extras["p_max"], sdp_plus_reference[f"p_max_s8_{variant}"], atol=tolerance)
    np.testing.assert_allclose(prediction.extras["p_cls"], sdp_plus_reference[f"p_cls_{variant}"], atol=1e-5)
