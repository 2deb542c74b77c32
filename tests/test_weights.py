"""Released-weights registry: entries, offline resolution, local files, sha256 checks."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace

import pytest
import torch

from zsad_core import WeightsNotFoundError, create_detector
from zsad_core import weights as weights_module
from zsad_core.methods.learnable import CheckpointMismatchError
from zsad_core.weights import (
    RELEASED_WEIGHTS,
    ReleasedWeights,
    WeightsIntegrityError,
    find_released_weights,
    list_released_weights,
    resolve_released_weights,
)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network, an empty Hugging Face cache and an empty weights folder; returns that folder."""
    import huggingface_hub.constants as hub_constants

    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("ZSAD_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.chdir(tmp_path)
    return weights_dir


def test_entries_complete():
    names = [w.name for w in RELEASED_WEIGHTS]
    assert len(names) == len(set(names))
    for entry in RELEASED_WEIGHTS:
        assert isinstance(entry, ReleasedWeights)
        assert entry.name == entry.name.lower() and " " not in entry.name
        assert entry.method in ("adaclip", "sdp_plus")
        assert entry.filename.endswith(".pth")
        assert entry.license and entry.trained_on and entry.notes
        assert entry.sha256 is None or len(entry.sha256) == 64
    adaclip = list_released_weights("adaclip")
    assert {w.filename for w in adaclip} == {
        "pretrained_mvtec_colondb.pth",
        "pretrained_visa_clinicdb.pth",
        "pretrained_all.pth",
    }
    assert all(w.hub_repo == "cubert-gmbh/adaclip" for w in adaclip)
    sdp_plus = list_released_weights("sdp_plus")
    assert {w.filename for w in sdp_plus} == {"train_on_mvtec.pth", "train_on_visa.pth"}
    assert all(w.hub_repo is None and "github.com/ByChelsea/CLIP-AD" in w.notes for w in sdp_plus)
    assert list_released_weights() == list(RELEASED_WEIGHTS)


def test_find_by_name_or_filename():
    assert find_released_weights("ADACLIP-ALL").filename == "pretrained_all.pth"
    assert find_released_weights("train_on_visa.pth").name == "sdp-plus-visa"
    assert find_released_weights("nope") is None
    with pytest.raises(ValueError, match="known: adaclip-mvtec-colondb"):
        resolve_released_weights("nope")


@pytest.mark.parametrize("name", ["adaclip-mvtec-colondb", "sdp-plus-mvtec"])
def test_offline_resolution_fails_fast_and_clearly(offline, name):
    entry = find_released_weights(name)
    began = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as caught:
        resolve_released_weights(name)
    assert time.perf_counter() - began < 10
    message = str(caught.value)
    assert entry.filename in message
    assert str(offline / entry.filename) in message
    if entry.hub_repo:
        assert entry.hub_repo in message
    else:
        assert "github.com/ByChelsea/CLIP-AD" in message


def test_file_in_weights_dir_is_found(offline):
    placed = offline / "pretrained_all.pth"
    placed.write_bytes(b"not really a checkpoint")
    assert resolve_released_weights("adaclip-all") == placed


def test_sha256_verified(offline, monkeypatch):
    placed = offline / "train_on_mvtec.pth"
    placed.write_bytes(b"some bytes")
    good = hashlib.sha256(b"some bytes").hexdigest()
    entry = find_released_weights("sdp-plus-mvtec")
    monkeypatch.setattr(weights_module, "RELEASED_WEIGHTS", (replace(entry, sha256=good),))
    assert resolve_released_weights("sdp-plus-mvtec") == placed
    monkeypatch.setattr(weights_module, "RELEASED_WEIGHTS", (replace(entry, sha256="0" * 64),))
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        resolve_released_weights("sdp-plus-mvtec")


def test_detector_loads_released_name_from_weights_dir(offline):
    detector = create_detector("sdp_plus", model="zsad-tiny", device="cpu")
    # the authors' train.py layout, with this backbone's shapes
    state = {name: torch.full_like(value, 0.25) for name, value in detector.learned.state_dict().items()}
    torch.save({"linear_layers": state}, offline / "train_on_mvtec.pth")
    detector.load_checkpoint("sdp-plus-mvtec")
    assert detector.trained
    for name, value in detector.learned.state_dict().items():
        assert torch.equal(value, state[name])
    with pytest.raises(WeightsNotFoundError, match="train_on_visa.pth"):
        detector.load_checkpoint("sdp-plus-visa")
    with pytest.raises(CheckpointMismatchError, match="for method 'adaclip'"):
        detector.load_checkpoint("adaclip-all")
    with pytest.raises(FileNotFoundError, match="sdp-plus-mvtec"):
        detector.load_checkpoint("no-such-checkpoint")
