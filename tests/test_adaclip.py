"""AdaCLIP: switches, prompt insertion, HSF, checkpoints (authors' key names), batching, training,
and agreement with the authors' code (tests/fixtures/reference/adaclip_authors.npz)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import open_clip_forward

from zsad_core.losses import dice_loss, focal_loss
from zsad_core.methods.adaclip import (
    AdaCLIP,
    AdaCLIPConfig,
    AdaCLIPParameters,
    convert_authors_state_dict,
    hybrid_semantic_fusion,
)
from zsad_core.methods.learnable import CheckpointMismatchError
from zsad_core.prompts import ADACLIP_PROMPTS, text_anchors
from zsad_core.registry import create_detector

SIZE = 224  # zsad-tiny-14 at 224 px: a 16 x 16 patch grid, 8 blocks, taps 2/4/6/8
REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference" / "adaclip_authors.npz"


def make_detector(**settings) -> AdaCLIP:
    settings = {"hsf_clusters": 4, **settings}
    return create_detector(
        "adaclip", model="zsad-tiny-14", image_size=settings.pop("image_size", SIZE), device="cpu", **settings
    )


def random_pixels(batch: int = 1, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def run(detector: AdaCLIP, pixels: torch.Tensor, category: str = "bottle"):
    detector.prepare(category)
    with torch.no_grad():
        return detector.predict(pixels, detector.text_features)


# ------------------------------------------------------------------------------------ switches
@pytest.mark.parametrize(
    ("prompt_type", "branches", "use_hsf"), list(itertools.product(("S", "D", "SD"), ("V", "L", "VL"), (True, False)))
)
def test_every_switch_combination_runs(prompt_type: str, branches: str, use_hsf: bool) -> None:
    detector = make_detector(prompt_type=prompt_type, branches=branches, use_hsf=use_hsf)
    prediction = run(detector, random_pixels(1))
    assert prediction.maps.shape == (1, SIZE, SIZE) and prediction.maps.dtype == np.float32
    assert np.isfinite(prediction.maps).all() and ((prediction.maps >= 0) & (prediction.maps <= 1)).all()
    assert prediction.scores.shape == (1,) and ((prediction.scores > 0) & (prediction.scores < 1)).all()
    names = {name.split(".")[0] for name, _ in detector.learned.named_parameters()}
    expected = {"patch_projections", "global_projection"}
    if "S" in prompt_type:
        expected |= {f"{tower}_static_prompts" for tower, flag in (("visual", "V"), ("text", "L")) if flag in branches}
    if "D" in prompt_type:
        expected |= {
            f"{tower}_prompt_generator" for tower, flag in (("visual", "V"), ("text", "L")) if flag in branches
        }
    assert names == expected
    if not use_hsf:  # the score is then the global one
        np.testing.assert_allclose(prediction.scores, prediction.extras["global_score"], rtol=1e-6)


def test_detect_returns_maps_at_the_input_size() -> None:
    from PIL import Image

    detector = make_detector().prepare("metal-nut")
    image = Image.fromarray((np.random.default_rng(0).random((90, 130, 3)) * 255).astype(np.uint8))
    with pytest.warns(UserWarning, match="no checkpoint loaded"):
        result = detector.detect(image)
    assert result.anomaly_map.shape == (90, 130) and result.model_map.shape == (SIZE, SIZE)
    assert 0.0 <= result.score <= 1.0 and np.isfinite(result.anomaly_map).all()
    assert detector.text_features.class_name == "metal nut"  # '-' -> ' ', as the authors


def test_zero_dynamic_generators_reproduce_static_only() -> None:
    hybrid, static = make_detector(prompt_type="SD"), make_detector(prompt_type="S")
    with torch.no_grad():
        for generator in (hybrid.learned.visual_prompt_generator, hybrid.learned.text_prompt_generator):
            for linear in generator:
                linear.weight.zero_()
                linear.bias.zero_()
    # the shared parts start equal (each part has its own seed)
    shared = static.learned.state_dict()
    for name, value in shared.items():
        assert torch.equal(hybrid.learned.state_dict()[name], value), name
    pixels = random_pixels(2, seed=3)
    a, b = run(hybrid, pixels), run(static, pixels)
    np.testing.assert_array_equal(a.maps, b.maps)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_dynamic_prompts_change_the_output() -> None:
    pixels = random_pixels(1, seed=4)
    hybrid, static = run(make_detector(prompt_type="SD"), pixels), run(make_detector(prompt_type="S"), pixels)
    assert np.abs(hybrid.maps - static.maps).max() > 1e-4


@pytest.mark.parametrize("settings", [{"prompt_depth": 0}, {"branches": ""}, {"branches": "L"}])
def test_unprompted_image_pass_is_the_plain_backbone(settings: dict) -> None:
    detector = make_detector(**settings)
    pixels = random_pixels(2, seed=5)
    with torch.no_grad():
        taps, pooled = detector.model.prompted_image_pass(pixels, None)
        embedding, tokens = open_clip_forward(detector.backbone, pixels, detector.tap_layers)
    torch.testing.assert_close(pooled, embedding, rtol=0, atol=1e-6)
    for tap, layer in zip(taps, detector.tap_layers):
        torch.testing.assert_close(tap, tokens[layer][:, 1:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("settings", [{"prompt_depth": 0}, {"branches": ""}, {"branches": "V"}])
def test_unprompted_text_is_the_plain_anchors(settings: dict) -> None:
    detector = make_detector(**settings).prepare("bottle")
    anchors = text_anchors(detector.backbone, "bottle", ADACLIP_PROMPTS, reducer="mean")
    with torch.no_grad():
        features = detector.model.extract_features(random_pixels(2), [detector.text_features] * 2)
    torch.testing.assert_close(features.text, anchors.expand(2, -1, -1), rtol=0, atol=1e-6)


def test_visual_prompts_are_appended_then_replaced() -> None:
    """A manual walk: block 0 gets the prompts appended, blocks 1..J-1 get the last M replaced."""
    detector = make_detector(prompt_type="SD", branches="VL", prompt_depth=3)
    learned, backbone, length = detector.learned, detector.backbone, detector.config.prompt_length
    pixels = random_pixels(2, seed=6)
    with torch.no_grad():
        dynamic_visual, _ = learned.dynamic_prompts(open_clip_forward(backbone, pixels)[0])
        taps, pooled = detector.model.prompted_image_pass(pixels, dynamic_visual)
        x = backbone.visual.ln_pre(backbone.embed_patches(pixels))
        num_patches = x.shape[1] - 1
        manual_taps = []
        for index, block in enumerate(backbone.blocks):
            if index < 3:
                prompt = learned.visual_static_prompts[index] + dynamic_visual
                x = torch.cat([x, prompt], dim=1) if index == 0 else torch.cat([x[:, :-length], prompt], dim=1)
            x = block(x)
            if index + 1 in detector.tap_layers:
                manual_taps.append(x[:, 1 : 1 + num_patches])
        assert x.shape[1] == 1 + num_patches + length
        torch.testing.assert_close(pooled, backbone.pool(x), rtol=0, atol=0)
        for ours, manual in zip(taps, manual_taps):
            assert ours.shape == (2, num_patches, backbone.width)
            torch.testing.assert_close(ours, manual, rtol=0, atol=0)


def test_text_hook_overwrites_positions_1_to_M_in_blocks_1_to_J_minus_1(monkeypatch) -> None:
    detector = make_detector(prompt_type="SD", branches="VL", prompt_depth=3, prompt_length=4).prepare("bottle")
    backbone, learned = detector.backbone, detector.learned
    captured = {}
    original = backbone.text_forward

    def spy(ids, hook=None, min_length=0):
        captured["hook"], captured["min_length"] = hook, min_length
        return original(ids, hook=hook, min_length=min_length)

    monkeypatch.setattr(backbone, "text_forward", spy)
    text = detector.text_features
    with torch.no_grad():
        _, dynamic_text = learned.dynamic_prompts(open_clip_forward(backbone, random_pixels(1))[0])
        ours = detector.model.text_features([text], dynamic_text)[0][0]
    # The ids are cut after the longest sentence's end-of-text token (never shorter than 1 + M) and run as they are.
    longest = int(backbone.tokenize(sum(text.prompts.sentences(text.class_name), [])).argmax(dim=-1).max()) + 1
    assert text.token_ids.shape[1] == max(longest, 1 + 4) and captured["min_length"] == text.token_ids.shape[1]
    hook = captured["hook"]
    count, width = len(text.token_ids), backbone.text_width
    for block in range(len(backbone.text_blocks)):
        probe = torch.randn(count, 12, width)
        changed = (hook(block, probe.clone()) != probe).any(dim=-1)  # (P, 12)
        if 1 <= block < 3:
            assert changed[:, 1:5].all() and not changed[:, :1].any() and not changed[:, 5:].any(), block
            expected = learned.text_static_prompts[block] + dynamic_text[0]
            torch.testing.assert_close(hook(block, probe)[:, 1:5], expected.expand(count, -1, -1))
        else:
            assert not changed.any(), block
    monkeypatch.undo()

    # a manual text walk over the full 77-token context gives the same anchors
    model = backbone.model
    ids = backbone.tokenize(sum(text.prompts.sentences(text.class_name), []))
    with torch.no_grad():
        x = model.token_embedding(ids) + model.positional_embedding
        for block_index, block in enumerate(backbone.text_blocks):
            if 1 <= block_index < 3:
                x = x.clone()
                x[:, 1:5] = learned.text_static_prompts[block_index] + dynamic_text[0]
            x = block(x, attn_mask=model.attn_mask)
        pooled = model.ln_final(x)[torch.arange(len(ids)), ids.argmax(dim=-1)] @ model.text_projection
        unit = F.normalize(pooled, dim=-1)
        manual = torch.stack(
            [
                F.normalize(unit[: text.num_normal].mean(0), dim=-1),
                F.normalize(unit[text.num_normal :].mean(0), dim=-1),
            ],
            dim=1,
        )
    assert count == 48 and text.num_normal == 28
    torch.testing.assert_close(ours, manual, rtol=0, atol=2e-6)


# ------------------------------------------------------------------------------------------- HSF
def test_hsf_on_a_hand_made_case() -> None:
    axes = torch.eye(4)
    # 8 patches; the 4 most anomalous are 2 near axis 0 and 2 near axis 1 (in both layers)
    layer_a = torch.stack(
        [axes[0], axes[0] * 0.9 + axes[3] * 0.1, axes[1], axes[1] * 0.8 + axes[2] * 0.2] + [axes[2]] * 4
    )
    layer_b = torch.stack([axes[0], axes[0], axes[1], axes[1] * 0.9 + axes[3] * 0.1] + [axes[3]] * 4)
    probs = torch.tensor([[0.9, 0.8, 0.95, 0.7, 0.1, 0.2, 0.3, 0.05]])
    result = hybrid_semantic_fusion([layer_a[None], layer_b[None]], probs, clusters=2, topk_factor=2, seed=0)
    np.testing.assert_array_equal(result.indices[0], [2, 0, 1, 3])
    labels = result.labels[0]
    assert labels[0] == labels[3] and labels[1] == labels[2] and labels[0] != labels[1]
    centre_0 = torch.cat([layer_a[[0, 1]], layer_b[[0, 1]]]).mean(0)
    centre_1 = torch.cat([layer_a[[2, 3]], layer_b[[2, 3]]]).mean(0)
    torch.testing.assert_close(result.embedding[0], F.normalize((centre_0 + centre_1) / 2, dim=0))


def test_hsf_with_fewer_patches_than_clusters_and_duplicates() -> None:
    features = [torch.ones(1, 3, 4), torch.ones(1, 3, 4)]  # 3 identical patches, K = 20
    result = hybrid_semantic_fusion(features, torch.rand(1, 3), clusters=20, topk_factor=5, seed=1)
    assert len(result.indices[0]) == 3 and torch.isfinite(result.embedding).all()
    torch.testing.assert_close(result.embedding[0], torch.full((4,), 0.5))


def test_hsf_changes_the_score_and_is_deterministic() -> None:
    pixels = random_pixels(2, seed=7)
    with_hsf = run(make_detector(), pixels)
    again = run(make_detector(), pixels)
    without = run(make_detector(use_hsf=False), pixels)
    np.testing.assert_array_equal(with_hsf.scores, again.scores)
    np.testing.assert_array_equal(with_hsf.maps, again.maps)
    np.testing.assert_array_equal(with_hsf.maps, without.maps)  # HSF only touches the image score
    assert np.abs(with_hsf.scores - without.scores).max() > 1e-6
    np.testing.assert_allclose(with_hsf.extras["global_score"], without.scores, rtol=1e-6)


# ----------------------------------------------------------------------------------- batching
def test_batch_equals_one_by_one() -> None:
    detector = make_detector()
    pixels = random_pixels(3, seed=8)
    batch = run(detector, pixels)
    for index in range(3):
        single = run(detector, pixels[index : index + 1])
        np.testing.assert_allclose(batch.maps[index], single.maps[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(batch.scores[index], single.scores[0], rtol=0, atol=1e-5)


def test_training_batch_with_mixed_classes_equals_one_by_one() -> None:
    detector = make_detector()
    pixels = random_pixels(2, seed=9)
    with torch.no_grad():
        batch = detector.training_forward(pixels, ["bottle", "metal nut"])
        singles = [
            detector.training_forward(pixels[i : i + 1], [name]) for i, name in enumerate(["bottle", "metal nut"])
        ]
    for index, single in enumerate(singles):
        torch.testing.assert_close(batch.image_probs[index], single.image_probs[0], rtol=0, atol=1e-5)
        for layer_batch, layer_single in zip(batch.layer_probs, single.layer_probs):
            torch.testing.assert_close(layer_batch[index], layer_single[0], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------ reproducibility
def test_initialisation_is_seeded() -> None:
    a, b, c = make_detector(), make_detector(), make_detector(seed=5)
    for name, value in a.learned.state_dict().items():
        assert torch.equal(value, b.learned.state_dict()[name])
    assert not torch.equal(a.learned.patch_projections[0].weight, c.learned.patch_projections[0].weight)
    prompts = torch.cat([p.flatten() for p in a.learned.visual_static_prompts])
    assert abs(prompts.std().item() - 0.02) < 0.004


# --------------------------------------------------------------------------------- checkpoints
def authors_layout(vision_width: int, text_width: int, taps: int, length: int, depth: int) -> dict[str, tuple]:
    """The authors' checkpoint keys and shapes (method/trainer.py ``save``), from methods.md §2.9."""
    layout: dict[str, tuple] = {}
    for tower, width in (("text", text_width), ("visual", vision_width)):
        for j in range(depth):
            layout[f"clip_model.{tower}_prompter.static_prompts.{j}"] = (length, width)
    for i in range(taps):
        layout[f"clip_model.patch_token_layer.head.{i}.weight"] = (text_width, vision_width)
        layout[f"clip_model.patch_token_layer.head.{i}.bias"] = (text_width,)
    layout["clip_model.cls_token_layer.head.0.weight"] = (text_width, text_width)
    layout["clip_model.cls_token_layer.head.0.bias"] = (text_width,)
    for tower, width in (("visual", vision_width), ("text", text_width)):
        for m in range(length):
            layout[f"clip_model.dynamic_{tower}_prompt_generator.head.{m}.weight"] = (width, text_width)
            layout[f"clip_model.dynamic_{tower}_prompt_generator.head.{m}.bias"] = (width,)
    return layout


def test_authors_vit_l_checkpoint_layout_loads_strictly() -> None:
    learned = AdaCLIPParameters(
        vision_width=1024, text_width=768, embed_dim=768, num_taps=4, prompt_length=5, prompt_depth=4
    )
    assert sum(p.numel() for p in learned.parameters()) == 10_665_472
    layout = authors_layout(1024, 768, 4, 5, 4)
    generator = torch.Generator().manual_seed(0)
    theirs = {key: torch.randn(shape, generator=generator) for key, shape in layout.items()}
    result = learned.load_state_dict(convert_authors_state_dict(theirs), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(learned.patch_projections[2].bias, theirs["clip_model.patch_token_layer.head.2.bias"])
    torch.testing.assert_close(
        learned.text_prompt_generator[4].weight, theirs["clip_model.dynamic_text_prompt_generator.head.4.weight"]
    )
    torch.testing.assert_close(learned.global_projection.weight, theirs["clip_model.cls_token_layer.head.0.weight"])


def test_authors_pth_file_loads_and_unknown_formats_are_refused(tmp_path: Path) -> None:
    detector = make_detector()
    layout = authors_layout(64, 48, 4, 5, 4)  # zsad-tiny-14: vision width 64, text width = embed dim = 48
    theirs = {key: torch.full(shape, 0.01) for key, shape in layout.items()}
    torch.save(theirs, tmp_path / "pretrained_tiny.pth")
    detector.load_checkpoint(tmp_path / "pretrained_tiny.pth")
    assert detector.trained
    assert torch.all(detector.learned.visual_static_prompts[3] == 0.01)

    torch.save({"some.other.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointMismatchError, match="unknown checkpoint format"):
        detector.load_checkpoint(tmp_path / "other.pth")
    del theirs["clip_model.cls_token_layer.head.0.bias"]
    torch.save(theirs, tmp_path / "incomplete.pth")
    with pytest.raises(CheckpointMismatchError, match="global_projection.bias"):
        detector.load_checkpoint(tmp_path / "incomplete.pth")
    # a vision-only detector drops the authors' (unused) text generator
    vision_only = make_detector(branches="V")
    full = {key: torch.full(shape, 0.01) for key, shape in layout.items() if "text_prompter" not in key}
    vision_only.learned.load_state_dict(vision_only.convert_foreign_state_dict(full), strict=True)


def test_own_checkpoint_round_trip_and_setting_mismatch(tmp_path: Path) -> None:
    trained = make_detector(seed=3)
    trained.save_checkpoint(tmp_path / "adaclip.safetensors", {"training_data": ["mvtec:/x"]})
    fresh = make_detector()
    fresh.load_checkpoint(tmp_path / "adaclip.safetensors")
    pixels = random_pixels(1, seed=10)
    np.testing.assert_array_equal(run(fresh, pixels).maps, run(trained, pixels).maps)
    metadata = fresh.setting_metadata()
    assert {"prompt_length", "prompt_depth", "prompt_type", "branches", "use_hsf", "hsf_clusters"} <= set(metadata)
    assert metadata["layers"] == "[2, 4, 6, 8]" and metadata["method"] == "adaclip"
    with pytest.raises(CheckpointMismatchError, match="prompt_type"):
        make_detector(prompt_type="S").load_checkpoint(tmp_path / "adaclip.safetensors")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="prompt_type"):
        AdaCLIPConfig(prompt_type="X")
    with pytest.raises(ValueError, match="branches"):
        AdaCLIPConfig(branches="T")
    with pytest.raises(ValueError, match="prompt_depth"):
        make_detector(prompt_depth=9)  # the tiny text tower has 4 blocks
    with pytest.raises(ValueError, match="tap layers"):
        make_detector(layers=(2, 12))
    with pytest.raises(ValueError, match="class names"):
        make_detector().training_forward(random_pixels(2), ["bottle"])


# ------------------------------------------------------------------------------------ training
def test_training_forward_loss_and_a_few_steps() -> None:
    detector = make_detector()
    pixels = random_pixels(1, seed=11)
    masks = torch.zeros(1, SIZE, SIZE)
    masks[:, 60:120, 80:150] = 1.0
    labels = torch.ones(1)
    output = detector.training_forward(pixels, ["bottle"])
    assert len(output.layer_probs) == 4 and output.image_probs.shape == (1, 2)
    for probs in output.layer_probs:
        assert probs.shape == (1, 2, SIZE, SIZE)
        torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, SIZE, SIZE))
    loss = detector.training_loss(output, masks, labels)
    manual = focal_loss(output.image_probs, labels.long()) + sum(
        focal_loss(p, masks.long()) + dice_loss(p[:, 1], masks) + dice_loss(p[:, 0], 1 - masks)
        for p in output.layer_probs
    )
    torch.testing.assert_close(loss, manual)
    loss.backward()
    without_gradient = {name for name, p in detector.learned.named_parameters() if p.grad is None or not p.grad.any()}
    assert without_gradient == {"text_static_prompts.0"}  # block 0 of the text tower is never prompted
    assert all(not p.requires_grad for p in detector.backbone.parameters())

    options = dict(AdaCLIP.default_optimizer)
    assert options.pop("name") == "adamw" and AdaCLIP.default_batch_size == 1 and AdaCLIP.default_epochs == 5
    optimizer = torch.optim.AdamW(detector.learned.parameters(), **options)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = detector.training_loss(detector.training_forward(pixels, ["bottle"]), masks, labels)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


# ------------------------------------------------------------------------- authors' reference
@pytest.mark.skipif(not REFERENCE.is_file(), reason="reference fixture absent")
@pytest.mark.parametrize("round_prompts_fp16", [True, False])
def test_agrees_with_the_authors_code(round_prompts_fp16: bool) -> None:
    """The authors' AdaCLIP run on zsad-tiny-14 at 518 px with random learned parts (README.md §3).

    With ``round_prompts_fp16`` (their ``.half()`` cast) everything matches, HSF clusters included;
    without it, the ``*_fp32prompts`` run of their code does.
    """
    reference = np.load(REFERENCE)
    detector = make_detector(image_size=518, hsf_clusters=20, round_prompts_fp16=round_prompts_fp16)
    theirs = {
        key[len("learned/") :]: torch.from_numpy(reference[key])
        for key in reference.files
        if key.startswith("learned/")
    }
    detector.learned.load_state_dict(detector.convert_foreign_state_dict(theirs), strict=True)
    assert list(detector.tap_layers) == reference["features_list"].tolist()
    detector.prepare("bottle")
    pixels = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = detector.model.extract_features(pixels, [detector.text_features])
        logits = detector.model.patch_logits(features)
        image_probs, fusion = detector.model.image_probabilities(features, logits)
        prediction = detector.predict(pixels, detector.text_features)
        training = detector.training_forward(pixels, ["bottle"])
    suffix = "" if round_prompts_fp16 else "_fp32prompts"

    def check(name: str, ours, atol: float) -> None:
        key = name + suffix if name + suffix in reference.files else name
        np.testing.assert_allclose(
            np.asarray(ours).reshape(reference[key].shape), reference[key], rtol=0, atol=atol, err_msg=key
        )

    check("g_global", features.global_embedding[0], 1e-5)
    check("Pv_dyn", features.dynamic_visual[0], 1e-5)
    check("Pt_dyn", features.dynamic_text[0], 1e-5)
    check("text_features", features.text[0], 1e-6)
    check("f_cls", features.global_feature[0], 1e-6)
    patch_probs = torch.stack(logits).mean(0).softmax(dim=-1)[0, :, 1]
    check("patch_prob_abn", patch_probs, 2e-5)
    check("anomaly_score", image_probs[0, 1:], 1e-5)
    np.testing.assert_allclose(prediction.scores, reference["anomaly_score" + suffix], rtol=0, atol=1e-5)
    if not round_prompts_fp16:
        return  # only the scalars above were stored for the fp32-prompt run
    check("patch_logits", torch.stack([layer[0] for layer in logits]), 1e-3)
    np.testing.assert_array_equal(fusion.indices[0], reference["topk_indices"])
    np.testing.assert_array_equal(fusion.labels[0], reference["kmeans_labels"])
    check("hsf_embedding", fusion.embedding[0], 1e-6)
    raw_map = torch.stack(detector.model.upsampled_logits(logits)).mean(0).softmax(dim=1)[0, 1]
    check("anomaly_map_sub4", raw_map[::4, ::4], 2e-5)
    check("anomaly_map_crop", raw_map[200:264, 200:264], 2e-5)
    check("anomaly_map_s4_sub4", prediction.maps[0][::4, ::4], 2e-5)
    check("anomaly_map_s4_crop", prediction.maps[0][200:264, 200:264], 2e-5)
    check("anomaly_map_max", [raw_map.max(), prediction.maps[0].max()], 2e-5)
    check("per_layer_prob_abn_sub8", torch.stack([p[0, 1, ::8, ::8] for p in training.layer_probs]), 5e-5)


def test_trains_with_the_shared_training_loop(tmp_path: Path) -> None:
    from zsad_core.data import make_synthetic_dataset
    from zsad_core.training import train

    spec = make_synthetic_dataset(tmp_path / "data", "mvtec")
    out = tmp_path / "adaclip.safetensors"
    summary = train(
        "adaclip",
        spec,
        out,
        model="zsad-tiny-14",
        image_size=SIZE,
        steps=2,
        device="cpu",
        progress=False,
        hsf_clusters=4,
    )
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    detector = make_detector(checkpoint=str(out))
    assert detector.trained
