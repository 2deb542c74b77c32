"""Models the project trains and ships inside the package (``zsad_core/pretrained/<name>/``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import MICRO_CLIP_CONFIG, make_image

from zsad_core import backbone as backbone_module
from zsad_core import create_detector
from zsad_core.availability import (
    available_models,
    is_random_weights,
    method_status,
    model_status,
    offline_default_model,
)
from zsad_core.backbone import list_project_models, loadable_name
from zsad_core.cli import main
from zsad_core.clip_training import build_clip, save_model_folder

MICRO = MICRO_CLIP_CONFIG
UNTRAINED_OK = pytest.mark.filterwarnings("ignore:.*no checkpoint loaded:UserWarning")


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch) -> Path:
    """A package folder of project models holding one micro model, ``zsad-micro``."""
    root = tmp_path / "pretrained"
    save_model_folder(build_clip(MICRO, seed=3), MICRO, root / "zsad-micro", {"format": "test"})
    (root / "incomplete").mkdir()
    (root / "incomplete" / "open_clip_config.json").write_text(json.dumps({"model_cfg": MICRO}))
    monkeypatch.setattr(backbone_module, "PROJECT_MODELS_DIR", root)
    monkeypatch.setenv("ZSAD_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    backbone_module.clear_backbone_cache()
    yield root / "zsad-micro"
    backbone_module.clear_backbone_cache()


def test_a_shipped_model_is_found_by_name_and_is_not_random(shipped: Path) -> None:
    assert list_project_models() == ["zsad-micro"]  # the folder without weights is not a model
    assert loadable_name("zsad-micro") == f"local-dir:{shipped}" and loadable_name("zsad-tiny") == "zsad-tiny"
    status = model_status("zsad-micro")
    assert status.available and not status.random_weights and not is_random_weights("zsad-micro")
    assert [s.model for s in available_models()] == ["zsad-micro", "zsad-tiny", "zsad-tiny-14"]
    assert offline_default_model() == "zsad-micro"
    result = create_detector("winclip", model="zsad-micro", image_size=32, device="cpu").prepare("cap").detect(
        make_image(20, 30)
    )
    assert result.anomaly_map.shape == (20, 30)
    same = create_detector("winclip", model=f"local-dir:{shipped}", image_size=32, device="cpu").prepare("cap")
    assert same.detect(make_image(20, 30)).score == pytest.approx(result.score, abs=1e-6)  # the shipped weights


@UNTRAINED_OK
def test_checkpoints_shipped_beside_a_project_model_are_offered(shipped: Path) -> None:
    assert not method_status("sdp_plus", "zsad-micro", 32).available
    create_detector("sdp_plus", model="zsad-micro", image_size=32, device="cpu").save_checkpoint(
        shipped / "sdp_plus.safetensors"
    )
    status = method_status("sdp_plus", "zsad-micro", 32)
    assert status.available and status.checkpoints[0].source == str(shipped / "sdp_plus.safetensors")


def test_without_model_the_cli_falls_back_to_the_shipped_model(shipped: Path, tmp_path: Path, capsys) -> None:
    picture = tmp_path / "shot.png"
    make_image(24, 40).save(picture)
    status = main(["detect", str(picture), "--category", "cap", "--methods", "winclip", "--image-size", "32",
                   "--device", "cpu", "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 0
    assert "winclip's paper backbone ViT-B-16-plus-240:laion400m_e31 is not on this disk" in err
    assert "using the project's own zsad-micro" in err
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["images"][0]["status"] == "ok"
    assert np.load(tmp_path / "out" / "shot__winclip.npy").shape == (24, 40)


@UNTRAINED_OK
def test_proving_ground_table_compares_the_shipped_model_with_random_weights(shipped: Path, tmp_path: Path) -> None:
    from zsad_core.proving_ground import run_proving_ground

    table = run_proving_ground(tmp_path / "pg", "zsad-micro", ["winclip", "sdp_plus"], per_category=1, size=48)
    rows = {(row["method"], row["weights"]): row for row in table["rows"]}
    assert set(rows) == {("winclip", "trained"), ("winclip", "random"), ("sdp_plus", "trained"), ("sdp_plus", "random")}
    assert rows[("sdp_plus", "trained")]["error"] == "no checkpoint for zsad-micro"  # nothing shipped beside it
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        assert 0.0 <= rows[("winclip", "trained")][key] <= 1.0
    assert rows[("winclip", "trained")]["pixel_auroc"] != rows[("winclip", "random")]["pixel_auroc"]
    text = (tmp_path / "pg" / "table.md").read_text()
    assert text.splitlines()[0].startswith("| method | weights | I-AUROC")
    assert "| sdp_plus | trained | – |" in text
    data = tmp_path / "pg" / "data"
    assert sorted(p.name for p in data.iterdir() if p.is_dir()) == sorted(table["categories"])
