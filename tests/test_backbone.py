"""Backbones: tiny models, seeded init, input-size override, model-name errors, offline weights, checkpoints.

Also checks the pieces the methods walk (patch embedding, q/k/v, out-projection, text forward)
against open_clip's own forward, so a method built from them computes the standard CLIP.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from unittest import mock

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from zsad_core.backbone import (
    BackboneSpec,
    ClipBackbone,
    ModelSpecError,
    WeightsNotFoundError,
    clear_backbone_cache,
    create_backbone,
    list_tiny_models,
    load_backbone,
    parse_model_name,
    resolve_device,
    resolve_precision,
    resolve_pretrained_file,
)
from zsad_core.prompts import PromptError

TINY_GEOMETRY = {
    # name: (image size, patch, grid, width, embed dim, layers)
    "zsad-tiny": (240, 16, 15, 64, 32, 8),
    "zsad-tiny-14": (336, 14, 24, 64, 48, 8),
}


def _state_dict(backbone: ClipBackbone) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone().contiguous() for name, tensor in backbone.model.state_dict().items()}


def _assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


# ------------------------------------------------------------------------------------- tiny models
@pytest.mark.parametrize("name", sorted(TINY_GEOMETRY))
def test_tiny_models_build_with_their_geometry(name: str) -> None:
    assert name in list_tiny_models()
    backbone = create_backbone(name)
    size, patch, grid, width, embed_dim, layers = TINY_GEOMETRY[name]
    assert (backbone.image_size, backbone.patch_size, backbone.grid_size) == (size, patch, grid)
    assert (backbone.width, backbone.embed_dim, backbone.num_layers) == (width, embed_dim, layers)
    assert backbone.default_layers() == (2, 4, 6, 8)
    assert backbone.device.type == "cpu" and backbone.dtype == torch.float32
    assert not any(parameter.requires_grad for parameter in backbone.parameters())
    assert not backbone.model.training
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled = backbone.plain_pass(pixels).pooled
    assert pooled.shape == (1, embed_dim) and torch.isfinite(pooled).all()


def test_backbones_are_cached_per_spec() -> None:
    assert create_backbone("zsad-tiny") is create_backbone("zsad-tiny")
    assert create_backbone("zsad-tiny") is not create_backbone("zsad-tiny", image_size=96)


def test_random_init_is_seeded_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = _state_dict(load_backbone(BackboneSpec("zsad-tiny", seed=0)))
    clear_backbone_cache()
    second = _state_dict(load_backbone(BackboneSpec("zsad-tiny", seed=0)))
    assert torch.equal(torch.rand(3), expected_draw)  # building did not consume the caller's RNG
    _assert_same_weights(first, second)
    # the recipe the reference fixtures were made with (tests/fixtures/reference/README.md)
    torch.manual_seed(0)
    recipe = open_clip.create_model("zsad-tiny")
    _assert_same_weights(first, {k: v.contiguous() for k, v in recipe.state_dict().items()})
    other_seed = _state_dict(load_backbone(BackboneSpec("zsad-tiny", seed=1)))
    assert not torch.equal(first["visual.conv1.weight"], other_seed["visual.conv1.weight"])


# ------------------------------------------------------------------------------- image-size override
def test_image_size_override_resizes_positional_embedding_bicubic_without_antialias() -> None:
    native = create_backbone("zsad-tiny")
    resized = create_backbone("zsad-tiny", image_size=96)
    assert (resized.image_size, resized.grid_size) == (96, 6)
    old = native.visual.positional_embedding.detach()
    grid = old[1:].reshape(1, 15, 15, 64).permute(0, 3, 1, 2)
    by_hand = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False, antialias=False)
    expected = torch.cat([old[:1], by_hand.permute(0, 2, 3, 1).reshape(36, 64)])
    actual = resized.visual.positional_embedding.detach()
    assert actual.shape == (37, 64)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)
    antialiased = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False, antialias=True)
    assert not torch.allclose(actual[1:], antialiased.permute(0, 2, 3, 1).reshape(36, 64), atol=1e-3)
    # everything else is the same weights, and the model runs at the new size
    assert torch.equal(native.visual.conv1.weight, resized.visual.conv1.weight)
    assert torch.equal(native.visual.positional_embedding, old)  # the cached native model is untouched
    tokens = resized.embed_patches(torch.zeros(2, 3, 96, 96))
    assert tokens.shape == (2, 37, 64)
    with torch.no_grad():
        assert resized.plain_pass(torch.zeros(2, 3, 96, 96)).through(8)[8].shape == (2, 37, 64)


def test_image_size_override_upsamples_too() -> None:
    native = create_backbone("zsad-tiny")
    resized = create_backbone("zsad-tiny", image_size=320)
    old = native.visual.positional_embedding.detach()
    grid = old[1:].reshape(1, 15, 15, 64).permute(0, 3, 1, 2)
    by_hand = F.interpolate(grid, size=(20, 20), mode="bicubic", align_corners=False)
    torch.testing.assert_close(resized.visual.positional_embedding[1:], by_hand.permute(0, 2, 3, 1).reshape(400, 64))


def test_image_size_smaller_than_a_patch_is_refused() -> None:
    with pytest.raises(ModelSpecError, match="smaller than one patch"):
        create_backbone("zsad-tiny", image_size=8)


# --------------------------------------------------------------------------------- name errors
@pytest.mark.parametrize("name", ["", "   "])
def test_empty_model_name(name: str) -> None:
    with pytest.raises(ModelSpecError, match="empty model name.*zsad-tiny"):
        create_backbone(name)


def test_unknown_architecture_names_the_alternatives() -> None:
    with pytest.raises(ModelSpecError) as info:
        create_backbone("ViT-Q-99:laion400m_e31")
    message = str(info.value)
    assert "ViT-Q-99" in message and "zsad-tiny" in message and "list_models" in message


def test_unknown_pretrained_tag_lists_the_known_ones() -> None:
    with pytest.raises(ModelSpecError) as info:
        create_backbone("ViT-B-16-plus-240:no_such_tag")
    assert "no_such_tag" in str(info.value) and "laion400m_e31" in str(info.value)


def test_parse_model_name() -> None:
    assert parse_model_name("ViT-B-16-plus-240:laion400m_e31").pretrained == "laion400m_e31"
    assert not parse_model_name("ViT-B-16-plus-240:laion400m_e31").is_file
    assert parse_model_name("zsad-tiny:/tmp/w.safetensors").is_file
    assert parse_model_name("zsad-tiny:weights.bin").is_file
    assert parse_model_name("hf-hub:org/repo").is_schema and parse_model_name("hf-hub:org/repo").pretrained is None
    assert parse_model_name(" zsad-tiny ").name == "zsad-tiny"


def test_missing_local_dir_and_device_and_precision_errors() -> None:
    with pytest.raises(ModelSpecError, match="no such folder"):
        create_backbone("local-dir:/definitely/not/here")
    with pytest.raises(ModelSpecError, match="precision"):
        resolve_precision("fp8", "cpu")
    assert resolve_precision(None, "cpu") == "fp32" and resolve_precision("auto", "cuda") == "fp16"
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device(None) == "cpu"
        with pytest.raises(ModelSpecError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_precision_is_bf16_only_on_cpus_with_native_bf16(
    monkeypatch: pytest.MonkeyPatch, native_bf16: bool
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16 else "fp32")
    assert resolve_precision("auto", "cuda:1") == "fp16"
    assert resolve_precision(None, "cpu") == "fp32"  # the reference precision (evaluation, training) stays
    assert resolve_precision("fp32", "cpu") == "fp32"


def test_architecture_without_tag_warns_that_scores_mean_nothing(tmp_path: Path) -> None:
    # A config open_clip knows but that is not one of the project's tiny models takes the same path as
    # "ViT-B-16" with no tag, without building a big model: copy zsad-tiny's config under a new name.
    config = json.loads((Path(__file__).resolve().parents[1] / "zsad_core/model_configs/zsad-tiny.json").read_text())
    (tmp_path / "untagged-test-arch.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path)
    with pytest.warns(UserWarning, match="RANDOM weights.*mean nothing"):
        backbone = create_backbone("untagged-test-arch")
    assert backbone.grid_size == 15
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the project's own tiny models are random on purpose: no warning
        clear_backbone_cache()
        create_backbone("zsad-tiny")


# ------------------------------------------------------------------------------------ weight files
def test_offline_pretrained_tag_fails_fast_with_guidance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    weights_dir, hub_cache = tmp_path / "my-weights", tmp_path / "hub-cache"
    weights_dir.mkdir()
    hub_cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("ZSAD_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    from zsad_core.backbone import _local_weight_candidates

    if any(path.is_file() for path in _local_weight_candidates("ViT-B-16-plus-240", "laion400m_e31")):
        pytest.skip("real ViT-B-16-plus-240 weights are installed in the package weights folder")
    began = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_pretrained_file("ViT-B-16-plus-240", "laion400m_e31")
    assert time.perf_counter() - began < 10.0  # no network retries
    message = str(info.value)
    assert "ViT-B-16-plus-240" in message and "laion400m_e31" in message
    assert "timm/vit_base_patch16_plus_clip_240.laion400m_e31" in message  # the hub repository
    assert str(weights_dir / "ViT-B-16-plus-240" / "laion400m_e31") in message  # the places looked in
    assert str(hub_cache) in message
    assert "weights/README.md" in message and "zsad-tiny" in message
    # the same error through the public entry point, without building anything
    with pytest.raises(WeightsNotFoundError):
        create_backbone("ViT-B-16-plus-240:laion400m_e31")


def test_pretrained_tag_is_found_in_the_local_weights_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "ViT-B-16-plus-240" / "laion400m_e31" / "open_clip_model.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"placeholder")  # only resolution is tested here, nothing is loaded
    monkeypatch.setenv("ZSAD_WEIGHTS_DIR", str(tmp_path))
    assert resolve_pretrained_file("ViT-B-16-plus-240", "laion400m_e31") == target


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_checkpoint_file_loads_its_weights(tmp_path: Path, suffix: str) -> None:
    weights = _state_dict(create_backbone("zsad-tiny"))
    weights["visual.proj"] += 1.0  # differs from the seeded init, so the file must really be read
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        save_file(weights, str(path))
    else:
        torch.save(weights, path)
    loaded = create_backbone(f"zsad-tiny:{path}")
    _assert_same_weights(weights, _state_dict(loaded))


def test_checkpoint_of_another_architecture_is_a_model_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "tiny14.safetensors"
    save_file(_state_dict(create_backbone("zsad-tiny-14")), str(path))
    with pytest.raises(ModelSpecError, match=r"cannot be loaded into architecture 'zsad-tiny'") as info:
        create_backbone(f"zsad-tiny:{path}")
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "name, content",
    [("garbage.safetensors", b"not a safetensors file"), ("garbage.pt", b"not a pickle"), ("keys.pt", None)],
)
def test_checkpoint_that_is_not_a_state_dict_is_a_model_spec_error(tmp_path: Path, name: str, content) -> None:
    path = tmp_path / name
    if content is None:
        torch.save({"unrelated": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ModelSpecError, match="cannot be loaded"):
        create_backbone(f"zsad-tiny:{path}")


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        create_backbone(f"zsad-tiny:{tmp_path / 'absent.safetensors'}")


# ------------------------------------------------------------------------- pieces vs open_clip forward
def test_manual_block_walk_equals_open_clip_forward() -> None:
    backbone = create_backbone("zsad-tiny", image_size=96)
    pixels = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = backbone.plain_pass(pixels)
        x = backbone.visual.ln_pre(backbone.embed_patches(pixels))
        walked = {}
        for index, block in enumerate(backbone.blocks, start=1):
            # q, k, v and the out-projection reproduce the block's nn.MultiheadAttention
            hidden = block.ln_1(x)
            q, k, v = backbone.attention_qkv(block, hidden)
            assert q.shape == (2, 2, 37, 32)
            mine = backbone.attention_output(block, F.scaled_dot_product_attention(q, k, v))
            theirs = block.attn(hidden, hidden, hidden, need_weights=False)[0]
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
            x = block(x)
            walked[index] = x
        standard = backbone.visual(pixels)
    with torch.no_grad():
        stream, pooled = plain.through(8), plain.pooled
    for layer in (2, 5, 8):  # the plain pass every method shares is the block walk (37 tokens: the MHA path)
        assert torch.equal(stream[layer], walked[layer])
    torch.testing.assert_close(pooled, standard, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(backbone.pool(walked[8]), standard, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(backbone.project_tokens(walked[8])[:, 0], standard, rtol=1e-5, atol=1e-5)
    assert torch.equal(pooled, backbone.pool(walked[8]))


def test_text_forward_equals_open_clip_encode_text() -> None:
    backbone = create_backbone("zsad-tiny")
    sentences = ["a photo of a bottle.", "a", "a cropped photo of the damaged bottle with a crack."]
    ids = backbone.tokenize(sentences)
    assert ids.shape == (3, 77)
    with torch.no_grad():
        expected = backbone.model.encode_text(ids)
        torch.testing.assert_close(backbone.text_forward(ids), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(backbone.text_forward(ids, min_length=77), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(backbone.encode_text(sentences, batch_size=2), expected, rtol=1e-5, atol=1e-5)
        calls = []

        def hook(index: int, x: torch.Tensor) -> torch.Tensor:
            calls.append((index, x.shape[1]))
            return x

        torch.testing.assert_close(backbone.text_forward(ids, hook=hook, min_length=20), expected, rtol=1e-5, atol=1e-5)
    assert calls == [(index, 20) for index in range(4)]  # once per text block, at least min_length positions


def test_tokenize_refuses_empty_and_overlong_but_accepts_a_full_context() -> None:
    backbone = create_backbone("zsad-tiny")
    with pytest.raises(PromptError, match="empty"):
        backbone.tokenize(["a photo", "  "])
    with pytest.raises(PromptError, match="longer than"):
        backbone.tokenize([" ".join(["a"] * 76)])
    exactly_full = " ".join(["a"] * 75)  # start + 75 words + end = 77 tokens: fits, nothing is cut
    ids = backbone.tokenize([exactly_full])
    assert int(ids[0].argmax()) == 76


@pytest.mark.parametrize("tokens", [17, 1030])
def test_block_forward_equals_the_block_with_either_attention_kernel(tokens: int) -> None:
    """Below CPU_SDPA_MIN_TOKENS the block's own MHA runs (bitwise block(x)); from it on, SDPA (fp32 rounding)."""
    from zsad_core.backbone import CPU_SDPA_MIN_TOKENS

    backbone = create_backbone("zsad-tiny", device="cpu", precision="fp32")
    block = backbone.blocks[0]
    x = torch.randn(2, tokens, backbone.width, generator=torch.Generator().manual_seed(tokens))
    calls = []
    original = backbone.attention_qkv
    with torch.no_grad(), mock.patch.object(backbone, "attention_qkv", lambda *a: calls.append(1) or original(*a)):
        ours, theirs = backbone.block_forward(block, x), block(x)
    assert len(calls) == (tokens >= CPU_SDPA_MIN_TOKENS)  # SDPA runs on its own q, k, v only for long sequences
    if tokens < CPU_SDPA_MIN_TOKENS:
        assert torch.equal(ours, theirs)
    else:  # the same sums in another order: ~1e-6 of the activations' size (|x| ~ 3 here)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


def test_model_creation_leaves_logging_alone(caplog: pytest.LogCaptureFixture) -> None:
    """Building a random-init model drops only open_clip's "initialized randomly" record, while it builds."""
    root = logging.getLogger()
    before = (logging.root.manager.disable, root.disabled, list(root.filters), root.level)
    clear_backbone_cache()
    with caplog.at_level(logging.WARNING):
        load_backbone(BackboneSpec("zsad-tiny", seed=0))
    assert (logging.root.manager.disable, root.disabled, list(root.filters), root.level) == before
    assert "initialized randomly" not in caplog.text
    assert "zsad-tiny" in open_clip.list_models()  # registered once, at import
