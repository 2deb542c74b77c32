"""Released-weights registry: entries, offline resolution, local files, sha256 checks."""

from __future__ import annotations

import hashlib
import socket
import time
from dataclasses import replace

import pytest
import torch

from zsad_core import WeightsNotFoundError, create_detector
from zsad_core import hub as hub_module
from zsad_core import weights as weights_module
from zsad_core.methods.learnable import CheckpointMismatchError
from zsad_core.weights import (
    RELEASED_WEIGHTS,
    ReleasedWeights,
    WeightsIntegrityError,
    find_local_released_weights,
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


# backbone and input size each method's released checkpoints were trained with (the authors' scripts)
TRAINED_WITH = {"adaclip": ("ViT-L-14-336:openai", 518), "sdp_plus": ("ViT-B-16-plus-240:laion400m_e31", 240)}


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
        assert (entry.model, entry.image_size) == TRAINED_WITH[entry.method]
        assert entry.model in entry.notes and f"{entry.image_size} px" in entry.notes
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


# The pins of the AdaCLIP mirror as listed in cubert-hyperspectral/cuvis-ai-core (cuvis_ai_core/data/model_weights.py)
ADACLIP_REVISION = "16153b4ba74c2fe54a99679fc2e1b1e29993dc3f"
ADACLIP_SHA256 = {
    "pretrained_all.pth": "33e8d3db1cb4aab030866b8b70a46e10aa27ebf2c23b5463cb07f2574addd98c",
    "pretrained_mvtec_colondb.pth": "be51a42c052bd4cf060e54f503a1f5d0b2a3b899bc8dc2e243042f18b215427e",
    "pretrained_visa_clinicdb.pth": "3deabbbaf1e412cfdfcb42923a500b986f4b9ee96ccbc7a735d89dbc87df44c8",
}


def test_pins_are_the_documented_ones():
    adaclip = list_released_weights("adaclip")
    assert {w.filename: w.sha256 for w in adaclip} == ADACLIP_SHA256
    assert {w.revision for w in adaclip} == {ADACLIP_REVISION}
    # the authors' GitHub files have no published hash or Hub revision
    assert all(w.revision is None and w.sha256 is None for w in list_released_weights("sdp_plus"))


def _hub_snapshot(cache, revision: str, filename: str, content: bytes):
    """Write ``filename`` into a Hugging Face cache layout for cubert-gmbh/adaclip at ``revision``."""
    snapshot = cache / "models--cubert-gmbh--adaclip" / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / filename).write_bytes(content)
    return snapshot / filename


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt (socket or the hub probe) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(hub_module, "hub_reachable", refuse)


def test_file_in_weights_dir_is_found_and_verified(offline, monkeypatch):
    placed = offline / "pretrained_all.pth"
    placed.write_bytes(b"not really a checkpoint")
    # the pinned sha256 applies to a file placed by hand too
    with pytest.raises(WeightsIntegrityError, match=ADACLIP_SHA256["pretrained_all.pth"]):
        resolve_released_weights("adaclip-all")
    entry = find_released_weights("adaclip-all")
    good = hashlib.sha256(b"not really a checkpoint").hexdigest()
    monkeypatch.setattr(weights_module, "RELEASED_WEIGHTS", (replace(entry, sha256=good),))
    assert resolve_released_weights("adaclip-all") == placed


def test_find_local_in_weights_dir_without_network_or_hashing(offline, no_network, monkeypatch):
    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed a file")

    monkeypatch.setattr(weights_module, "file_sha256", no_hashing)
    for entry in RELEASED_WEIGHTS:
        assert find_local_released_weights(entry.name) is None
    placed = offline / "pretrained_visa_clinicdb.pth"
    placed.write_bytes(b"any bytes: not hashed here")
    assert find_local_released_weights("adaclip-visa-clinicdb") == placed
    assert find_local_released_weights("pretrained_visa_clinicdb.pth") == placed
    assert find_local_released_weights("adaclip-all") is None
    (offline / "train_on_visa.pth").write_bytes(b"x")
    assert find_local_released_weights("sdp-plus-visa") == offline / "train_on_visa.pth"
    with pytest.raises(ValueError, match="known: adaclip-mvtec-colondb"):
        find_local_released_weights("nope")


def test_find_local_in_hub_cache_only_at_the_pinned_revision(offline, no_network, tmp_path):
    cache = tmp_path / "hf-cache"  # the offline fixture points HF_HUB_CACHE here
    _hub_snapshot(cache, "0" * 40, "pretrained_all.pth", b"another revision")
    assert find_local_released_weights("adaclip-all") is None
    cached = _hub_snapshot(cache, ADACLIP_REVISION, "pretrained_all.pth", b"the pinned revision")
    assert find_local_released_weights("adaclip-all") == cached
    assert find_local_released_weights("adaclip-mvtec-colondb") is None
    # a weights-folder copy comes first, as in resolve_released_weights
    (offline / "pretrained_all.pth").write_bytes(b"local copy")
    assert find_local_released_weights("adaclip-all") == offline / "pretrained_all.pth"


def test_hub_cache_file_is_resolved_at_the_pinned_revision_and_verified(offline, no_network, tmp_path, monkeypatch):
    cached = _hub_snapshot(tmp_path / "hf-cache", ADACLIP_REVISION, "pretrained_all.pth", b"cached bytes")
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        resolve_released_weights("adaclip-all")
    entry = find_released_weights("adaclip-all")
    good = hashlib.sha256(b"cached bytes").hexdigest()
    monkeypatch.setattr(weights_module, "RELEASED_WEIGHTS", (replace(entry, sha256=good),))
    assert resolve_released_weights("adaclip-all").resolve() == cached.resolve()


def test_download_asks_for_the_pinned_revision(offline, tmp_path, monkeypatch):
    import huggingface_hub

    downloaded = tmp_path / "downloaded.pth"
    downloaded.write_bytes(b"downloaded bytes")
    calls = []

    def fake_download(repo_id, filename, revision=None, local_files_only=False, **kwargs):
        calls.append((repo_id, filename, revision, local_files_only))
        if local_files_only:
            raise FileNotFoundError("not cached")
        return str(downloaded)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(hub_module, "hub_reachable", lambda: True)
    with pytest.raises(WeightsIntegrityError, match=ADACLIP_SHA256["pretrained_mvtec_colondb.pth"]):
        resolve_released_weights("adaclip-mvtec-colondb")
    assert calls == [
        ("cubert-gmbh/adaclip", "pretrained_mvtec_colondb.pth", ADACLIP_REVISION, True),
        ("cubert-gmbh/adaclip", "pretrained_mvtec_colondb.pth", ADACLIP_REVISION, False),
    ]


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
