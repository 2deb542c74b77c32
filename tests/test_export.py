"""Exported models (ONNX through onnxruntime, torch.export programs) against the eager models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_settings

from zsad_core import create_detector
from zsad_core.cli import main
from zsad_core.export import NotExportableError, export_detector, run_onnx, run_torch_export

# Each method's settings for a tiny export: small maps, and AdaCLIP with the device k-means.
EXPORT_SETTINGS = {
    "winclip": {"image_size": 48},
    "sdp": {"image_size": 32},
    "sdp_plus": {"image_size": 32},
    "adaclip": {"image_size": 28, "hsf_kmeans": "torch", "hsf_clusters": 2},
}
# fp32 graphs re-ordered by the exporter's and onnxruntime's kernels: ~1e-6 relative per
# matmul chain; maps lie in [0, 1] (WinCLIP, AdaCLIP) or within +-12 (SDP, SDP+ on random weights).
MAP_TOLERANCE = 2e-5
SCORE_TOLERANCE = 1e-5


def _detector(method: str):
    return create_detector(method, **tiny_settings(method, **EXPORT_SETTINGS[method])).prepare("bottle")


def _pixels(detector, batch: int, seed: int = 3) -> torch.Tensor:
    size = detector.config.image_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", list(EXPORT_SETTINGS))
def test_onnx_export_matches_eager(method: str, tmp_path: Path) -> None:
    detector = _detector(method)
    check = _pixels(detector, 2, seed=1)
    result = export_detector(detector, tmp_path / f"{method}.onnx", "onnx", batch_size=2, check_pixels=check)
    assert result.max_map_difference < MAP_TOLERANCE and result.max_score_difference < SCORE_TOLERANCE
    # Another batch than the one exported with, through onnxruntime, against the eager model.
    other = _pixels(detector, 2, seed=7)
    scores, maps = run_onnx(result.path, other)
    eager = detector.predict(other)
    np.testing.assert_allclose(maps, eager.maps, rtol=0, atol=MAP_TOLERANCE)
    np.testing.assert_allclose(scores, eager.scores, rtol=0, atol=SCORE_TOLERANCE)
    assert np.ptp(maps) > 1e-3  # not two flat maps agreeing trivially
    metadata = {entry.key: entry.value for entry in onnx.load(str(result.path)).metadata_props}
    assert metadata["method"] == method and metadata["category"] == "bottle"
    assert json.loads(metadata["mean"]) == pytest.approx([0.48145466, 0.4578275, 0.40821073])


@pytest.mark.parametrize("method", ["sdp_plus", "adaclip"])
def test_torch_export_matches_eager(method: str, tmp_path: Path) -> None:
    detector = _detector(method)
    result = export_detector(detector, tmp_path / f"{method}.pt2", "torch-export", batch_size=1)
    assert result.max_map_difference < MAP_TOLERANCE
    other = _pixels(detector, 1, seed=11)
    scores, maps = run_torch_export(result.path, other)
    eager = detector.predict(other)
    np.testing.assert_allclose(maps.numpy(), eager.maps, rtol=0, atol=MAP_TOLERANCE)
    np.testing.assert_allclose(scores.numpy(), eager.scores, rtol=0, atol=SCORE_TOLERANCE)


def test_adaclip_with_host_kmeans_is_refused_naming_the_setting(tmp_path: Path) -> None:
    detector = create_detector("adaclip", **tiny_settings("adaclip", image_size=28)).prepare("bottle")
    with pytest.raises(NotExportableError, match="hsf_kmeans='torch'"):
        export_detector(detector, tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()
    unprepared = create_detector("sdp", **tiny_settings("sdp", image_size=32))
    with pytest.raises(NotExportableError, match="prepare"):
        export_detector(unprepared, tmp_path / "b.onnx")


def test_export_command_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sdp.onnx"
    status = main(
        ["export", "--method", "sdp", "--model", "zsad-tiny", "--image-size", "32", "--category", "cable",
         "--set", "sigma=2", "--out", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 0 and out.is_file()
    assert "max |map difference|" in printed and "category 'cable'" in printed
    metadata = {entry.key: entry.value for entry in onnx.load(str(out)).metadata_props}
    assert json.loads(metadata["settings"])["sigma"] == 2
    status = main(["export", "--method", "sdp", "--model", "zsad-tiny", "--category", "x", "--set", "nonsense=1",
                   "--out", str(tmp_path / "n.onnx")])  # fmt: skip
    assert status == 2 and "nonsense" in capsys.readouterr().err
