"""Every kind of bad input, through the Python API and the CLI: a result or one clear error naming the
problem, the rest of a batch goes on, nothing malicious runs (docs/reliability.md lists them all).

Decoding details (modes, EXIF, transparency) are in test_preprocess.py; this file covers what the
reliability issue lists: broken and hostile files, text, checkpoints, datasets and the CLI's answers.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import stat
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image, tiny_settings
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from zsad_core import create_detector
from zsad_core.cli import main
from zsad_core.data import make_synthetic_dataset
from zsad_core.decode import DecodeWarning, full_size
from zsad_core.methods.learnable import CheckpointMismatchError
from zsad_core.preprocess import ImageError, load_image
from zsad_core.prompts import PromptError

TINY = ["--model", "zsad-tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def sdp():
    """A tiny random SDP detector (4 x 4 patches): fast, and enough to show maps of the right size."""
    return create_detector("sdp", **tiny_settings("sdp")).prepare("bottle")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(("error:", "internal error:"))]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_rows(width: int, height: int, rows: int) -> bytes:
    """A well-formed RGB PNG (valid chunks and CRCs) whose compressed data holds only ``rows`` of ``height`` rows."""
    raw = b"".join(b"\x00" + bytes([200]) * (width * 3) for _ in range(rows))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def error_of(source, **options) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source, **options)
    return str(info.value)


# ------------------------------------------------------------------------------------------ images
def test_random_bytes_text_and_folders_are_named(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert "not an image file" in error_of(noise, name="noise.bin")
    text = tmp_path / "notes.png"
    text.write_text("hello, I am text")
    assert str(text) in error_of(text) and "not an image" in error_of(text)
    assert "is a folder" in error_of(tmp_path)
    assert "no such file" in error_of(tmp_path / "missing.jpg")
    assert "cannot read an image from a int" in error_of(42)


def test_png_whose_data_stops_early_is_an_error_not_a_black_image() -> None:
    """Pillow decodes this file silently with the missing rows black; it must be refused."""
    short = png_with_rows(16, 16, rows=8)
    with Image.open(io.BytesIO(short)) as image:
        image.load()  # Pillow alone: no error, half black
        assert np.asarray(image)[8:].max() == 0
    assert "truncated PNG" in error_of(short, name="short.png")
    assert load_image(png_with_rows(16, 16, rows=16)).size == (16, 16)  # the complete file is fine
    interlaced = encode(make_image(13, 11), "PNG", interlace=1)  # Adam7 passes are counted too
    assert load_image(interlaced).size == (11, 13)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_stay_errors_when_another_library_allows_truncation(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = encode(make_image(64, 64), fmt)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # what some libraries set process-wide
    message = error_of(data[: len(data) * 2 // 3], name=f"cut.{fmt.lower()}")
    assert "truncated" in message or "corrupt" in message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # left as the other library set it


def test_decompression_bomb_header_is_refused_with_our_wording() -> None:
    """A 100000 x 100000 header (10 G pixels) over a few bytes: refused from the header, our words only."""
    bomb = png_with_rows(100_000, 100_000, rows=0)
    message = error_of(bomb, name="bomb.png")
    assert "bomb.png: 100000x100000 is 10,000,000,000 pixels, more than the limit of 100,000,000" in message
    assert "ZSAD_MAX_IMAGE_PIXELS" in message and "DOS" not in message and "decompression" not in message


def test_the_pixel_limit_can_pass_pillows_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """ZSAD_MAX_IMAGE_PIXELS above Pillow's 178.9 MP: a 200 MP header passes our check and Pillow's is not
    consulted (the file then fails only because its data is short, in our words)."""
    monkeypatch.setenv("ZSAD_MAX_IMAGE_PIXELS", "300000000")
    message = error_of(png_with_rows(20_000, 10_000, rows=0), name="big.png")
    assert "big.png" in message and "truncated" in message and "DOS" not in message
    monkeypatch.setenv("ZSAD_MAX_IMAGE_PIXELS", "lots")
    assert "must be a positive whole number" in error_of(make_image(4, 4))


def test_a_callers_lower_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server can refuse smaller images than the library's limit, from the header, in the same words."""
    path = tmp_path / "a.png"
    make_image(20, 20).save(path)
    message = error_of(path, pixel_limit=399)
    assert message == f"{path}: 20x20 is 400 pixels, more than the limit of 399"
    assert "limit of 399" in error_of(np.zeros((20, 20), dtype=np.uint8), pixel_limit=399)
    assert load_image(path, pixel_limit=400).size == (20, 20)
    monkeypatch.setenv("ZSAD_MAX_IMAGE_PIXELS", "399")  # a caller's higher limit does not lift the library's
    assert "ZSAD_MAX_IMAGE_PIXELS" in error_of(path, pixel_limit=10**12)


def test_animated_gif_uses_the_first_frame_and_says_so() -> None:
    frames = [Image.new("RGB", (12, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    with pytest.warns(DecodeWarning, match="2 frames; only the first frame"):
        decoded = load_image(buffer.getvalue(), name="anim.gif")
    assert decoded.size == (12, 10)
    assert tuple(np.asarray(decoded)[5, 5]) == (255, 0, 0)


def test_cmyk_jpeg_and_sixteen_bit_png_and_palette_alpha_decode(tmp_path: Path) -> None:
    cmyk = load_image(encode(make_image(20, 30).convert("CMYK"), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.size == (30, 20)
    grey16 = Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    assert np.asarray(load_image(encode(grey16, "PNG"))).max() == 255
    palette = make_image(20, 30).convert("P")
    palette.info["transparency"] = 0
    assert load_image(encode(palette, "PNG")).size == (30, 20)


def test_huge_jpeg_is_decoded_reduced_through_draft_and_keeps_its_orientation() -> None:
    """reduce_to: the JPEG decoder skips the detail (draft), so the full picture is never in memory;
    the EXIF rotation still applies and full_size() gives the original (rotated) size."""
    image = Image.new("RGB", (1600, 800), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 400, 800))  # white quarter on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(image, "JPEG", exif=exif.tobytes(), quality=90)
    decoded = load_image(data, reduce_to=100_000)
    assert decoded.size == (200, 400)  # 1600x800 / 4 (the smallest whole factor under 100,000 pixels), rotated
    assert full_size(decoded) == (800, 1600)
    assert np.asarray(decoded)[:80].mean() > 200 and np.asarray(decoded)[120:].mean() < 50  # left band on top
    png = load_image(encode(image, "PNG"), reduce_to=100_000)  # other formats: reduce after decoding
    assert png.size == (400, 200) and full_size(png) == (1600, 800)
    assert full_size(load_image(data)) == (800, 1600) and load_image(data).size == (800, 1600)


def test_extreme_aspect_ratio_gives_a_map_of_its_own_size(sdp) -> None:
    result = sdp.detect(make_image(300, 20_000, seed=3))
    assert result.anomaly_map.shape == (300, 20_000) and np.isfinite(result.anomaly_map).all()
    assert "too small" in str(sdp.detect([make_image(1, 1)], errors="collect")[0])


def test_detect_collects_errors_beside_the_good_results(sdp, tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    inputs = [make_image(20, 24, seed=1), empty, b"not an image", make_image(30, 18, seed=2), tmp_path / "nope.png"]
    outcomes = sdp.detect(inputs, batch_size=2, errors="collect")
    assert [type(outcome).__name__ for outcome in outcomes] == [
        "AnomalyResult",
        "ImageError",
        "ImageError",
        "AnomalyResult",
        "ImageError",
    ]
    assert outcomes[0].anomaly_map.shape == (20, 24) and outcomes[3].anomaly_map.shape == (30, 18)
    assert str(empty) in str(outcomes[1]) and "nope.png" in str(outcomes[4])
    alone = sdp.detect(make_image(20, 24, seed=1))  # the same image alone: the same numbers
    assert outcomes[0].score == pytest.approx(alone.score, abs=1e-6)
    for outcome in (outcomes[0], outcomes[3]):
        timings = outcome.timings
        assert timings["total"] == pytest.approx(timings["preprocess"] + timings["model"] + timings["postprocess"])
    with pytest.raises(ImageError, match="empty file"):
        sdp.detect(inputs)  # the default still raises
    with pytest.raises(ValueError, match="'raise' or 'collect'"):
        sdp.detect(inputs, errors="ignore")


# -------------------------------------------------------------------------------------------- text
def test_text_inputs_are_cleaned_or_refused_clearly(sdp) -> None:
    twin = sdp.prepared("bot\x00tle\n\x1b[31m \t🍾 flaschen")
    assert twin.category == "bot tle [31m 🍾 flaschen"  # control characters gone, unicode and emoji kept
    assert twin.detect(make_image(16, 16)).category == twin.category
    for bad, problem in (
        ({"abnormal_states": [None]}, "a prompt state must be a string, got NoneType"),
        ({"abnormal_states": []}, "abnormal states is empty"),
        ({"normal_states": ["  \n "]}, "empty state word"),
        ({"abnormal_states": [f"s{i}" for i in range(5000)]}, "more than the limit of 4096"),
        ({"abnormal_states": ["very " * 80 + "broken"]}, "longer than the text encoder's 77 tokens"),
    ):
        with pytest.raises(PromptError, match=problem):
            sdp.prepared("bottle", **bad)
    for category in ("", " \t\n", "\x00\x07"):
        with pytest.raises(PromptError, match="empty category"):
            sdp.prepared(category)
    with pytest.raises(PromptError, match="must be a string"):
        sdp.prepared(None)


def test_cli_keeps_control_characters_out_of_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = make_image(16, 16)
    image.save(tmp_path / "a.png")
    out = tmp_path / "out"
    status, err = run_cli(
        capsys, "detect", str(tmp_path / "a.png"), "--category", "metal\nnut\x1b\x07", "--methods", "sdp", *TINY,
        "--image-size", "64", "--out", str(out),
    )  # fmt: skip
    assert status == 0, err
    text = (out / "results.json").read_text()
    assert json.loads(text)["category"] == "metal nut" and "\\u001b" not in text and "\\n" not in text
    status, err = run_cli(
        capsys, "detect", str(tmp_path / "a.png"), "--category", "x", "--abnormal-states", "word " * 90,
        "--methods", "sdp", *TINY, "--image-size", "64", "--out", str(out),
    )  # fmt: skip
    assert status == 2 and error_lines(err) == [err.strip()] and "77 tokens" in err


# ------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def sdp_plus_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("checkpoints") / "sdp_plus.safetensors"
    create_detector("sdp_plus", **tiny_settings("sdp_plus")).save_checkpoint(path)
    return path


def malicious_pickle(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when unpickled: stands for any code a checkpoint could run."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps({"linear_layers": Payload()})


def test_bad_checkpoints_are_refused_clearly(sdp_plus_checkpoint: Path, tmp_path: Path) -> None:
    def refusal(path, method: str = "sdp_plus", **settings) -> str:
        with pytest.raises((CheckpointMismatchError, FileNotFoundError)) as info:
            create_detector(method, **tiny_settings(method, **settings), checkpoint=str(path))
        return str(info.value)

    create_detector("sdp_plus", **tiny_settings("sdp_plus"), checkpoint=str(sdp_plus_checkpoint))  # the good one
    data = sdp_plus_checkpoint.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    assert "not a readable safetensors file" in refusal(truncated)
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    assert "not a readable safetensors file" in refusal(noise)
    noise_pth = tmp_path / "noise.pth"
    noise_pth.write_bytes(noise.read_bytes())
    assert "cannot be read safely" in refusal(noise_pth)
    assert "method: this detector has 'adaclip', the checkpoint has 'sdp_plus'" in refusal(
        sdp_plus_checkpoint, "adaclip"
    )
    assert "image_size: this detector has '128'" in refusal(sdp_plus_checkpoint, image_size=128)
    assert "model: this detector has 'zsad-tiny-14'" in refusal(sdp_plus_checkpoint, model="zsad-tiny-14")
    assert "neither an existing file nor a released-weights name" in refusal(tmp_path / "absent.safetensors")


def test_a_pickle_that_would_run_code_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "the-payload-ran"
    payload = tmp_path / "evil.pth"
    payload.write_bytes(malicious_pickle(marker))
    with pytest.raises(CheckpointMismatchError, match="cannot be read safely with torch.load"):
        create_detector("sdp_plus", **tiny_settings("sdp_plus"), checkpoint=str(payload))
    assert not marker.exists()
    pickle.loads(payload.read_bytes())  # the control: unpickled without weights_only, it does run
    assert marker.exists()


# ------------------------------------------------------------------------------------------ datasets
def test_eval_names_and_counts_bad_files_and_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = make_synthetic_dataset(tmp_path / "data", "mvtec", n_good=3, n_bad=3, size=32)
    category = tmp_path / "data" / "widget"
    broken = category / "test" / "blob" / "001.png"
    broken.write_bytes(broken.read_bytes()[:60])  # unreadable, in the middle of the category
    small_mask = category / "ground_truth" / "blob" / "002_mask.png"
    Image.open(small_mask).resize((16, 16)).save(small_mask)  # another size than its image
    out = tmp_path / "eval"
    status, err = run_cli(
        capsys, "eval", "--methods", "sdp", "--data", spec, "--out", str(out), *TINY, "--image-size", "64",
        "--no-progress",
    )  # fmt: skip
    assert status in (0, 1), err
    assert "2 image(s) failed" in err
    scores = (out / "scores.csv").read_text()
    assert "001.png" in scores and "002.png" in scores
    results = json.loads((out / "results.json").read_text())
    text = json.dumps(results)
    assert "is 16x16 but its image" in text and "002.png" in text and "corrupt or truncated" in text


@pytest.mark.parametrize("layout", ["missing", "empty"])
def test_eval_and_train_refuse_missing_or_empty_folders_in_one_line(
    layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "data"
    if layout == "empty":
        folder.mkdir()
    for argv in (
        ["eval", "--methods", "sdp", "--data", f"mvtec:{folder}", "--out", str(tmp_path / "o"), *TINY],
        ["train", "sdp_plus", "--data", f"mvtec:{folder}", "--out", str(tmp_path / "c.safetensors"), *TINY],
    ):
        status, err = run_cli(capsys, *argv)
        assert status == 2 and len(error_lines(err)) == 1 and str(folder) in err, err


def test_training_without_masks_is_refused_and_eval_reports_image_metrics_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_synthetic_dataset(tmp_path / "data", "mvtec", n_good=2, n_bad=2, size=32)
    shutil.rmtree(tmp_path / "data" / "widget" / "ground_truth")  # anomalies without masks
    status, err = run_cli(capsys, "train", "sdp_plus", "--data", spec, "--out", str(tmp_path / "c.safetensors"), *TINY)
    assert status == 2 and "no pixel masks" in err
    status, err = run_cli(
        capsys, "eval", "--methods", "sdp", "--data", spec, "--out", str(tmp_path / "o"), *TINY,
        "--image-size", "64", "--no-progress",
    )  # fmt: skip
    assert status == 0, err
    assert (
        "pixel metrics not computed: the dataset has no ground-truth masks"
        in (tmp_path / "o" / "results.md").read_text()
    )


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def two_images(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    make_image(20, 24, seed=1).save(folder / "a.png")
    make_image(18, 30, seed=2).save(folder / "b.jpg")
    return folder


def test_detect_goes_on_past_missing_inputs_and_empty_folders(
    two_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    status, err = run_cli(
        capsys, "detect", str(tmp_path / "gone.png"), str(two_images), str(tmp_path / "empty"), "--category", "x",
        "--methods", "sdp", *TINY, "--image-size", "64", "--out", str(out),
    )  # fmt: skip
    assert status == 1
    payload = json.loads((out / "results.json").read_text())
    statuses = {Path(entry["path"]).name: entry["status"] for entry in payload["images"]}
    assert statuses == {"gone.png": "error", "empty": "error", "a.png": "ok", "b.jpg": "ok"}
    assert len(payload["failed"]) == 2 and "2 of 4 images processed" in err
    assert (out / "a__sdp.npy").is_file() and (out / "b__sdp.png").is_file()


def test_detect_writes_every_file_with_the_same_umask_permissions(
    two_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        status, err = run_cli(
            capsys, "detect", str(two_images), "--category", "x", "--methods", "sdp", *TINY, "--image-size", "64",
            "--out", str(out),
        )  # fmt: skip
        create_detector("sdp_plus", **tiny_settings("sdp_plus")).save_checkpoint(out / "trained.safetensors")
    finally:
        os.umask(previous)
    assert status == 0, err
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in out.iterdir()}
    assert set(modes.values()) == {0o644}, modes
    assert {"results.json", "trained.safetensors", "a__sdp.png", "a__sdp.npy"} <= set(modes)


def test_detect_caps_the_map_size_of_huge_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_image(300, 400, seed=4).save(tmp_path / "big.jpg")
    out = tmp_path / "out"
    status, err = run_cli(
        capsys, "detect", str(tmp_path / "big.jpg"), "--category", "x", "--methods", "sdp", *TINY,
        "--image-size", "64", "--max-map-pixels", "10000", "--out", str(out),
    )  # fmt: skip
    assert status == 0, err
    entry = json.loads((out / "results.json").read_text())["images"][0]
    assert entry["image_size"] == [300, 400]
    assert entry["results"]["sdp"]["map_shape"] == [75, 100] and entry["map_scale"] == 0.25  # factor 4
    assert np.load(out / "big__sdp.npy").shape == (75, 100)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--image-size", "100000"], "image size 100000 is outside 1..2048"),
        (["--checkpoint", "x.safetensors"], "learnable methods only"),
        (["--methods", "sdp_plus,adaclip", "--checkpoint", "x.safetensors"], "say which one it is for"),
        (["--methods", "sdp_plus", "--checkpoint", "adaclip=x.safetensors"], "adaclip is not among the methods run"),
        (["--methods", "sdp,sdp_plus", "--checkpoint", "sdp=x.safetensors"], "sdp takes no checkpoint"),
        (["--methods", "sdp_plus", "--checkpoint", "sdp_plus=a", "--checkpoint", "sdp_plus=b"], "two checkpoints"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(
    arguments: list[str], message: str, two_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = arguments if "--methods" in arguments else ["--methods", "sdp", *arguments]
    status, err = run_cli(
        capsys, "detect", str(two_images), "--category", "x", *TINY, *settings, "--out", str(tmp_path / "o")
    )
    assert status == 2 and message in err and error_lines(err) == [err.strip()], err
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_per_learnable_method(
    sdp_plus_checkpoint: Path, two_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adaclip = tmp_path / "adaclip.safetensors"
    create_detector("adaclip", model="zsad-tiny", image_size=64, device="cpu").save_checkpoint(adaclip)
    out = tmp_path / "out"
    status, err = run_cli(
        capsys, "detect", str(two_images / "a.png"), "--category", "x", "--methods", "adaclip,sdp_plus", *TINY,
        "--image-size", "64", "--checkpoint", f"adaclip={adaclip}", "--checkpoint", f"sdp_plus={sdp_plus_checkpoint}",
        "--out", str(out),
    )  # fmt: skip
    assert status == 0, err
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["adaclip"]["checkpoint"] == str(adaclip)
    assert settings["sdp_plus"]["checkpoint"] == str(sdp_plus_checkpoint)
    status, err = run_cli(  # a bare path when exactly one learnable method runs
        capsys, "detect", str(two_images / "a.png"), "--category", "x", "--methods", "sdp,sdp_plus", *TINY,
        "--image-size", "64", "--checkpoint", str(sdp_plus_checkpoint), "--out", str(out),
    )  # fmt: skip
    assert status == 0, err


def test_internal_errors_are_one_line_exit_3_not_usage_errors(
    two_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from zsad_core.methods.clipad import SDPModel

    def broken(self, pixels, text, passes=None):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(SDPModel, "forward", broken)
    out = tmp_path / "out"
    status, err = run_cli(
        capsys, "detect", str(two_images), "--category", "x", "--methods", "sdp", *TINY, "--image-size", "64",
        "--out", str(out),
    )  # fmt: skip
    assert status == 3 and err.strip().splitlines()[-1].startswith("internal error: RuntimeError: simulated bug")
    assert "usage" not in err
    assert json.loads((out / "results.json").read_text())["aborted"] == "RuntimeError: simulated bug"

    def out_of_memory(self, pixels, text, passes=None):
        raise MemoryError

    monkeypatch.setattr(SDPModel, "forward", out_of_memory)
    status, err = run_cli(
        capsys, "detect", str(two_images), "--category", "x", "--methods", "sdp", *TINY, "--out", str(out)
    )
    assert status == 3 and "error: out of memory" in err and "--batch-size" in err


def test_warnings_do_not_leak_pillows_wording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A picture over Pillow's own 'bomb' limit but under ours decodes without Pillow's DOS warning."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    make_image(40, 50).save(tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(tmp_path / "a.png").size == (50, 40)


# ------------------------------------------------------------------------------------ property-based
WRITABLE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F")
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")


def image_in_mode(mode: str, height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode in ("I", "F"):
        values = rng.normal(0, 1e4, (height, width))
        return Image.fromarray(values.astype(np.int32 if mode == "I" else np.float32))
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    mode=st.sampled_from(WRITABLE_MODES),
    fmt=st.sampled_from(FORMATS),
    height=st.integers(2, 48),
    width=st.integers(2, 48),
    seed=st.integers(0, 2**16),
)
def test_any_writable_image_gives_a_finite_map_of_its_own_size(sdp, mode, fmt, height, width, seed) -> None:
    """Whatever PIL can write (mode x format x size within the limits) decodes to RGB of the same size
    and yields a finite map of exactly that size; what PIL cannot write is not an input."""
    picture = image_in_mode(mode, height, width, seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Pillow 12: "saving I mode images as PNG"
            data = encode(picture, fmt)
    except (OSError, ValueError, KeyError, TypeError):
        assume(False)
    decoded = load_image(data, name=f"{mode}.{fmt.lower()}")
    assert decoded.mode == "RGB" and decoded.size == (width, height)
    result = sdp.detect(data)
    assert result.anomaly_map.shape == (height, width)
    assert np.isfinite(result.anomaly_map).all() and np.isfinite(result.score)


def test_eval_takes_a_checkpoint_per_learnable_method(sdp_plus_checkpoint: Path, tmp_path: Path) -> None:
    from zsad_core.evaluate import EvaluationError, evaluate
    from zsad_core.registry import assign_checkpoints

    both = ["adaclip", "sdp_plus"]
    assert assign_checkpoints({"sdp_plus": "b"}, both) == {"sdp_plus": "b"}
    assert assign_checkpoints(["adaclip=a", "sdp_plus=b"], both) == {"adaclip": "a", "sdp_plus": "b"}
    assert assign_checkpoints("b", ["sdp", "sdp_plus"]) == {"sdp_plus": "b"}
    assert assign_checkpoints("x=y.safetensors", ["sdp_plus"]) == {"sdp_plus": "x=y.safetensors"}  # not a method id
    spec = make_synthetic_dataset(tmp_path / "data", "mvtec", n_good=2, n_bad=2, size=32)
    with pytest.raises(EvaluationError, match="say which one it is for"):
        evaluate(both, spec, tmp_path / "out", checkpoint="x.safetensors", model="zsad-tiny", device="cpu")
    results = evaluate(
        ["sdp", "sdp_plus"], spec, tmp_path / "out", checkpoint=[f"sdp_plus={sdp_plus_checkpoint}"],
        model="zsad-tiny", image_size=64, device="cpu", progress=False,
    )  # fmt: skip
    assert results["settings"]["checkpoint"] == {"sdp_plus": str(sdp_plus_checkpoint)}
