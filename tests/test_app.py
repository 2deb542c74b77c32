"""The Gradio app, launched in-process on the tiny models and driven through gradio_client."""

from __future__ import annotations

import io
import json
import os
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, make_image
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(REPO_ROOT))  # app.py lives at the repository root (the Space's app_file)

gradio_client = pytest.importorskip("gradio_client")
import app as zsad_app  # noqa: E402
from zsad_core.methods.base import Detector  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
SHARED_SCALE, OWN_SCALE = list(zsad_app.SCALES)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(demo, client, folder with a good, a second good and a broken image)."""
    folder = tmp_path_factory.mktemp("uploads")
    make_image(60, 90, seed=1).save(folder / "first.png")
    make_image(75, 50, seed=2).save(folder / "second.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        demo = zsad_app.build_demo(zsad_app.AppSettings(model="zsad-tiny"))
    demo.queue(max_size=8)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", ssr_mode=False, quiet=True)
    client = gradio_client.Client(url, verbose=False)
    yield demo, client, folder
    client.close()
    demo.close()


def _value(output):
    """An output's value, whether the handler returned it plainly or as a component update."""
    return output["value"] if isinstance(output, dict) and "value" in output else output


def _files(folder: Path, *names: str) -> list:
    return [gradio_client.handle_file(str(folder / name)) for name in names]


def test_detect_endpoint_runs_several_methods_on_several_images(served) -> None:
    demo, client, folder = served
    payload, archive_path = client.predict(
        _files(folder, "first.png", "broken.png", "second.png"),
        "bottle",
        "winclip,sdp,adaclip",
        "",
        json.dumps({"abnormal_states": ["scratched", "{} with a crack"]}),
        api_name="/detect",
    )
    rows = {(row["image"], row["method"]): row for row in payload["results"]}
    assert len(rows) == 9
    for image in ("first.png", "second.png"):
        for method in ("winclip", "sdp"):
            assert rows[(image, method)]["status"] == "ok" and 0.0 <= rows[(image, method)]["score"] <= 1.0
        assert "no trained checkpoint" in rows[(image, "adaclip")]["error"]  # reported, not fatal
    assert all(rows[("broken.png", m)]["status"] == "error" for m in ("winclip", "sdp", "adaclip"))
    assert any("broken.png" in problem for problem in payload["problems"])
    assert payload["settings"]["methods"]["sdp"]["abnormal_states"] == ["scratched {}", "{} with a crack"]
    with zipfile.ZipFile(archive_path) as archive:
        names = set(archive.namelist())
        assert {"scores.csv", "scores.json", "settings.json"} <= names
        for stem, size in (("first", (60, 90)), ("second", (75, 50))):
            for method in ("winclip", "sdp"):
                assert f"overlays/{stem}__{method}.png" in names
                raw = np.load(io.BytesIO(archive.read(f"maps/{stem}__{method}.npy")))
                assert raw.shape == size and raw.dtype == np.float32
        settings = json.loads(archive.read("settings.json"))
        assert settings["app"]["zsad"] and settings["methods"]["winclip"]["model"] == "zsad-tiny"


def test_detect_endpoint_refuses_bad_requests_with_a_message(served) -> None:
    _, client, folder = served
    with pytest.raises(Exception, match="category is empty"):
        client.predict(_files(folder, "first.png"), "  ", "winclip", "", "", api_name="/detect")
    with pytest.raises(Exception, match="unknown method"):
        client.predict(_files(folder, "first.png"), "cap", "nonsense", "", "", api_name="/detect")
    with pytest.raises(Exception, match="JSON object"):
        client.predict(_files(folder, "first.png"), "cap", "winclip", "", "{oops", api_name="/detect")
    with pytest.raises(Exception, match="JSON object with any of normal_states"):
        client.predict(_files(folder, "first.png"), "cap", "winclip", "", '["scratched"]', api_name="/detect")
    with pytest.raises(Exception, match="templates must be a list of strings"):
        client.predict(_files(folder, "first.png"), "cap", "winclip", "", '{"templates": "a {}"}', api_name="/detect")


def test_old_archives_are_removed(served) -> None:
    demo, _, _ = served
    app = demo.zsad_app
    stale = app.new_archive_path("old.zip")
    stale.write_bytes(b"zip")
    old = os.stat(stale.parent).st_mtime - 2 * zsad_app.ARCHIVE_LIFETIME_S
    os.utime(stale.parent, (old, old))
    fresh = app.new_archive_path("new.zip")
    assert not stale.exists() and fresh.parent.is_dir() and fresh.parent.parent == app.archive_dir


def test_page_run_then_threshold_redraw_runs_no_model(served, monkeypatch) -> None:
    demo, client, folder = served
    app = demo.zsad_app
    gallery = [
        {"image": gradio_client.handle_file(str(folder / n)), "caption": None} for n in ("first.png", "second.png")
    ]
    outputs = client.predict(
        gallery,
        "screw",
        ["winclip", "sdp"],
        "zsad-tiny",
        SHARED_SCALE,
        0.7,
        False,
        "",
        "",
        "",
        None,
        None,
        api_name="/compare",
    )
    message, note, results = outputs[0], outputs[1], _value(outputs[2])
    assert message.startswith("Done: 2 image(s)")
    assert "WinCLIP ≈" in note and "CLIP-AD SDP ≈" in note  # seconds per image, measured
    assert [item["caption"].rsplit(" ", 1)[0] for item in results] == [
        "first.png",
        "WinCLIP",
        "CLIP-AD SDP",
        "second.png",
        "WinCLIP",
        "CLIP-AD SDP",
    ]
    assert results[1]["caption"] == f"WinCLIP {float(results[1]['caption'].split()[-1]):.3g}"
    assert Image.open(results[1]["image"]).size == (90, 60)  # overlays at the image's own size
    calls_before = app.detect_calls

    def forbidden(*args, **kwargs):
        raise AssertionError("the threshold redraw ran a model")

    monkeypatch.setattr(Detector, "detect", forbidden)
    monkeypatch.setattr(Detector, "predict", forbidden)
    monkeypatch.setattr(Detector, "run_batch", forbidden)
    redrawn = client.predict(SHARED_SCALE, 0.2, "second.png", "CLIP-AD SDP", api_name="/redraw")
    assert app.detect_calls == calls_before
    lower = np.asarray(Image.open(_value(redrawn[0])[1]["image"]))
    original = np.asarray(Image.open(results[1]["image"]))
    assert lower.shape == original.shape and (lower != original).any()  # a lower threshold: a larger outline
    before, after = (Image.open(path) for path in redrawn[4])  # the slider shows the chosen image
    assert before.size == after.size == (50, 75)
    masks = redrawn[5]
    assert [annotation["label"] for annotation in masks["annotations"]] == ["WinCLIP", "CLIP-AD SDP"]
    assert Image.open(masks["annotations"][0]["image"]).size == (50, 75)
    own = client.predict(OWN_SCALE, 0.2, "first.png", "WinCLIP", api_name="/redraw")
    assert len(_value(own[0])) == 6 and app.detect_calls == calls_before


def test_explain_endpoint_ranks_prompt_states(served) -> None:
    _, client, folder = served
    answer = client.predict(_files(folder, "first.png"), "bottle", "winclip", "", "", api_name="/explain")
    assert answer["method"] == "winclip" and answer["text_score"] == pytest.approx(answer["score"], abs=1e-6)
    effects = [abs(state["effect"]) for state in answer["states"]]
    assert effects == sorted(effects, reverse=True) and len(effects) == 11  # WinCLIP's 7 + 4 states


def test_the_page_tells_which_model_runs_and_which_methods_cannot(served) -> None:
    demo, _, _ = served
    app = demo.zsad_app
    note = app.model_note("zsad-tiny")
    assert "zsad-tiny" in note and "random weights" in note and "cpu" in note
    assert "WinCLIP ≈" in note  # measured by the start-up run
    runnable, blocked, checkpoints = app.method_menus("zsad-tiny")
    registered = [info.id for info in zsad_app.list_methods()]
    assert [value for _, value in runnable["choices"]] == [m for m in registered if m in ("winclip", "sdp")]
    assert [value for _, value in blocked["choices"]] == [m for m in registered if m in ("sdp_plus", "adaclip")]
    assert all("no trained checkpoint" in label for label, _ in blocked["choices"])
    assert checkpoints["adaclip"]["interactive"] is False and "no trained checkpoint" in checkpoints["adaclip"]["info"]


def test_model_choice_and_command_line(monkeypatch) -> None:
    monkeypatch.delenv("ZSAD_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert zsad_app.default_model() == "zsad-toy"  # no paper weights here: the project's own trained model
    assert zsad_app.default_model("zsad-tiny-14") == "zsad-tiny-14"
    monkeypatch.setenv("ZSAD_MODEL", "zsad-tiny-14")
    assert zsad_app.default_model() == "zsad-tiny-14"
    values = [value for _, value in zsad_app.model_choices("ViT-B-16:/no/file.pt")]
    assert values[:3] == ["zsad-toy", "zsad-tiny", "zsad-tiny-14"] and values[-1] == "ViT-B-16:/no/file.pt"
    args = zsad_app.parse_args(["--model", "zsad-tiny", "--port", "7999", "--share", "--no-warmup"])
    assert (args.model, args.port, args.share, args.no_warmup) == ("zsad-tiny", 7999, True, True)


def test_paper_backbones_are_the_default_when_their_weights_are_present(monkeypatch) -> None:
    from zsad_core.availability import ModelStatus

    monkeypatch.delenv("ZSAD_MODEL", raising=False)
    present = set(zsad_app.PAPER_MODELS) | {"zsad-tiny"}
    monkeypatch.setattr(
        zsad_app, "model_status", lambda model, downloadable=False: ModelStatus(model, model in present, False)
    )
    assert zsad_app.default_model() == zsad_app.PAPER
    choices = zsad_app.model_choices(zsad_app.PAPER)
    assert choices[0] == ("paper backbones (each method's own)", zsad_app.PAPER)
    assert zsad_app._model_arg(zsad_app.PAPER) is None and zsad_app._model_arg("zsad-tiny") == "zsad-tiny"


def test_paper_backbones_are_the_default_when_they_can_be_downloaded(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("ZSAD_MODEL", raising=False)
    monkeypatch.setenv("ZSAD_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert zsad_app.default_model(downloadable=True) == zsad_app.PAPER
    assert zsad_app.default_model(downloadable=False) == "zsad-toy"
    label, value = zsad_app.model_choices(zsad_app.PAPER, downloadable=True)[0]
    assert value == zsad_app.PAPER and "downloaded on first use" in label
