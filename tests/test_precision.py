"""Half precision (fp16, bf16) against fp32 on the project's trained model, and the CUDA path.

Bounds (documented in the README): a precision with unit roundoff u (fp16 2^-11, bf16 2^-8) keeps
every map within 20 u of fp32, relative to the map's range over the images (about 20 roundings in
series on a token's path through zsad-toy's 6 blocks), image scores within 40 u (a softmax of
logits scaled by 100 halves nothing), and each map's correlation with fp32 above 1 - 20 u.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from zsad_core import create_detector

ASSETS = Path(__file__).resolve().parent.parent / "assets"
IMAGES = ["wood_crack.png", "pill_crack.png", "washer_missing_part.png"]
METHODS = ["winclip", "sdp", "sdp_plus", "adaclip"]
UNIT_ROUNDOFF = {"fp16": 2.0**-11, "bf16": 2.0**-8}


@pytest.fixture(scope="module")
def fp32_predictions() -> dict:
    out = {}
    for method in METHODS:
        detector = create_detector(method, model="zsad-toy", device="cpu", precision="fp32").prepare("wood")
        pixels, _ = detector.preprocess([ASSETS / name for name in IMAGES])
        out[method] = (pixels, detector.predict(pixels))
    return out


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_stays_within_its_bound(method: str, precision: str, fp32_predictions: dict) -> None:
    pixels, reference = fp32_predictions[method]
    detector = create_detector(method, model="zsad-toy", device="cpu", precision=precision).prepare("wood")
    assert detector.backbone.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    prediction = detector.predict(pixels)
    u = UNIT_ROUNDOFF[precision]
    span = float(np.ptp(reference.maps))
    assert span > 0.1  # trained model: maps with structure to compare
    assert np.abs(prediction.maps - reference.maps).max() <= 20 * u * span
    assert np.abs(prediction.scores - reference.scores).max() <= 40 * u
    for ours, theirs in zip(prediction.maps, reference.maps):
        assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] >= 1 - 20 * u


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_fp16_is_the_default_there_and_matches_cpu_fp32(method: str, fp32_predictions: dict) -> None:
    pixels, reference = fp32_predictions[method]
    detector = create_detector(method, model="zsad-toy", device="cuda").prepare("wood")
    assert detector.backbone.dtype == torch.float16
    prediction = detector.predict(pixels)
    u = UNIT_ROUNDOFF["fp16"]
    assert np.abs(prediction.maps - reference.maps).max() <= 20 * u * float(np.ptp(reference.maps))
    assert np.abs(prediction.scores - reference.scores).max() <= 40 * u
