"""The command line (zsad_core.cli), run in-process through ``main([...])`` with the tiny model.

One test starts ``python -m zsad_core list`` as a subprocess to prove the entry point works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, make_image
from PIL import Image

from zsad_core import cli
from zsad_core.cli import PluginCommand, collect_images, main, unique_names, unique_stems

TINY = ["--model", "zsad-tiny", "--device", "cpu"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.out, captured.err


def write_image(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


# -------------------------------------------------------------------------------------------- list
def test_list_prints_a_table_of_methods(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "list")
    assert status == 0
    for text in (
        "winclip",
        "sdp",
        "WinCLIP",
        "CLIP-AD SDP",
        "training-free",
        "ViT-B-16-plus-240",
        "[0, 1]",
        "CVPR 2023",
    ):
        assert text in out


def test_list_json_has_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "list", "--json")
    assert status == 0
    rows = {row["id"]: row for row in json.loads(out)}
    assert {"winclip", "sdp"} <= set(rows)
    for method in ("winclip", "sdp"):
        row = rows[method]
        for field in ("name", "paper", "training_free", "default_model", "image_size", "map_range"):
            assert field in row
        assert row["training_free"] is True
        assert isinstance(row["image_size"], int) and len(row["map_range"]) == 2
    assert rows["winclip"]["map_range"] == [0.0, 1.0]


def test_list_models(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "list", "--models")
    assert status == 0
    assert "zsad-tiny" in out and "zsad-tiny-14" in out and "hf-hub:" in out and "local-dir:" in out
    status, out, _ = run_cli(capsys, "list", "--models", "--json")
    payload = json.loads(out)
    assert status == 0
    assert {row["name"] for row in payload["tiny_models"]} >= {"zsad-tiny", "zsad-tiny-14"}
    assert payload["naming"] and payload["weights_dirs"]


def test_module_entry_point_runs_as_a_subprocess() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(
        [sys.executable, "-m", "zsad_core", "list"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert "winclip" in completed.stdout and "sdp" in completed.stdout


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["detect", "--out", "x"]) == 2  # no images, no category
    assert main(["detect", "a.png", "--category", "x", "--out", "o", "--batch-size", "0"]) == 2
    assert "positive" in capsys.readouterr().err
    assert main(["--version"]) == 0


# ------------------------------------------------------------------------------------------ detect
@pytest.fixture
def image_folder(tmp_path: Path) -> dict[str, Path]:
    """An RGB PNG, a grey PNG of odd size, an RGBA PNG, and two files sharing the stem 'shot'."""
    folder = tmp_path / "images"
    return {
        "rgb": write_image(folder / "rgb.png", make_image(48, 64, seed=1)),
        "grey": write_image(folder / "grey.png", make_image(37, 53, seed=2, mode="L")),
        "rgba": write_image(folder / "nested" / "rgba.png", make_image(40, 30, seed=3, mode="RGBA")),
        "shot_a": write_image(folder / "a" / "shot.jpg", make_image(32, 32, seed=4)),
        "shot_b": write_image(folder / "b" / "shot.png", make_image(33, 35, seed=5)),
    }


def test_detect_writes_maps_overlays_and_results(
    tmp_path: Path, image_folder: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "images" / "notes.txt").write_text("not an image; folders only yield image files")
    out = tmp_path / "out"
    status, _, err = run_cli(
        capsys, "detect", str(tmp_path / "images"), "--category", "bottle", "--methods", "winclip,sdp",
        *TINY, "--batch-size", "3", "--out", str(out),
    )  # fmt: skip
    assert status == 0, err

    payload = json.loads((out / "results.json").read_text())
    assert payload["model"] == "zsad-tiny" and payload["category"] == "bottle"
    assert payload["methods"] == ["winclip", "sdp"]
    assert payload["failed"] == []
    assert len(payload["images"]) == len(image_folder)
    by_path = {Path(entry["path"]).resolve(): entry for entry in payload["images"]}
    names_seen = set()
    for path in image_folder.values():
        entry = by_path[path.resolve()]
        assert entry["status"] == "ok"
        with Image.open(path) as original:
            width, height = original.size
        for method in ("winclip", "sdp"):
            summary = entry["results"][method]
            assert {"score", "map_shape", "seconds", "overlay", "map"} <= set(summary)
            assert summary["map_shape"] == [height, width]
            assert np.isfinite(summary["score"])
            raw = np.load(out / summary["map"])
            assert raw.dtype == np.float32 and raw.shape == (height, width)
            with Image.open(out / summary["overlay"]) as picture:
                assert picture.size == (width, height) and picture.mode == "RGB"
            names_seen.add(summary["map"])
    assert "p_cls" in by_path[image_folder["rgb"].resolve()]["results"]["sdp"]  # method extras are kept
    assert len(names_seen) == 2 * len(image_folder)  # the two 'shot' files got distinct names
    assert (out / "rgb__sdp.png").is_file() and (out / "grey__winclip.npy").is_file()
    assert not list(out.glob("*.tmp"))


def test_detect_reports_bad_files_and_keeps_going(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_image(tmp_path / "in" / "good.png", make_image(30, 40))
    write_image(tmp_path / "in" / "zz_good.png", make_image(20, 20, seed=7))
    corrupt = tmp_path / "in" / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:80])
    empty = tmp_path / "in" / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "in" / "text.png"
    text.write_text("hello")
    out = tmp_path / "out"
    status, _, err = run_cli(
        capsys, "detect", str(tmp_path / "in"), "--category", "bottle", "--methods", "sdp", *TINY,
        "--batch-size", "2", "--out", str(out),
    )  # fmt: skip
    assert status == 1
    for bad in (corrupt, empty, text):
        assert any(str(bad) in line and line.startswith("error:") for line in err.splitlines())
    payload = json.loads((out / "results.json").read_text())
    assert sorted(payload["failed"]) == sorted(str(path) for path in (corrupt, empty, text))
    statuses = {Path(entry["path"]).name: entry["status"] for entry in payload["images"]}
    assert statuses == {
        "good.png": "ok",
        "zz_good.png": "ok",
        "corrupt.png": "error",
        "empty.png": "error",
        "text.png": "error",
    }
    assert [Path(entry["path"]).name for entry in payload["images"]] == sorted(statuses)  # input order kept
    errors = {Path(entry["path"]).name: entry.get("error", "") for entry in payload["images"]}
    assert "empty" in errors["empty.png"] and "corrupt" in errors["corrupt.png"]
    assert (out / "good__sdp.npy").is_file() and (out / "zz_good__sdp.png").is_file()


def test_detect_accepts_files_and_glob_patterns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = write_image(tmp_path / "in" / "one.png", make_image(24, 24))
    write_image(tmp_path / "in" / "two.png", make_image(24, 28, seed=1))
    out = tmp_path / "out"
    status, _, err = run_cli(
        capsys, "detect", str(first), str(tmp_path / "in" / "*.png"), "--category", "bottle", "--methods", "sdp",
        *TINY, "--sigma", "0", "--scale", "per_image", "--colorbar", "--out", str(out),
    )  # fmt: skip
    assert status == 0, err
    payload = json.loads((out / "results.json").read_text())
    assert [Path(entry["path"]).name for entry in payload["images"]] == ["one.png", "two.png"]  # no duplicates
    assert payload["settings"]["sdp"]["sigma"] == 0.0
    with Image.open(out / "one__sdp.png") as picture:
        assert picture.height == 24 and picture.width > 24  # colour bar added


def test_interrupt_still_writes_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import zsad_core.visualize as visualize

    for index in range(3):
        write_image(tmp_path / "in" / f"{index}.png", make_image(20, 20, seed=index))
    real_overlay = visualize.overlay
    calls = []

    def overlay_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_overlay(*args, **kwargs)

    monkeypatch.setattr(visualize, "overlay", overlay_then_interrupt)
    out = tmp_path / "out"
    status, _, err = run_cli(
        capsys, "detect", str(tmp_path / "in"), "--category", "bottle", "--methods", "sdp", *TINY,
        "--batch-size", "1", "--out", str(out),
    )  # fmt: skip
    assert status == 130 and "interrupted" in err
    payload = json.loads((out / "results.json").read_text())
    assert payload["interrupted"] is True
    assert [Path(entry["path"]).name for entry in payload["images"]] == ["0.png"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--methods", "nope", *TINY], "unknown method 'nope'"),
        (["--methods", "sdp", "--model", "ViT-Nope-99", "--device", "cpu"], "unknown architecture"),
        (["--methods", "sdp", *TINY, "--checkpoint", "weights.safetensors"], "learnable methods only"),
        (["--methods", "sdp", *TINY, "--templates", "a photo without a slot"], "template"),
        (["--methods", "sdp", *TINY, "--normal-states", " ; "], "--normal-states is empty"),
        (["--methods", "sdp", *TINY, "--cmap", "rainbowish"], "colour map"),
    ],
)
def test_configuration_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    image = write_image(tmp_path / "a.png", make_image(20, 20))
    status, _, err = run_cli(
        capsys, "detect", str(image), "--category", "bottle", *arguments, "--out", str(tmp_path / "o")
    )
    assert status == 2
    assert err.startswith("error:") and message in err
    assert not (tmp_path / "o").exists()  # nothing written for a run that could not start


def test_missing_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "detect", str(tmp_path / "nothing.png"), "--category", "x", "--out", str(tmp_path))
    assert status == 2 and "no such file" in err
    status, _, err = run_cli(capsys, "detect", str(tmp_path / "*.png"), "--category", "x", "--out", str(tmp_path))
    assert status == 2 and "matches no images" in err


def test_missing_weights_offline_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("ZSAD_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)  # ./weights is searched too
    image = write_image(tmp_path / "a.png", make_image(20, 20))
    status, _, err = run_cli(
        capsys, "detect", str(image), "--category", "bottle", "--methods", "sdp",
        "--model", "ViT-B-16-plus-240:laion400m_e31", "--device", "cpu", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert status == 2
    assert err.startswith("error:") and "weights" in err and str(tmp_path / "weights") in err


# ------------------------------------------------------------------------------- plugin commands
def test_missing_plugin_command_is_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = PluginCommand("eval", "zsad_core._no_such_module_for_tests", "add_eval_arguments", "run_eval", "help")
    monkeypatch.setattr(cli, "PLUGIN_COMMANDS", (missing,))
    status, _, err = run_cli(capsys, "eval", "--data", "mvtec:/nowhere")
    assert status == 2 and "'eval' command is not available" in err
    assert run_cli(capsys, "list", "--json")[0] == 0  # other commands are unaffected


def test_plugin_command_is_loaded_only_when_used(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    received = {}
    module = types.ModuleType("zsad_fake_training")

    def add_train_arguments(parser) -> None:
        parser.add_argument("--epochs", type=int, required=True)

    def run_train(args) -> int:
        received["epochs"] = args.epochs
        return 0

    module.add_train_arguments = add_train_arguments
    module.run_train = run_train
    monkeypatch.setitem(sys.modules, "zsad_fake_training", module)
    fake = PluginCommand("train", "zsad_fake_training", "add_train_arguments", "run_train", "train something")
    monkeypatch.setattr(cli, "PLUGIN_COMMANDS", (fake,))
    assert run_cli(capsys, "train", "--epochs", "3")[0] == 0
    assert received == {"epochs": 3}
    assert run_cli(capsys, "train")[0] == 2  # the plugin's own required option

    broken = types.ModuleType("zsad_fake_broken")  # a module without the functions
    monkeypatch.setitem(sys.modules, "zsad_fake_broken", broken)
    monkeypatch.setattr(cli, "PLUGIN_COMMANDS", (PluginCommand("train", "zsad_fake_broken", "a", "b", "h"),))
    status, _, err = run_cli(capsys, "train")
    assert status == 2 and "has no function a()" in err


# ------------------------------------------------------------------------------------------ helpers
def test_unique_names() -> None:
    paths = [Path("x/a/shot.png"), Path("x/b/shot.png"), Path("x/solo.png"), Path("x/Solo.bmp")]
    assert unique_stems(paths) == ["shot", "shot-2", "solo", "Solo-2"]  # compared case-insensitively
    assert unique_names(["a", "A", "a"]) == ["a", "A-2", "a-3"]


def test_collect_images_recurses_sorts_and_filters(tmp_path: Path) -> None:
    write_image(tmp_path / "b.png", make_image(8, 8))
    write_image(tmp_path / "sub" / "a.JPG", make_image(8, 8))
    (tmp_path / "readme.md").write_text("x")
    found = collect_images([str(tmp_path)])
    assert [image.path.name for image in found] == ["b.png", "a.JPG"]
    with pytest.raises(FileNotFoundError, match="no images"):
        collect_images([str(tmp_path / "sub" / "*.png")])


def test_output_names_do_not_depend_on_the_other_inputs(tmp_path: Path) -> None:
    """A name is the path below the folder (or pattern) it was found in: 'cut__000' whether or not
    another '000' is processed in the same run; only exact repeats get '-2'."""
    for folder in ("good", "cut"):
        write_image(tmp_path / "data" / folder / "000.png", make_image(8, 8))
    write_image(tmp_path / "data" / "cut" / "001.png", make_image(8, 8))
    alone = collect_images([str(tmp_path / "data" / "cut")])
    assert [image.name for image in alone] == ["000", "001"]
    together = collect_images([str(tmp_path / "data")])
    assert [image.name for image in together] == ["cut__000", "cut__001", "good__000"]
    by_pattern = collect_images([str(tmp_path / "data" / "*" / "000.png")])
    assert [image.name for image in by_pattern] == ["cut__000", "good__000"]
    direct = collect_images([str(tmp_path / "data" / "cut" / "000.png"), str(tmp_path / "data" / "good" / "000.png")])
    assert [image.name for image in direct] == ["000", "000-2"]


# ----------------------------------------------------------------------------------------- explain
def test_explain_prints_each_methods_states_by_effect(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    image = write_image(tmp_path / "cap.png", make_image(40, 56, seed=4))
    status, out, err = run_cli(capsys, "explain", str(image), "--category", "bottle cap", "--methods", "winclip", *TINY)
    assert status == 0 and "warning: zsad-tiny has random weights" in err
    assert out.startswith("winclip: text score") and "(image score)" in out
    assert "bottle cap with damage" in out and "flawless bottle cap" in out  # '{}' filled with the category
    status, out, _ = run_cli(
        capsys, "explain", str(image), "--category", "bottle cap", "--methods", "winclip,sdp", "--top", "3",
        "--abnormal-states", "scratched;{} with a hole", "--json", *TINY,
    )
    report = json.loads(out)
    assert [entry["method"] for entry in report["methods"]] == ["winclip", "sdp"]
    for entry in report["methods"]:
        effects = [abs(state["effect"]) for state in entry["states"] if state["effect"] is not None]
        assert len(entry["states"]) == 3 and effects == sorted(effects, reverse=True)
    winclip = report["methods"][0]
    assert winclip["text_score"] == pytest.approx(winclip["score"], abs=1e-6)
    abnormal = {state["state"] for state in winclip["states"] if state["kind"] == "abnormal"}
    assert abnormal <= {"scratched {}", "{} with a hole"}


def test_explain_names_a_bad_image_without_loading_a_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"no image here")
    status, _, err = run_cli(capsys, "explain", str(broken), "--category", "bottle", *TINY)
    assert status == 2 and err.startswith("error: ") and "broken.png" in err and err.count("\n") == 1


def test_one_line_warnings_are_the_commands_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``warning: message`` while a command runs; the process's own format before and after."""
    original = warnings.formatwarning
    seen = []

    def handler(args) -> int:
        seen.append(warnings.formatwarning("careful", UserWarning, "file.py", 1))
        return 0

    monkeypatch.setattr(cli, "run_list", handler)
    assert main(["list"]) == 0
    assert seen == ["warning: careful\n"]
    assert warnings.formatwarning is original
    monkeypatch.setattr(cli, "run_list", lambda args: 1 / 0)  # an internal error restores it too
    assert main(["list"]) == 3
    assert warnings.formatwarning is original
