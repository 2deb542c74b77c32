"""SDP+: the zero-layer identity with SDP, shapes, determinism, foreign checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image

from zsad_core import create_detector, get_method
from zsad_core.methods.clipad import SDP, SDPPlus, SDPPlusConfig
from zsad_core.methods.learnable import CheckpointMismatchError, LearnableDetector, TrainingOutput
from zsad_core.preprocess import images_to_batch

SIZE = 240  # zsad-tiny's native size (15 x 15 grid)


def _pixels(detector, count: int = 2) -> torch.Tensor:
    mean, std = detector.backbone.mean_std
    images = [make_image(80, 96, seed=i) for i in range(count)]
    return images_to_batch(images, detector.config.image_size, mean, std)[0]


def _zeroed(detector: SDPPlus) -> SDPPlus:
    with torch.no_grad():
        for parameter in detector.learned.parameters():
            parameter.zero_()
    return detector


def test_registered_as_learnable():
    cls = get_method("sdp_plus")
    assert cls is SDPPlus and issubclass(cls, LearnableDetector) and issubclass(cls, SDP)
    assert not cls.info.training_free
    assert cls.default_optimizer == {"name": "adam", "lr": 1e-4}
    assert (cls.default_epochs, cls.default_batch_size, cls.default_seed) == (5, 8, 42)
    config = SDPPlusConfig()
    assert config.checkpoint is None and config.sigma == 8.0 and config.image_size == 240
    assert config.model == "ViT-B-16-plus-240:laion400m_e31" and config.reference_aliasing


@pytest.mark.parametrize("sigma", [0.0, 8.0])
def test_zero_layers_give_sdp_map_plus_two(sigma):
    """Zero weights: every stage's softmax is (0.5, 0.5), so M_ft = 4 x 0.5 = 2 everywhere."""
    sdp = create_detector("sdp", model="zsad-tiny", device="cpu", sigma=sigma).prepare("widget")
    plus = _zeroed(create_detector("sdp_plus", model="zsad-tiny", device="cpu", sigma=sigma)).prepare("widget")
    pixels = _pixels(sdp)
    with torch.no_grad():
        expected = sdp.predict(pixels, sdp._prepared.features)
        found = plus.predict(pixels, plus._prepared.features)
    assert found.maps.shape == (2, SIZE, SIZE)
    if sigma == 0:
        np.testing.assert_array_equal(found.maps, expected.maps + np.float32(2.0))
    else:
        np.testing.assert_allclose(found.maps, expected.maps + 2.0, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(found.extras["p_cls"], expected.extras["p_cls"])
    np.testing.assert_allclose(found.extras["p_max"], expected.extras["p_max"] + 2.0, atol=1e-5)


def test_untrained_detect_is_deterministic_and_warns_once():
    first = create_detector("sdp_plus", model="zsad-tiny", device="cpu").prepare("widget")
    second = create_detector("sdp_plus", model="zsad-tiny", device="cpu").prepare("widget")
    for (name, a), (_, b) in zip(first.learned.state_dict().items(), second.learned.state_dict().items()):
        assert torch.equal(a, b), name
    image = make_image(64, 64, seed=3)
    with pytest.warns(UserWarning, match="no checkpoint loaded"):
        result_a = first.detect(image)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first.detect(image)  # warned only once
    with pytest.warns(UserWarning):
        result_b = second.detect(image)
    np.testing.assert_array_equal(result_a.anomaly_map, result_b.anomaly_map)
    assert result_a.score == result_b.score
    assert result_a.anomaly_map.shape == (64, 64)


def test_training_forward_and_loss():
    detector = create_detector("sdp_plus", model="zsad-tiny", device="cpu")
    pixels = _pixels(detector)
    output = detector.training_forward(pixels, ["widget", "gadget"])
    assert isinstance(output, TrainingOutput) and output.image_probs is None
    assert len(output.layer_probs) == 4
    for probs in output.layer_probs:
        assert probs.shape == (2, 2, SIZE, SIZE)
        torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, SIZE, SIZE))
    masks = torch.zeros(2, SIZE, SIZE)
    masks[1, 100:140, 60:90] = 1
    loss = detector.training_loss(output, masks, torch.tensor([0, 1]))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in detector.learned.parameters())
    assert all(p.grad is None for p in detector.backbone.parameters())


def test_foreign_checkpoint_layout(tmp_path):
    detector = create_detector("sdp_plus", model="zsad-tiny", device="cpu")
    state = {name: torch.randn(value.shape) for name, value in detector.learned.state_dict().items()}
    assert sorted(state) == sorted(f"fc.{i}.{kind}" for i in range(4) for kind in ("weight", "bias"))
    torch.save({"linear_layers": state}, tmp_path / "epoch_5.pth")
    detector.load_checkpoint(tmp_path / "epoch_5.pth")
    for name, value in detector.learned.state_dict().items():
        assert torch.equal(value, state[name])

    torch.save({"something": {"x": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointMismatchError, match="CLIP-AD train.py layout"):
        detector.load_checkpoint(tmp_path / "other.pth")
    wide = {name: torch.zeros(value.shape[0], 896) if value.dim() == 2 else value for name, value in state.items()}
    torch.save({"linear_layers": wide}, tmp_path / "wide.pth")
    with pytest.raises(CheckpointMismatchError, match="other parameter shapes"):
        detector.load_checkpoint(tmp_path / "wide.pth")
    torch.save({"linear_layers": {k: v for k, v in state.items() if not k.startswith("fc.3")}}, tmp_path / "short.pth")
    with pytest.raises(CheckpointMismatchError, match="missing"):
        detector.load_checkpoint(tmp_path / "short.pth")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointMismatchError, match="unknown file type"):
        detector.load_checkpoint(tmp_path / "notes.txt")
