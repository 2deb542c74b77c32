"""Shared fixtures: tiny random-init models, generated images, the real-data location."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
# Gradio's file cache (/tmp/gradio) is shared by every process on the machine, and an app deletes the
# files it made when it closes, even ones another process made at the same path (same content) and
# still serves: each test session gets its own, so two test runs at once cannot break each other.
if "GRADIO_TEMP_DIR" not in os.environ:
    _GRADIO_CACHE = os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="zsad-tests-gradio-")

    def pytest_sessionfinish(session, exitstatus) -> None:
        shutil.rmtree(_GRADIO_CACHE, ignore_errors=True)


# Text features cached on disk (zsad_core.disk_cache) go to a folder of this test session, never to
# the user's ~/.cache; set before anything runs, so subprocesses of the tests inherit it too.
TEST_CACHE_DIR = Path(tempfile.mkdtemp(prefix="zsad-test-cache-"))
os.environ["ZSAD_CACHE_DIR"] = str(TEST_CACHE_DIR)
# One thread: the tests run many tiny ops, where a second thread costs more than it gains (measured).
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session", autouse=True)
def _remove_test_cache_dir():
    yield
    shutil.rmtree(TEST_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


def make_image(height: int = 96, width: int = 128, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A textured random image of the given size and PIL mode."""
    rng = np.random.default_rng(seed)
    base = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    return Image.fromarray(base).convert(mode)


@pytest.fixture
def rgb_image() -> Image.Image:
    return make_image()


# A micro open_clip CLIP config (4-block image tower, so SDP's four stages fit), for training and
# shipping tests that need a real model folder in seconds.
MICRO_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_settings(method_id: str, **settings) -> dict:
    """Tiny backbone matching the method's paper backbone, at 4 x 4 patches to keep tests fast."""
    from zsad_core import get_method

    model = "zsad-tiny-14" if "-14" in get_method(method_id).info.default_model else "zsad-tiny"
    patch = 14 if model == "zsad-tiny-14" else 16
    return {"model": model, "image_size": 4 * patch, "device": "cpu", "precision": "fp32", **settings}


def open_clip_forward(backbone, pixels: torch.Tensor, layers=()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """open_clip's own image forward, an independent reference for the backbone's block walks.

    Returns:
        (B, D) global embedding, and layer (1-based) -> (B, 1+N, C) tokens after that block (CLS first).
    """
    pixels = pixels.to(backbone.dtype)
    if not layers:
        return backbone.visual(pixels), {}
    out = backbone.visual.forward_intermediates(
        pixels, indices=[layer - 1 for layer in layers], output_fmt="NLC", output_extra_tokens=True
    )
    tokens = {
        layer: torch.cat([prefix, patches], dim=1)
        for layer, prefix, patches in zip(layers, out["image_intermediates_prefix"], out["image_intermediates"])
    }
    return out["image_features"], tokens
