"""Training the project's own small CLIP (zsad_core.clip_training) on a micro config."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MICRO_CLIP_CONFIG

from zsad_core import create_detector
from zsad_core.availability import model_status
from zsad_core.cli import main
from zsad_core.clip_training import (
    ABNORMAL_STATES,
    DEFAULT_CONFIG,
    NORMAL_STATES,
    TEMPLATES,
    ClipTrainingConfig,
    Pool,
    _learning_rate,
    _normalise,
    build_clip,
    load_model_config,
    random_crops,
    state_caption,
    train_clip,
    training_losses,
)

MICRO = MICRO_CLIP_CONFIG


@pytest.fixture
def micro_config(tmp_path: Path) -> str:
    path = tmp_path / "micro.json"
    path.write_text(json.dumps(MICRO))
    return str(path)


def micro_backbone(seed: int = 0):
    import open_clip

    from zsad_core.backbone import BackboneSpec, ClipBackbone

    model = build_clip(MICRO, seed)
    backbone = ClipBackbone(model, BackboneSpec(model="micro"), open_clip.get_tokenizer("ViT-B-16"))
    model.train().requires_grad_(True)
    return backbone


def test_the_shipped_config_is_an_open_clip_clip(tmp_path: Path) -> None:
    config = load_model_config(DEFAULT_CONFIG)
    model = build_clip(config, seed=0)
    assert sum(p.numel() for p in model.parameters()) * 2 < 30e6  # fp16 weights within the ~30 MB budget
    again = build_clip(config, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    other = build_clip(config, seed=1)
    assert not torch.equal(model.visual.conv1.weight, other.visual.conv1.weight)
    not_a_config = tmp_path / "other.json"
    not_a_config.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ValueError, match="not an open_clip model config"):
        load_model_config(not_a_config)


def test_captions_use_the_methods_prompt_vocabulary() -> None:
    cfg = ClipTrainingConfig(defect_word_prob=1.0)
    words = random.Random(0)
    normal = state_caption("wood", False, None, words, cfg)
    assert any(normal == t.format(s.format("wood")) for t in TEMPLATES for s in NORMAL_STATES)
    assert "cracked wood" in state_caption("wood", True, "crack", words, cfg)  # the defect's own words first
    assert "wood with a hole" in state_caption("wood", True, "hole", words, cfg)
    generic = state_caption("wood", True, "crack", words, replace(cfg, defect_word_prob=0.0))
    assert any(generic == t.format(s.format("wood")) for t in TEMPLATES for s in ABNORMAL_STATES)


def test_random_crops_keep_image_and_mask_aligned() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 64, 64), dtype=bool)
    masks[0, 10:30, 40:60] = True
    masks[1, 50:60, 5:15] = True
    images = np.zeros((3, 64, 64, 3), dtype=np.uint8)
    images[..., 0] = masks * 255  # the red channel draws the mask
    pool = Pool(images, masks, ["a", "b", "c"], ["hole", "stain", None])
    crops, crop_masks = random_crops(pool, np.array([0, 1, 2, 0, 1, 2] * 4), 32, 0.3, rng)
    assert crops.shape == (24, 3, 32, 32) and crop_masks.shape == (24, 32, 32)
    assert float(crop_masks.min()) >= 0.0 and float(crop_masks.max()) <= 1.0
    # flips and quarter turns move the mask with the pixels: where the mask is, the crop is red
    assert torch.all((crop_masks > 0.9) <= (crops[:, 0] > 0.8))
    assert torch.all((crop_masks < 0.1) <= (crops[:, 0] < 0.2))
    assert float(crop_masks[2::3].sum()) == 0.0  # a good sample never yields defect pixels


def test_learning_rate_warms_up_then_follows_a_cosine() -> None:
    cfg = ClipTrainingConfig(lr=1e-3, warmup_steps=10, steps=110)
    assert _learning_rate(0, cfg) == pytest.approx(1e-4)
    assert _learning_rate(9, cfg) == pytest.approx(1e-3)
    assert _learning_rate(60, cfg) == pytest.approx(0.5e-3)  # half-way through the cosine
    assert _learning_rate(110, cfg) == pytest.approx(0.0, abs=1e-12)


def test_losses_fall_when_a_fixed_batch_is_fitted() -> None:
    torch.manual_seed(0)
    backbone = micro_backbone()
    pixels = _normalise(torch.rand(8, 3, 32, 32))
    masks = torch.zeros(8, 32, 32)
    masks[:4, 8:24, 8:24] = 1.0  # four abnormal crops with a defect in the middle
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    captions = ["a photo of a damaged widget.", "a photo of a flawless widget.", "a photo of a damaged object."]
    caption_keys = [("widget", True), ("widget", False), ("*", True)]
    image_keys = [("widget", bool(label)) for label in labels.tolist()]
    pairs = [("a photo of a flawless widget.", "a photo of a damaged widget.")] * 8
    optimiser = torch.optim.Adam(backbone.model.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        losses = training_losses(backbone, pixels, masks, labels, captions, caption_keys, image_keys, pairs)
        total = sum(losses.values())
        first = first or {name: float(value.detach()) for name, value in losses.items()}
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    last = {name: float(value.detach()) for name, value in losses.items()}
    assert set(last) == {"clip", "pair", "patch"}
    # With several positives the clip loss cannot reach 0: its floor is the entropy of the targets.
    # Image -> text: an abnormal crop has 2 positive captions (its category's and the generic one), a
    # normal crop 1; text -> image: every caption has 4 positive crops.
    floor = 0.5 * ((4 * np.log(2) + 4 * np.log(1)) / 8 + np.log(4))
    assert first["clip"] > floor and last["clip"] >= floor - 1e-3
    assert last["clip"] - floor < 0.5 * (first["clip"] - floor)
    for name in ("pair", "patch"):
        assert last[name] < 0.5 * first[name], (name, first[name], last[name])


def test_train_clip_writes_a_model_folder_every_method_loads(micro_config: str, tmp_path: Path) -> None:
    cfg = ClipTrainingConfig(config=micro_config, steps=3, batch_size=4, pool_good=1, pool_defective=1, render_size=48)
    summary = train_clip(cfg, tmp_path / "model", progress=False)
    folder = Path(summary["out"])
    assert summary["steps"] == 3 and set(summary["losses"]) == {"clip", "pair", "patch"}
    assert {p.name for p in folder.iterdir()} >= {
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "training.json",
    }
    record = json.loads((folder / "training.json").read_text())
    assert record["training"]["seed"] == 0 and len(record["history"]) == 3
    assert len(record["code_revision"].split("+")[0]) in (0, 40)  # the git commit, where there is one
    assert "wood" not in record["training_categories"]  # held-out categories are never trained on
    model = f"local-dir:{folder}"
    assert model_status(model).available and not model_status(model).random_weights
    for method in ("winclip", "sdp"):
        result = (
            create_detector(method, model=model, image_size=32, device="cpu")
            .prepare("wood")
            .detect(np.zeros((20, 30, 3), dtype=np.uint8))
        )
        assert result.anomaly_map.shape == (20, 30)
    again = train_clip(cfg, tmp_path / "again", progress=False)  # the same seed: the same weights
    from safetensors.torch import load_file

    first = load_file(str(folder / "open_clip_model.safetensors"))
    second = load_file(str(Path(again["out"]) / "open_clip_model.safetensors"))
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_command_line_refuses_bad_numbers(tmp_path: Path, capsys) -> None:
    assert main(["train-clip", "--out", str(tmp_path / "m"), "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["train-clip", "--out", str(tmp_path / "file"), "--steps", "1"]) == 2
    assert "is not a folder" in capsys.readouterr().err
