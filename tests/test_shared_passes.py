"""Several methods on one backbone share their passes and still give what each gives alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image

from zsad_core import create_detector, detect_together
from zsad_core.methods.base import SharedPasses

# One resize policy for all four, so they see the same pixels (WinCLIP's default, anomalib's tensor
# path, differs from the others' PIL path: by default it shares no pass with them).
SETTINGS = {"model": "zsad-tiny", "image_size": 64, "device": "cpu", "precision": "fp32", "resize": "pil-bicubic"}
METHODS = ["winclip", "sdp", "sdp_plus", "adaclip"]


@pytest.fixture(scope="module")
def detectors() -> list:
    return [create_detector(method, **SETTINGS, **({"hsf_clusters": 4} if method == "adaclip" else {}))
            .prepare("bottle") for method in METHODS]  # fmt: skip


def test_together_equals_alone_and_runs_the_plain_pass_once(detectors: list, monkeypatch) -> None:
    images = [make_image(48, 80, seed=seed) for seed in range(3)]
    alone = {detector.method_id: detector.detect(images, batch_size=2) for detector in detectors}
    backbone = detectors[0].backbone
    assert all(detector.backbone is backbone for detector in detectors)
    calls = []
    original = backbone.plain_pass
    monkeypatch.setattr(backbone, "plain_pass", lambda pixels: calls.append(pixels.shape) or original(pixels))
    together = detect_together(detectors, images, batch_size=2)
    assert calls == [(2, 3, 64, 64), (1, 3, 64, 64)]  # one plain pass per batch for all four methods
    calls.clear()
    detectors[0].config = detectors[0].config.replace(resize="tensor-bicubic-unclamped")
    try:
        detect_together(detectors, images[:1])
    finally:
        detectors[0].config = detectors[0].config.replace(resize="pil-bicubic")
    assert calls == [(1, 3, 64, 64)] * 2  # WinCLIP's own pixels, and the batch the other three share
    for method, results in together.items():
        assert not isinstance(results, Exception), results
        for ours, theirs in zip(results, alone[method], strict=True):
            np.testing.assert_array_equal(ours.anomaly_map, theirs.anomaly_map)
            assert ours.score == theirs.score and ours.extras == theirs.extras
            assert set(ours.timings) == {"preprocess", "model", "postprocess", "total"}


def test_sdp_plus_reuses_sdps_dual_path(detectors: list) -> None:
    sdp, sdp_plus = detectors[1], detectors[2]
    pixels, _ = sdp.preprocess([make_image(seed=5)])
    passes = SharedPasses()
    with torch.no_grad():
        sdp.model(pixels, sdp.text_features, passes)
        sdp_plus.model(pixels, sdp_plus.text_features, passes)
    assert passes.computed == ["plain", f"dual path {sdp.stage_ends} aliasing=True"]
    # Another input is never served from the cache.
    other = pixels.clone()
    with torch.no_grad():
        sdp.model(other, sdp.text_features, passes)
    assert passes.computed.count("plain") == 2


def test_one_method_failing_does_not_stop_the_others(detectors: list, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(detectors[1].model, "forward", broken)
    outcome = detect_together(detectors, [make_image(seed=1)])
    assert isinstance(outcome["sdp"], RuntimeError)
    assert all(len(outcome[method]) == 1 for method in ("winclip", "sdp_plus", "adaclip"))


def test_the_plain_pass_runs_only_as_deep_as_asked_and_each_block_once(detectors: list, monkeypatch) -> None:
    sdp, winclip = detectors[1], detectors[0]
    backbone = sdp.backbone
    shallow = create_detector("sdp", **SETTINGS, layers=(1, 2)).prepare("bottle")
    pixels, _ = sdp.preprocess([make_image(seed=6)])
    ran = []
    original = backbone.mlp_residual  # the second half of every block run, in the plain pass and elsewhere
    monkeypatch.setattr(backbone, "mlp_residual", lambda block, x: ran.append(block) or original(block, x))
    passes = SharedPasses()
    with torch.no_grad():
        shallow.model(pixels, shallow.text_features, passes)
        assert len(ran) == 2  # SDP with stages ending at blocks 1 and 2 runs two blocks, not all of them
        winclip.model(pixels, winclip.text_features, passes)
    # WinCLIP adds the blocks the shallow pass had not run, then one pass per window scale
    assert len(ran) == backbone.num_layers * (1 + len(winclip.model.config.scales))
    assert ran[: backbone.num_layers] == list(backbone.blocks)  # the plain pass: every block once, in order


def test_sdps_reference_aliasing_reuses_the_attention_the_plain_pass_ran(detectors: list, monkeypatch) -> None:
    """The official aliasing reads stage ends after the next block's attention: kept while the block runs."""
    sdp = detectors[1]
    backbone = sdp.backbone
    pixels, _ = sdp.preprocess([make_image(seed=8)])
    calls = []
    original = backbone.attention
    monkeypatch.setattr(backbone, "attention", lambda block, hidden: calls.append(block) or original(block, hidden))
    with torch.no_grad():
        aliased = sdp.model(pixels, sdp.text_features)
    assert len(calls) == max(sdp.stage_ends)  # one attention per block run, none recomputed for the aliasing
    monkeypatch.undo()
    clean = create_detector("sdp", **SETTINGS, reference_aliasing=False).prepare("bottle")
    with torch.no_grad():
        assert not torch.equal(clean.model(pixels, clean.text_features).maps, aliased.maps)


def test_a_chunk_where_no_image_decodes_keeps_each_error_in_every_method(detectors: list) -> None:
    outcome = detect_together(detectors[:2], [b"not an image", make_image(seed=2), b""], 1, errors="collect")
    for results in outcome.values():
        assert [type(item).__name__ for item in results] == ["ImageError", "AnomalyResult", "ImageError"]
