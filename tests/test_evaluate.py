"""The evaluation driver: outputs, metrics against scikit-learn, resume, failures, protocols, torchrun."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.measure import label as connected_regions
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from zsad_core import create_detector
from zsad_core.data import load_mask, make_synthetic_dataset, open_dataset
from zsad_core.evaluate import (
    EvaluationError,
    add_eval_arguments,
    evaluate,
    main,
    run_eval,
    select_samples,
    split_data_specs,
)
from zsad_core.methods.base import Detector
from zsad_core.metrics import METRIC_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
MODEL = "zsad-tiny"
SIZE = 64  # 4 x 4 patches: enough for WinCLIP's 3 x 3 windows, small enough to be fast
BATCH = 4
COMMON = {"model": MODEL, "image_size": SIZE, "device": "cpu", "batch_size": BATCH, "progress": False}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _metrics_table(results: dict) -> dict:
    """method -> dataset -> category -> metrics, plus the means (no timings or dates)."""
    return {
        method: {
            key: {"categories": {c: e["metrics"] for c, e in block["categories"].items()}, "mean": block["mean"]}
            for key, block in per_dataset.items()
        }
        for method, per_dataset in results["results"].items()
    }


def _f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.max(f1[np.isfinite(f1)]))


def _cflow_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3, steps: int = 200) -> float:
    """The cflow-ad / April-GAN reference loop, written independently of zsad_core.metrics."""
    low, high = float(maps.min()), float(maps.max())
    delta = (high - low) / steps
    pros, fprs = [], []
    regions = [connected_regions(m) for m in masks]
    for th in low + delta * np.arange(steps):
        binary = maps > th
        overlaps = []
        for b, labelled in zip(binary, regions, strict=True):
            for region_id in range(1, labelled.max() + 1):
                region = labelled == region_id
                overlaps.append(b[region].sum() / region.sum())
        pros.append(np.mean(overlaps))
        fprs.append((binary & ~masks).sum() / (~masks).sum())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < fpr_limit
    kept = fprs[keep]
    return float(auc((kept - kept.min()) / (kept.max() - kept.min()), pros[keep]))


# ----------------------------------------------------------------------------------------------------
# Fixtures: one generated MVTec-layout dataset evaluated once with both methods
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("toy") / "mvtec"
    return make_synthetic_dataset(
        root, "mvtec", categories=["widget", "metal_nut"], n_good=3, n_bad=4, size=(56, 72), defects=("blob", "scratch")
    )


@pytest.fixture(scope="module")
def toy_run(toy_spec: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("toy_out")
    results = evaluate(["winclip", "sdp"], toy_spec, out, **COMMON)
    return out, results


# ----------------------------------------------------------------------------------------------------
# Helpers with no model
# ----------------------------------------------------------------------------------------------------


def test_split_data_specs_keeps_commas_inside_paths() -> None:
    assert split_data_specs("mvtec:/a,visa:/b") == ["mvtec:/a", "visa:/b"]
    assert split_data_specs(["mvtec:/x,y", "folder:/z"]) == ["mvtec:/x,y", "folder:/z"]


def test_select_samples_keeps_both_labels_and_order(tmp_path: Path) -> None:
    ds = open_dataset(make_synthetic_dataset(tmp_path, "mvtec", n_good=5, n_bad=9, size=16))
    samples = ds.samples["widget"]
    chosen = select_samples(samples, 6)
    assert len(chosen) == 6
    assert sum(s.label == 0 for s in chosen) == 3
    assert [samples.index(s) for s in chosen] == sorted(samples.index(s) for s in chosen)
    assert select_samples(samples, 100) == samples
    topped_up = select_samples(samples, 12)  # 6 + 6 asked, only 5 normal: one more anomalous image
    assert (sum(s.label == 0 for s in topped_up), sum(s.label == 1 for s in topped_up)) == (5, 7)


# ----------------------------------------------------------------------------------------------------
# End to end on generated data
# ----------------------------------------------------------------------------------------------------


def test_results_json_structure(toy_run: tuple[Path, dict]) -> None:
    out, results = toy_run
    assert json.loads((out / "results.json").read_text()) == results
    assert results["settings"]["protocol"] == "model_map"
    assert results["settings"]["aupro_variant"] == "cflow"
    assert results["methods"]["winclip"]["model"] == MODEL
    assert results["methods"]["sdp"]["image_size"] == SIZE
    assert results["counts"] == {"images": 2 * 14, "failed": 0, "categories": 4, "resumed_categories": 0}
    for method in ("winclip", "sdp"):
        block = results["results"][method]["mvtec"]
        assert block["image_metrics"] and block["pixel_metrics"] and block["notes"] == []
        assert list(block["categories"]) == ["metal_nut", "widget"]
        for entry in block["categories"].values():
            assert set(entry["metrics"]) == set(METRIC_NAMES)
            assert all(0.0 <= v <= 1.0 for v in entry["metrics"].values())
            counts = (entry["num_images"], entry["num_normal"], entry["num_anomalous"], entry["num_failed"])
            assert counts == (7, 3, 4, 0)
            assert entry["pixel_metrics_exact"] is True and entry["resumed"] is False
        for name in METRIC_NAMES:
            expected = np.mean([e["metrics"][name] for e in block["categories"].values()])
            assert block["mean"][name] == pytest.approx(expected, abs=1e-12)
    partial = sorted(p.name for p in (out / "partial").iterdir())
    assert partial == [f"mvtec__{m}__{c}.json" for m in ("sdp", "winclip") for c in ("metal_nut", "widget")]


def test_results_md_and_scores_csv(toy_run: tuple[Path, dict]) -> None:
    out, results = toy_run
    text = (out / "results.md").read_text()
    assert "## Summary (mean over categories)" in text
    assert "## winclip on mvtec (zsad-tiny @ 64)" in text and "## sdp on mvtec (zsad-tiny @ 64)" in text
    assert "| Category | I-AUROC | I-AP | I-F1max | P-AUROC | P-AP | P-F1max | P-AUPRO |" in text
    auroc = results["results"]["sdp"]["mvtec"]["categories"]["widget"]["metrics"]["image_auroc"]
    assert f"| widget | {100 * auroc:.1f} |" in text
    assert text.count("| **mean** |") == 2
    rows = _read_csv(out / "scores.csv")
    assert len(rows) == 2 * 14
    assert list(rows[0]) == [
        "method", "dataset", "category", "path", "label", "defect", "score", "raw_score", "status", "error",
        "p_cls", "p_max",
    ]  # fmt: skip
    sdp_rows = [r for r in rows if r["method"] == "sdp"]
    assert all(r["p_cls"] and r["p_max"] and r["status"] == "ok" for r in sdp_rows)
    assert all(r["p_cls"] == "" for r in rows if r["method"] == "winclip")
    winclip_rows = [r for r in rows if r["method"] == "winclip"]
    assert all(float(r["score"]) == float(r["raw_score"]) for r in winclip_rows)


@pytest.mark.parametrize("method", ["winclip", "sdp"])
def test_metrics_equal_direct_sklearn_computation(toy_spec: str, toy_run: tuple[Path, dict], method: str) -> None:
    out, results = toy_run
    ds = open_dataset(toy_spec)
    category = "widget"
    samples = ds.samples[category]
    detector = create_detector(method, model=MODEL, image_size=SIZE, device="cpu").prepare(ds.prompt_name(category))
    found = detector.detect([s.image_path for s in samples], batch_size=BATCH)
    maps = np.stack([r.model_map for r in found])
    masks = np.stack([load_mask(s.mask_path, size=(SIZE, SIZE)) for s in samples])
    labels = np.array([s.label for s in samples])
    scores = detector.dataset_scores(found)
    got = results["results"][method]["mvtec"]["categories"][category]["metrics"]
    expected = {
        "image_auroc": roc_auc_score(labels, scores),
        "image_ap": average_precision_score(labels, scores),
        "image_f1max": _f1_max(labels, scores),
        "pixel_auroc": roc_auc_score(masks.ravel(), maps.ravel()),
        "pixel_ap": average_precision_score(masks.ravel(), maps.ravel()),
        "pixel_f1max": _f1_max(masks.ravel(), maps.ravel()),
        "pixel_aupro": _cflow_aupro(masks, maps),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    csv_scores = [
        float(r["score"]) for r in _read_csv(out / "scores.csv") if r["method"] == method and r["category"] == category
    ]
    np.testing.assert_allclose(csv_scores, scores, rtol=0, atol=1e-12)


def test_resume_skips_finished_categories(
    toy_spec: str, toy_run: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_out, first = toy_run
    out = tmp_path / "resumed"
    (out / "partial").mkdir(parents=True)
    for partial in (first_out / "partial").iterdir():
        if partial.name != "mvtec__sdp__widget.json":  # as if the first run stopped before this one
            (out / "partial" / partial.name).write_bytes(partial.read_bytes())
    seen: list[str] = []
    original = Detector.detect

    def counting(self: Detector, images, batch_size=None):  # noqa: ANN001
        seen.append(f"{self.method_id}:{self.category}:{len(images)}")
        return original(self, images, batch_size)

    monkeypatch.setattr(Detector, "detect", counting)
    results = evaluate(["winclip", "sdp"], toy_spec, out, resume=True, **COMMON)
    assert seen == ["sdp:widget:4", "sdp:widget:3"]  # 7 images in batches of 4
    assert results["counts"]["resumed_categories"] == 3
    assert results["results"]["sdp"]["mvtec"]["categories"]["widget"]["resumed"] is False
    assert results["results"]["winclip"]["mvtec"]["categories"]["widget"]["resumed"] is True
    assert _metrics_table(results) == _metrics_table(first)
    assert _read_csv(out / "scores.csv") == _read_csv(first_out / "scores.csv")

    seen.clear()  # everything finished: nothing is recomputed
    again = evaluate(["winclip", "sdp"], toy_spec, out, resume=True, **COMMON)
    assert seen == [] and _metrics_table(again) == _metrics_table(first)


def test_resume_with_other_settings_is_a_clear_error(
    toy_spec: str, toy_run: tuple[Path, dict], capsys: pytest.CaptureFixture
) -> None:
    out, _ = toy_run
    with pytest.raises(EvaluationError, match=r"image_size=64 there, 96 now"):
        evaluate(["winclip"], toy_spec, out, resume=True, **{**COMMON, "image_size": 96})
    argv = ["--methods", "winclip", "--data", toy_spec, "--out", str(out), "--model", MODEL, "--image-size", str(SIZE)]
    assert main([*argv, "--resume", "--full-resolution", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume") and "protocol='model_map' there, 'full_resolution' now" in err
    assert "Traceback" not in err


def test_resume_refuses_partials_computed_with_another_method_setting(
    toy_spec: str, toy_run: tuple[Path, dict], tmp_path: Path
) -> None:
    """Every setting of the method is recorded, not only the run's options: e.g. a partial computed
    under another resize policy (an older default) is not mixed into the new run."""
    first_out, _ = toy_run
    out = tmp_path / "resumed"
    shutil.copytree(first_out / "partial", out / "partial")
    partial = out / "partial" / "mvtec__sdp__widget.json"
    data = json.loads(partial.read_text())
    assert data["settings"]["resize"] == "pil-bicubic" and data["settings"]["round_text_fp16"] is True
    data["settings"]["resize"] = "tensor-bicubic"
    partial.write_text(json.dumps(data))
    with pytest.raises(EvaluationError, match=r"resize='tensor-bicubic' there, 'pil-bicubic' now"):
        evaluate(["sdp"], toy_spec, out, resume=True, **COMMON)


def test_usage_errors_exit_2_without_traceback(toy_spec: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    base = ["--out", str(tmp_path), "--model", MODEL, "--no-progress"]
    cases = {
        "unknown method": (["--methods", "nope", "--data", toy_spec], "unknown method"),
        "bad spec": (["--methods", "winclip", "--data", "nosuchformat:/x"], "unknown dataset format"),
        "missing path": (["--methods", "winclip", "--data", f"mvtec:{tmp_path}/absent"], "does not exist"),
        "unknown category": (["--methods", "winclip", "--data", toy_spec, "--categories", "bottle"], "bottle"),
        "bad size": (["--methods", "winclip", "--data", toy_spec, "--image-size", "0"], "image size"),
        "no checkpoint": (["--methods", "winclip", "--data", toy_spec, "--checkpoint", "x.pt"], "checkpoint"),
    }
    for name, (argv, message) in cases.items():
        assert run_eval(parser.parse_args(argv + base)) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, (name, err)


def test_categories_filter_and_two_datasets(tmp_path: Path) -> None:
    first = make_synthetic_dataset(tmp_path / "a", "mvtec", categories=["bottle", "cable"], n_good=2, n_bad=2, size=32)
    second = make_synthetic_dataset(tmp_path / "b", "visa", categories=["candle"], n_good=2, n_bad=2, size=32)
    results = evaluate("winclip", f"{first},{second}", tmp_path / "out", categories="cable,candle", **COMMON)
    blocks = results["results"]["winclip"]
    assert list(blocks) == ["mvtec", "visa"]
    assert list(blocks["mvtec"]["categories"]) == ["cable"] and list(blocks["visa"]["categories"]) == ["candle"]
    assert "## winclip on visa" in (tmp_path / "out" / "results.md").read_text()


# ----------------------------------------------------------------------------------------------------
# Datasets without masks, broken images, full resolution
# ----------------------------------------------------------------------------------------------------


def test_folder_without_masks_reports_image_metrics_only(tmp_path: Path) -> None:
    spec = make_synthetic_dataset(tmp_path / "plain", "folder", categories=["part"], n_good=3, n_bad=3, masks=False)
    results = evaluate("winclip", spec, tmp_path / "out", **COMMON)
    block = results["results"]["winclip"]["folder"]
    assert block["image_metrics"] and not block["pixel_metrics"]
    assert any("pixel metrics not computed" in note for note in block["notes"])
    metrics = block["categories"]["part"]["metrics"]
    assert all(metrics[n] is not None for n in ("image_auroc", "image_ap", "image_f1max"))
    assert all(metrics[n] is None for n in ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"))
    assert block["mean"]["pixel_auroc"] is None
    text = (tmp_path / "out" / "results.md").read_text()
    assert "| Category | I-AUROC | I-AP | I-F1max |\n" in text  # no pixel columns in the per-dataset table
    assert "pixel metrics not computed" in text


def test_pixel_only_dataset_reports_pixel_metrics_only(tmp_path: Path) -> None:
    spec = make_synthetic_dataset(tmp_path / "isic", "isic", n_bad=4, size=48)
    results = evaluate("sdp", spec, tmp_path / "out", **COMMON)
    block = results["results"]["sdp"]["isic"]
    assert not block["image_metrics"] and block["pixel_metrics"]
    metrics = block["categories"]["isic"]["metrics"]
    assert metrics["image_auroc"] is None and metrics["pixel_auroc"] is not None


def test_corrupt_image_is_recorded_and_the_rest_completes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = make_synthetic_dataset(tmp_path / "data", "mvtec", n_good=3, n_bad=3, size=48)
    broken = sorted((tmp_path / "data" / "widget" / "test" / "blob").iterdir())[0]
    broken.write_bytes(b"this is not a PNG file")
    out = tmp_path / "out"
    code = main(["--methods", "winclip,sdp", "--data", spec, "--out", str(out), "--model", MODEL,
                 "--image-size", str(SIZE), "--batch-size", "2", "--no-progress"])  # fmt: skip
    assert code == 1
    results = json.loads((out / "results.json").read_text())
    assert results["counts"]["failed"] == 2  # one image, two methods
    entry = results["results"]["winclip"]["mvtec"]["categories"]["widget"]
    assert entry["num_failed"] == 1 and entry["num_images"] == 6
    assert entry["failures"][0]["path"] == str(broken) and "not an image" in entry["failures"][0]["error"]
    assert all(v is not None for v in entry["metrics"].values())  # 5 good images still measured
    rows = [r for r in _read_csv(out / "scores.csv") if r["path"] == str(broken)]
    assert [r["status"] for r in rows] == ["failed", "failed"] and all(r["score"] == "" for r in rows)
    assert "(1 failed)" in (out / "results.md").read_text()
    assert "1 image(s) failed" in capsys.readouterr().err


def test_full_resolution_uses_maps_at_image_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_synthetic_dataset(tmp_path / "data", "mvtec", n_good=2, n_bad=3, size=(40, 90))
    shapes: list[tuple] = []
    from zsad_core.metrics import PixelMetricAccumulator

    original = PixelMetricAccumulator.update

    def recording(self, masks, maps):  # noqa: ANN001
        shapes.extend((np.shape(m), np.shape(a)) for m, a in zip(masks, maps, strict=True))
        return original(self, masks, maps)

    monkeypatch.setattr(PixelMetricAccumulator, "update", recording)
    results = evaluate("sdp", spec, tmp_path / "out", full_resolution=True, aupro_variant="official", **COMMON)
    assert results["settings"]["protocol"] == "full_resolution" and results["settings"]["aupro_variant"] == "mvtec"
    assert shapes == [((40, 90), (40, 90))] * 5
    metrics = results["results"]["sdp"]["mvtec"]["categories"]["widget"]["metrics"]
    assert all(v is not None for v in metrics.values())
    assert "full resolution" in (tmp_path / "out" / "results.md").read_text()


# ----------------------------------------------------------------------------------------------------
# torchrun: two gloo processes give the same numbers as one
# ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(tmp_path: Path) -> None:
    spec = make_synthetic_dataset(
        tmp_path / "data", "mvtec", categories=["widget", "gadget"], n_good=4, n_bad=5, size=48, defects=("a", "b")
    )
    broken = sorted((tmp_path / "data" / "gadget" / "test" / "a").iterdir())[1]
    broken.write_bytes(b"")  # an empty file on one rank: must be handled identically
    args = ["--methods", "winclip,sdp", "--data", spec, "--model", MODEL, "--image-size", str(SIZE),
            "--batch-size", "2", "--device", "cpu", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    outputs = {}
    for processes in (1, 2):
        out = tmp_path / f"out{processes}"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(processes), "-m", "zsad_core.evaluate", *args, "--out", str(out)]  # fmt: skip
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 1, done.stderr[-3000:]  # 1: the broken image is reported as failed
        outputs[processes] = out
    one = json.loads((outputs[1] / "results.json").read_text())
    two = json.loads((outputs[2] / "results.json").read_text())
    assert two["settings"]["world_size"] == 2 and one["settings"]["world_size"] == 1
    assert _metrics_table(two) == _metrics_table(one)  # identical, not approximately equal
    assert two["counts"] == one["counts"] and one["counts"]["failed"] == 2
    assert _read_csv(outputs[2] / "scores.csv") == _read_csv(outputs[1] / "scores.csv")
    assert sorted(p.name for p in outputs[2].iterdir()) == ["partial", "results.json", "results.md", "scores.csv"]


# ----------------------------------------------------------------------------------------------------
# Real images (skipped when ../shared/datasets is absent)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.real_data
@pytest.mark.slow
def test_real_tire_full_category(tmp_path: Path) -> None:
    root = SHARED_DATASETS / "mvtec3d_tire"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    began = time.perf_counter()
    results = evaluate("sdp", f"mvtec:{root}", tmp_path, model=MODEL, image_size=112, device="cpu", progress=False)
    seconds = time.perf_counter() - began
    entry = results["results"]["sdp"]["mvtec"]["categories"]["tire"]
    assert (entry["num_images"], entry["num_normal"], entry["num_anomalous"], entry["num_failed"]) == (112, 25, 87, 0)
    assert all(v is not None and 0.0 <= v <= 1.0 for v in entry["metrics"].values())
    assert len(_read_csv(tmp_path / "scores.csv")) == 112
    print(f"tire, 112 images, sdp zsad-tiny @112: {seconds:.1f} s")


@pytest.mark.real_data
def test_real_tire_both_methods_limited(tmp_path: Path) -> None:
    root = SHARED_DATASETS / "mvtec3d_tire"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    results = evaluate(
        ["winclip", "sdp"], f"mvtec:{root}", tmp_path, model=MODEL, limit=6, device="cpu", progress=False
    )
    for method in ("winclip", "sdp"):
        entry = results["results"][method]["mvtec"]["categories"]["tire"]
        assert (entry["num_images"], entry["num_normal"], entry["num_anomalous"]) == (6, 3, 3)
        assert all(v is not None for v in entry["metrics"].values())
    assert results["methods"]["winclip"]["image_size"] == 240  # the paper size by default
    defects = {r["defect"] for r in _read_csv(tmp_path / "scores.csv")}
    assert len(defects) >= 3  # the limited picks spread over defect types


@pytest.mark.real_data
@pytest.mark.parametrize("fmt", ["brainmri", "folder"])
def test_real_brainmri_image_level(tmp_path: Path, fmt: str) -> None:
    root = SHARED_DATASETS / "brainmri"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    results = evaluate("winclip", f"{fmt}:{root}", tmp_path, limit=6, **COMMON)
    block = results["results"]["winclip"][fmt]
    assert block["image_metrics"] and not block["pixel_metrics"]
    entry = block["categories"]["brainmri"]
    assert entry["num_images"] == 6 and entry["num_failed"] == 0
    assert entry["metrics"]["image_auroc"] is not None and entry["metrics"]["pixel_auroc"] is None


def test_no_stray_process_group() -> None:
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
