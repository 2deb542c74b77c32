"""The comparison service (pool, prepared copies, runs that survive failures), availability and the archive."""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from zsad_core import backbone as backbone_module
from zsad_core import compare as compare_module
from zsad_core import create_detector
from zsad_core.archive import safe_stems, score_rows, write_archive
from zsad_core.availability import available_models, is_random_weights, method_status, model_status
from zsad_core.compare import DetectorPool, decode_images, run_comparison
from zsad_core.methods.base import Detector
from zsad_core.prompts import PromptError

UNTRAINED_OK = pytest.mark.filterwarnings("ignore:.*no checkpoint loaded:UserWarning")
TINY = "zsad-tiny"


@pytest.fixture(scope="module")
def pool() -> DetectorPool:
    return DetectorPool(device="cpu", precision="fp32")


# ------------------------------------------------------------------------------------ the pool
def test_pool_builds_once_and_evicts_with_the_unused_backbone() -> None:
    pool = DetectorPool(max_detectors=1, device="cpu")
    first = pool.get("winclip", TINY)
    assert pool.get("winclip", TINY) is first and pool.builds == 1
    spec = first.backbone.spec
    assert spec in backbone_module._CACHE
    pool.get("winclip", "zsad-tiny-14")  # another backbone: the first detector and its backbone go
    assert len(pool) == 1 and pool.builds == 2
    assert spec not in backbone_module._CACHE
    assert pool.get("winclip", TINY) is not first and pool.builds == 3
    with pytest.raises(ValueError, match="at least 1"):
        DetectorPool(max_detectors=0)


def test_pool_keeps_a_backbone_another_detector_still_uses() -> None:
    pool = DetectorPool(max_detectors=1, device="cpu")
    spec = pool.get("sdp", TINY).backbone.spec
    pool.get("winclip", TINY)  # same backbone spec (same model, size 240, GELU)
    assert spec in backbone_module._CACHE


def test_expected_seconds_is_the_median_of_recent_runs() -> None:
    pool = DetectorPool(device="cpu")
    assert pool.expected_seconds("winclip", TINY) is None
    for seconds in (5.0, 1.0, 3.0, 100.0, 2.0):
        pool.record_seconds("winclip", TINY, seconds)
    assert pool.expected_seconds("winclip", TINY) == 3.0
    for _ in range(20):
        pool.record_seconds("winclip", TINY, 0.5)  # only the last 20 count
    assert pool.expected_seconds("winclip", TINY) == 0.5


def test_prepared_copies_share_weights_but_not_the_category() -> None:
    base = create_detector("winclip", model=TINY, image_size=64)
    bottle = base.prepared("bottle")
    screw = base.prepared("screw", abnormal_states=["scratched"])
    assert base.category is None and bottle.category == "bottle" and screw.category == "screw"
    assert bottle.backbone is base.backbone is screw.backbone
    image = make_image(40, 60)
    fresh = create_detector("winclip", model=TINY, image_size=64).prepare("bottle").detect(image)
    assert bottle.detect(image).score == fresh.score  # the copy computes exactly what a fresh detector does
    assert screw.detect(image).score != fresh.score


# ------------------------------------------------------------------------------------------ runs
@UNTRAINED_OK
def test_run_keeps_good_results_beside_bad_images_and_unavailable_methods(pool: DetectorPool) -> None:
    good_a, good_b = make_image(50, 70, seed=1), make_image(64, 48, seed=2)
    updates: list[tuple[float, str]] = []
    run = run_comparison(
        pool,
        [("a.png", good_a), ("broken.png", b"not an image"), ("b.png", good_b)],
        ["winclip", "sdp", "adaclip"],
        "  metal   nut ",
        model=TINY,
        progress=lambda fraction, message: updates.append((fraction, message)),
    )
    assert run.category == "metal nut"
    assert [image.name for image in run.images] == ["a.png", "broken.png", "b.png"]
    assert run.images[1].picture is None and "broken.png" in run.images[1].error
    assert "not an image" in run.images[1].error or "cannot read" in run.images[1].error
    assert "no trained checkpoint for zsad-tiny" in run.method_errors["adaclip"]
    assert run.succeeded_methods == ["winclip", "sdp"]
    for image, picture in ((run.images[0], good_a), (run.images[2], good_b)):
        assert set(image.results) == {"winclip", "sdp"} and not image.errors
        direct = create_detector("sdp", model=TINY, device="cpu").prepare("metal nut").detect(picture)
        assert image.results["sdp"].score == pytest.approx(direct.score, rel=1e-6)
        assert image.results["sdp"].anomaly_map.shape == (picture.height, picture.width)
        assert image.results["winclip"].evidence is not None
    fractions = [fraction for fraction, _ in updates]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("image 2 of 2 (b.png)" in message for _, message in updates)
    messages = run.messages()
    assert any(line.startswith("adaclip: no trained checkpoint") for line in messages)
    assert any("broken.png" in line for line in messages)
    assert set(run.seconds_per_image()) == {"winclip", "sdp"}
    assert run.settings["methods"]["sdp"]["normal_states"][0] == "flawless {}"
    assert run.settings["methods"]["winclip"]["model"] == TINY and "adaclip" not in run.settings["methods"]
    assert run.settings["versions"]["zsad"]


def test_run_reports_one_failing_image_and_goes_on(pool: DetectorPool, monkeypatch) -> None:
    original = Detector.run_batch
    calls = []

    def flaky(self, pixels, sizes, **kwargs):
        calls.append(sizes)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, pixels, sizes, **kwargs)

    monkeypatch.setattr(Detector, "run_batch", flaky)
    run = run_comparison(
        pool, [("a.png", make_image(seed=3)), ("b.png", make_image(seed=4))], ["winclip"], "cap", model=TINY
    )
    assert run.images[0].errors["winclip"].startswith("out of memory")
    assert "winclip" in run.images[1].results


def test_run_with_custom_prompts_and_bad_prompts(pool: DetectorPool) -> None:
    run = run_comparison(
        pool,
        [("a.png", make_image(seed=3))],
        ["sdp"],
        "pill",
        model=TINY,
        abnormal_states=["cracked", "{} with a hole"],
        templates=["a photo of a {}."],
    )
    settings = run.settings["methods"]["sdp"]
    assert settings["abnormal_states"] == ["cracked {}", "{} with a hole"]
    assert settings["templates"] == ["a photo of a {}."] and len(settings["normal_states"]) == 9
    with pytest.raises(PromptError, match="category is empty"):
        run_comparison(pool, [("a.png", make_image())], ["sdp"], "   ", model=TINY)
    with pytest.raises(PromptError, match="template"):
        run_comparison(pool, [("a.png", make_image())], ["sdp"], "pill", model=TINY, templates=["no placeholder"])


def test_large_pictures_are_reduced_and_maps_follow(pool: DetectorPool) -> None:
    run = run_comparison(
        pool, [("wide.png", make_image(100, 300, seed=6))], ["winclip"], "board", model=TINY, max_side=120
    )
    image = run.images[0]
    assert image.original_size == (300, 100) and image.picture.size == (120, 40)
    assert image.results["winclip"].anomaly_map.shape == (40, 120)


def test_a_missing_backbone_is_a_method_error_not_a_crash(pool: DetectorPool) -> None:
    run = run_comparison(pool, [("a.png", make_image())], ["winclip", "sdp"], "bottle", model="ViT-B-16:/no/such.pt")
    assert set(run.method_errors) == {"winclip", "sdp"}
    assert "does not exist" in run.method_errors["winclip"]


# ---------------------------------------------------------------------------------- availability
def test_model_and_method_availability_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ZSAD_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_status(TINY).available and model_status(TINY).random_weights and is_random_weights(TINY)
    paper = model_status("ViT-B-16-plus-240:laion400m_e31")
    assert not paper.available and "not on this disk" in paper.reason
    assert not model_status("no-such-arch").available
    assert not model_status("local-dir:/no/such/folder").available
    assert [status.model for status in available_models()] == ["zsad-toy", "zsad-tiny", "zsad-tiny-14"]
    assert method_status("winclip", TINY).available
    assert not method_status("winclip").available  # its paper backbone is not here
    status = method_status("sdp_plus", TINY)
    assert not status.available and "no trained checkpoint for zsad-tiny at 240 px" in status.reason


@UNTRAINED_OK
def test_a_trained_checkpoint_in_the_weights_folder_makes_a_learnable_method_available(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ZSAD_WEIGHTS_DIR", str(tmp_path))
    detector = create_detector("sdp_plus", model=TINY, device="cpu")
    detector.save_checkpoint(tmp_path / "runs" / "sdp_plus_tiny.safetensors")
    other_size = create_detector("sdp_plus", model=TINY, image_size=64, device="cpu")
    other_size.save_checkpoint(tmp_path / "sdp_plus_tiny_64.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")  # unreadable: skipped, not fatal
    status = method_status("sdp_plus", TINY)
    assert status.available
    assert [choice.source for choice in status.checkpoints] == [str(tmp_path / "runs" / "sdp_plus_tiny.safetensors")]
    assert not method_status("adaclip", TINY).available  # a checkpoint of another method does not count
    run = run_comparison(DetectorPool(device="cpu"), [("a.png", make_image())], ["sdp_plus"], "cap", model=TINY)
    assert "sdp_plus" in run.images[0].results and not run.method_errors
    assert run.settings["methods"]["sdp_plus"]["checkpoint"] == str(tmp_path / "runs" / "sdp_plus_tiny.safetensors")


# --------------------------------------------------------------------------------------- archive
def test_archive_holds_every_overlay_raw_map_score_and_setting(pool: DetectorPool, tmp_path: Path) -> None:
    pictures = [make_image(37, 81, seed=7), make_image(50, 20, seed=8)]
    run = run_comparison(
        pool,
        [("shot 1.png", pictures[0]), ("bad.png", b""), ("sub/shot 1.png", pictures[1])],
        ["winclip", "sdp", "adaclip"],
        "bottle",
        model=TINY,
    )
    path = write_archive(run, tmp_path / "out.zip", extra_settings={"app": {"gradio": "6"}})
    assert path == tmp_path / "out.zip" and not list(tmp_path.glob(".out.zip.*"))  # no temporary left
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        stems = ["shot_1", "shot_1-2"]
        for stem, picture, image in zip(stems, pictures, (run.images[0], run.images[2])):
            for method in ("winclip", "sdp"):
                saved = np.load(io.BytesIO(archive.read(f"maps/{stem}__{method}.npy")))
                assert saved.dtype == np.float32 and saved.shape == (picture.height, picture.width)
                np.testing.assert_array_equal(saved, image.results[method].anomaly_map)  # not flipped or transposed
                overlay = Image.open(io.BytesIO(archive.read(f"overlays/{stem}__{method}.png")))
                assert overlay.height == picture.height and overlay.width > picture.width  # with its colour bar
        assert not any("adaclip" in name or "bad" in name for name in names if name.startswith(("maps/", "overlays/")))
        rows = list(csv.DictReader(io.StringIO(archive.read("scores.csv").decode())))
        assert [(row["image"], row["method"], row["status"]) for row in rows] == [
            (image, method, "ok" if image != "bad.png" and method != "adaclip" else "error")
            for image in ("shot 1.png", "bad.png", "sub/shot 1.png")
            for method in ("winclip", "sdp", "adaclip")
        ]
        assert float(rows[1]["score"]) == pytest.approx(run.images[0].results["sdp"].score, rel=1e-12)
        assert float(rows[1]["p_cls"]) == pytest.approx(run.images[0].results["sdp"].extras["p_cls"], rel=1e-12)
        assert "no trained checkpoint" in rows[2]["error"] and rows[4]["error"]
        scores = json.loads(archive.read("scores.json"))
        assert scores["images"][0]["results"]["winclip"]["map"] == "maps/shot_1__winclip.npy"
        settings = json.loads(archive.read("settings.json"))
        assert settings["category"] == "bottle" and settings["app"] == {"gradio": "6"}
        assert settings["methods"]["winclip"]["templates"][0] == "a cropped photo of the {}."
        assert settings["colour_scale"]["mode"] == "per_method" and "adaclip" in settings["method_errors"]


def test_safe_stems_and_score_rows() -> None:
    assert safe_stems(["a b.png", "A B.png", "../../etc/passwd", "???.jpg", "x.y.png"]) == [
        "a_b",
        "A_B-2",
        "passwd",
        "image",
        "x.y",
    ]
    run = run_comparison(DetectorPool(device="cpu"), [("a.png", b"")], ["winclip"], "cap", model=TINY)
    assert score_rows(run) == [
        {
            "image": "a.png",
            "method": "winclip",
            "status": "error",
            "score": None,
            "seconds": None,
            "map_min": None,
            "map_max": None,
            "error": run.images[0].error,
        }
    ]


def test_missing_weights_count_as_available_only_when_downloads_are_possible(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ZSAD_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    paper = model_status("ViT-L-14-336:openai", downloadable=True)
    assert paper.available and paper.download and not paper.random_weights
    assert not model_status("ViT-L-14-336:openai").available
    # on disk first (the project's own trained model), then what must be downloaded, then random weights
    assert [s.model for s in available_models(downloadable=True)][:3] == [
        "zsad-toy",
        "ViT-L-14-336:openai",
        "ViT-B-16-plus-240:laion400m_e31",
    ]
    adaclip = method_status("adaclip", downloadable=True)  # the released heads are on the Hub
    assert adaclip.available and adaclip.checkpoints[0].source == "adaclip-mvtec-colondb"
    assert "downloaded on first use" in adaclip.checkpoints[0].label
    assert not method_status("adaclip").available
    sdp_plus = method_status("sdp_plus", downloadable=True)  # its released layers are not on the Hub
    assert not sdp_plus.available and "no trained checkpoint" in sdp_plus.reason


# ---------------------------------------------------------------------------- a server's limits
def test_a_time_limit_stops_between_images_and_keeps_what_was_done(pool: DetectorPool, monkeypatch) -> None:
    original = Detector.run_batch

    def slow(self, *args, **kwargs):
        time.sleep(0.3)  # longer than the whole limit: after one image the time is up, whatever the load
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Detector, "run_batch", slow)
    pictures = [(f"{n}.png", make_image(40, 40, seed=n)) for n in range(3)]
    run = run_comparison(pool, pictures, ["sdp", "winclip"], "cap", model=TINY, time_limit=0.2)
    done = {image.name for image in run.images if image.results}
    assert done <= {"0.png"}  # the first image may start before the limit; nothing after it
    assert run.messages() == [run.stopped]  # one line, not one per image and method left undone
    assert run.stopped == "stopped at the time limit of 0.2 s per request: the rest was not run"
    for image in run.images[1:]:
        assert image.errors == {
            "sdp": "not run: the time limit was reached",
            "winclip": "not run: the time limit was reached",
        }
    monkeypatch.undo()
    assert run_comparison(pool, pictures, ["sdp"], "cap", model=TINY, time_limit=600).stopped is None


def test_a_pixel_limit_refuses_by_the_header_before_decoding(pool: DetectorPool, monkeypatch) -> None:
    buffer = io.BytesIO()
    make_image(50, 60, seed=1).save(buffer, format="PNG")
    decoded = []
    monkeypatch.setattr(compare_module, "load_image", lambda source, name: decoded.append(name) or make_image())
    outcomes = decode_images([("big.png", buffer.getvalue()), ("small.png", make_image(10, 10))], max_pixels=2999)
    assert outcomes[0].error == "big.png: 60x50 pixels is more than this server's limit of 2,999 per image"
    assert decoded == ["small.png"] and outcomes[1].error is None
    assert decode_images([("big.png", buffer.getvalue())], max_pixels=3000)[0].error is None
