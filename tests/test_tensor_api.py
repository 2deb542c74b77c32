"""The public tensor API: preprocess, predict on a normalised batch, read and supply text features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image, tiny_settings

from zsad_core import create_detector
from zsad_core.methods.base import AnomalyModel, ModelOutput


@pytest.mark.parametrize("method", ["winclip", "sdp", "sdp_plus", "adaclip"])
def test_predict_on_own_batch_equals_detect_and_text_features_round_trip(method: str) -> None:
    settings = tiny_settings(method)
    detector = create_detector(method, **settings).prepare("screw")
    image = make_image(64, 96, seed=4)
    result = detector.detect(image)
    pixels, sizes = detector.preprocess([image])
    assert sizes == [(64, 96)] and pixels.shape == (1, 3, settings["image_size"], settings["image_size"])
    prediction = detector.predict(pixels)
    np.testing.assert_array_equal(prediction.maps[0], result.model_map)
    assert float(prediction.scores[0]) == result.score

    # The torch model alone: tensors on the device, nothing on the host.
    assert isinstance(detector.model, AnomalyModel)
    with torch.no_grad():
        output = detector.model(pixels, detector.text_features)
    assert isinstance(output, ModelOutput) and isinstance(output.maps, torch.Tensor)
    np.testing.assert_array_equal(output.maps.numpy(), prediction.maps)

    # Text features from one detector supplied to a fresh one give the same answer.
    fresh = create_detector(method, **settings).use_text_features("screw", detector.text_features)
    assert fresh.category == "screw"
    np.testing.assert_array_equal(fresh.predict(pixels).maps, prediction.maps)
    # ... and another category's features give another answer.
    other = create_detector(method, **settings).prepare("carpet")
    assert not np.array_equal(other.predict(pixels).maps, prediction.maps)


def test_text_features_before_prepare_is_a_clear_error() -> None:
    detector = create_detector("sdp", **tiny_settings("sdp"))
    with pytest.raises(RuntimeError, match="prepare"):
        _ = detector.text_features
