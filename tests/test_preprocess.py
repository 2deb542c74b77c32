"""Image decoding (modes, EXIF, transparency, bit depth, bad files, arrays) and the tensor resize policy."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image
from PIL import Image

from zsad_core.preprocess import ImageError, image_to_tensor, images_to_batch, load_image, resize_normalize

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _encode(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def _sixteen_bit(height: int = 20, width: int = 30) -> Image.Image:
    values = np.linspace(1000, 3000, height * width).reshape(height, width).astype(np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    return image


def _image_in_mode(mode: str, height: int = 20, width: int = 30) -> Image.Image:
    if mode == "I;16":
        return _sixteen_bit(height, width)
    if mode == "P+transparency":
        image = make_image(height, width).convert("P")
        image.info["transparency"] = 0
        return image
    return make_image(height, width, mode=mode)


# ------------------------------------------------------------------------------------------ modes
@pytest.mark.parametrize(
    "mode",
    ["RGB", "L", "LA", "P", "P+transparency", "RGBA", "I;16", "I", "F", "CMYK", "1", "YCbCr", "PA", "LAB", "HSV"],
)
def test_every_mode_becomes_8_bit_rgb(mode: str) -> None:
    image = _image_in_mode(mode)
    decoded = load_image(image)
    assert decoded.mode == "RGB" and decoded.size == (30, 20)
    array = np.asarray(decoded)
    assert array.dtype == np.uint8 and array.shape == (20, 30, 3)


def test_grey_and_bilevel_values_are_kept() -> None:
    grey = Image.fromarray(np.full((4, 5), 100, dtype=np.uint8))
    assert (np.asarray(load_image(grey)) == 100).all()
    bilevel = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).convert("1")
    np.testing.assert_array_equal(np.asarray(load_image(bilevel))[:, :, 0], [[0, 255], [255, 0]])


def test_rgba_is_composited_over_white() -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red -> white
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red -> red
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    rgba[1] = (0, 0, 255, 255)
    decoded = np.asarray(load_image(Image.fromarray(rgba, mode="RGBA"))).astype(int)
    np.testing.assert_array_equal(decoded[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(decoded[0, 1], (255, 0, 0))
    assert np.abs(decoded[0, 2] - 127).max() <= 1
    np.testing.assert_array_equal(decoded[1, 0], (0, 0, 255))
    # the same through a PNG file and through an (H, W, 4) array
    np.testing.assert_array_equal(np.asarray(load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))), decoded)
    np.testing.assert_array_equal(np.asarray(load_image(rgba)), decoded)


def test_palette_transparency_is_composited_over_white() -> None:
    palette_image = Image.new("P", (4, 4), 0)
    palette_image.putpalette([0, 0, 0] + [200, 10, 10] * 255)
    palette_image.putpixel((1, 1), 1)
    palette_image.info["transparency"] = 0  # colour 0 (black) is transparent
    decoded = np.asarray(load_image(_encode(palette_image, "PNG")))
    np.testing.assert_array_equal(decoded[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(decoded[1, 1], (200, 10, 10))


def test_sixteen_bit_images_are_scaled_by_their_own_range(tmp_path: Path) -> None:
    image = _sixteen_bit()
    path = tmp_path / "scan.png"
    image.save(path)
    for source in (image, path, np.asarray(image)):
        decoded = np.asarray(load_image(source))[:, :, 0].astype(float)
        assert decoded.min() == 0 and decoded.max() == 255
        expected = np.round((np.asarray(image, dtype=float) - 1000) / 2000 * 255)
        np.testing.assert_allclose(decoded, expected, atol=1)  # linear in the value, not value / 65535
    constant = Image.fromarray(np.full((4, 4), 4000, dtype=np.uint16))
    assert (np.asarray(load_image(constant)) == 0).all()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data)
    for source in (data, path):
        decoded = load_image(source)
        assert decoded.size == (20, 40)  # width and height swapped
        array = np.asarray(decoded).mean(axis=2)
        assert array[:10].mean() > 200 and array[30:].mean() < 50  # the left band is now on top
    assert load_image(_encode(image, "JPEG")).size == (40, 20)  # no tag: unchanged


# --------------------------------------------------------------------------------------- bad input
def test_corrupt_bytes_name_the_source() -> None:
    with pytest.raises(ImageError, match="upload.png.*not an image"):
        load_image(b"this is not an image at all", name="upload.png")
    with pytest.raises(ImageError, match="empty data"):
        load_image(b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_names_the_file(tmp_path: Path, fmt: str) -> None:
    data = _encode(make_image(64, 64), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=f"{path.name}.*(corrupt|truncated|not an image)"):
        load_image(path)
    assert str(path) in _error_message(path)


def _error_message(source) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source)
    return str(info.value)


def test_empty_missing_and_non_image_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert str(empty) in _error_message(empty) and "empty file" in _error_message(empty)
    missing = tmp_path / "missing.png"
    assert str(missing) in _error_message(missing) and "no such file" in _error_message(missing)
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    assert str(text) in _error_message(text)
    assert "is a folder, not an image file" in _error_message(tmp_path)


def test_too_large_images_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZSAD_MAX_IMAGE_PIXELS", str(20 * 20 - 1))
    path = tmp_path / "big.png"
    make_image(20, 20).save(path)
    message = _error_message(path)
    assert str(path) in message and "20x20" in message and "ZSAD_MAX_IMAGE_PIXELS" in message
    assert "limit" in _error_message(make_image(20, 20))
    assert "limit" in _error_message(np.zeros((20, 20), dtype=np.uint8))
    load_image(make_image(19, 20))  # just under the limit is fine


def test_our_limit_replaces_pillows_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's bomb check (warning above its limit, error above twice it) never fires: ours decides."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # as if 20x20 were a 'bomb' by Pillow's measure
    path = tmp_path / "bomb.png"
    make_image(20, 20).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail the test
        assert load_image(path).size == (20, 20)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored: no process-wide change
    monkeypatch.setenv("ZSAD_MAX_IMAGE_PIXELS", "399")
    message = _error_message(path)
    assert "400 pixels, more than the limit of 399" in message and "DOS" not in message


@pytest.mark.parametrize("size", [(1, 5), (5, 1), (1, 1)])
def test_too_small_images_are_refused(size: tuple[int, int]) -> None:
    assert "too small" in _error_message(make_image(*size))
    load_image(make_image(2, 2))


# ------------------------------------------------------------------------------------------- arrays
def test_arrays_of_every_supported_shape() -> None:
    rng = np.random.default_rng(0)
    grey = (rng.random((6, 7)) * 255).astype(np.uint8)
    colour = (rng.random((6, 7, 3)) * 255).astype(np.uint8)
    decoded_grey = np.asarray(load_image(grey))
    np.testing.assert_array_equal(decoded_grey, np.repeat(grey[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(np.asarray(load_image(grey[:, :, None])), decoded_grey)
    np.testing.assert_array_equal(np.asarray(load_image(colour)), colour)
    np.testing.assert_array_equal(np.asarray(load_image(colour.astype(np.float32) / 255)), colour)
    np.testing.assert_array_equal(np.asarray(load_image(colour.astype(np.float64) / 255)), colour)
    np.testing.assert_array_equal(np.asarray(load_image(grey.astype(np.float32) / 255)), decoded_grey)
    wide_range = np.linspace(-5, 5, 42).reshape(6, 7)  # grey of any range: scaled by its own range
    decoded = np.asarray(load_image(wide_range))[:, :, 0]
    assert decoded.min() == 0 and decoded.max() == 255
    int16 = np.arange(42, dtype=np.int16).reshape(6, 7) * 100 - 2000
    assert np.asarray(load_image(int16))[:, :, 0].max() == 255


@pytest.mark.parametrize(
    "array, problem",
    [
        (np.zeros((4, 4, 2), dtype=np.uint8), "not an image"),
        (np.zeros((4,), dtype=np.uint8), "not an image"),
        (np.zeros((2, 4, 4, 3), dtype=np.uint8), "not an image"),
        (np.full((4, 4, 3), 2.0, dtype=np.float32), "uint8 or float in"),
        (np.full((4, 4, 3), 300, dtype=np.uint16), "uint8 or float in"),
        (np.full((4, 4), np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_bad_arrays(array: np.ndarray, problem: str) -> None:
    with pytest.raises(ImageError, match=problem) as info:
        load_image(array, name="frame-7")
    assert "frame-7" in str(info.value)


# ------------------------------------------------------------------------------------------- resize
def _bicubic_kernel(distance: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(distance)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _resample_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of antialiased bicubic resampling, written out the way Pillow computes them."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = 2.0 * filter_scale
    weights = np.zeros((out_size, in_size))
    for out_index in range(out_size):
        centre = (out_index + 0.5) * scale
        low = max(int(centre - support + 0.5), 0)
        high = min(int(centre + support + 0.5), in_size)
        taps = np.arange(low, high)
        kernel = _bicubic_kernel((taps - centre + 0.5) / filter_scale)
        weights[out_index, low:high] = kernel / kernel.sum()
    return weights


@pytest.mark.parametrize("height, width, size", [(5, 7, 4), (3, 2, 8), (9, 9, 3), (4, 4, 4)])
def test_resize_normalize_matches_a_hand_computation(height: int, width: int, size: int) -> None:
    rng = np.random.default_rng(height * 100 + width)
    image = (rng.random((3, height, width)) * 255).astype(np.uint8)
    actual = resize_normalize(torch.from_numpy(image), size, OPENAI_MEAN, OPENAI_STD)
    assert actual.shape == (3, size, size) and actual.dtype == torch.float32
    rows, cols = _resample_matrix(height, size), _resample_matrix(width, size)
    for channel in range(3):
        plane = image[channel].astype(np.float64) / 255
        resized = np.clip(rows @ plane @ cols.T, 0, 1) if (height, width) != (size, size) else plane
        expected = (resized - OPENAI_MEAN[channel]) / OPENAI_STD[channel]
        np.testing.assert_allclose(actual[channel].numpy(), expected, atol=2e-5)
        # and Pillow's own float resampler agrees with the hand computation
        pillow = Image.fromarray(plane.astype(np.float32)).resize((size, size), Image.Resampling.BICUBIC)
        np.testing.assert_allclose(np.clip(np.asarray(pillow), 0, 1), resized, atol=2e-5)


def test_resize_normalize_pinned_values() -> None:
    # A 2x4 ramp [0, 85, 170, 255] squashed to 2x2 (rows unchanged, columns halved), worked by hand:
    # scale 2, so the bicubic kernel (a = -0.5) is stretched by 2; output column 0 is centred on 1.0
    # and reads inputs 0..3 at kernel distances (j - 1 + 0.5) / 2 = -0.25, 0.25, 0.75, 1.25, i.e.
    # weights 0.8671875, 0.8671875, 0.2265625, -0.0703125 (sum 1.890625); column 1 mirrors them.
    ramp = torch.tensor([0, 85, 170, 255], dtype=torch.uint8).view(1, 1, 4).expand(3, 2, 4).contiguous()
    weights = np.array([0.8671875, 0.8671875, 0.2265625, -0.0703125])
    np.testing.assert_allclose(_bicubic_kernel(np.array([-0.25, 0.25, 0.75, 1.25])), weights)
    left = (0.8671875 * 1 / 3 + 0.2265625 * 2 / 3 - 0.0703125 * 1) / 1.890625  # = 0.19559229
    right = (-0.0703125 * 0 + 0.2265625 * 1 / 3 + 0.8671875 * 2 / 3 + 0.8671875 * 1) / 1.890625  # = 0.80440771
    out = resize_normalize(ramp, 2, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    for channel in range(3):
        np.testing.assert_allclose(out[channel].numpy(), [[left, right], [left, right]], atol=1e-6)
    normalised = resize_normalize(ramp, 2, OPENAI_MEAN, OPENAI_STD)
    np.testing.assert_allclose(normalised[2, 0, 0].item(), (left - OPENAI_MEAN[2]) / OPENAI_STD[2], atol=1e-6)


def test_images_to_batch_squashes_and_reports_sizes() -> None:
    images = [load_image(make_image(37, 53, seed=1)), load_image(make_image(200, 20, seed=2))]
    batch, sizes = images_to_batch(images, 32, OPENAI_MEAN, OPENAI_STD)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.float32
    assert sizes == [(37, 53), (200, 20)]
    torch.testing.assert_close(batch[1], resize_normalize(image_to_tensor(images[1]), 32, OPENAI_MEAN, OPENAI_STD))
    tensor = image_to_tensor(images[0])
    assert tensor.shape == (3, 37, 53) and tensor.dtype == torch.uint8
    # already at the model size: no resampling at all, only normalisation
    exact = resize_normalize(image_to_tensor(load_image(make_image(32, 32))), 32, (0, 0, 0), (1, 1, 1))
    torch.testing.assert_close(exact, image_to_tensor(load_image(make_image(32, 32))).float() / 255)
