"""Each method's preprocessing, from the image file on disk, against its reference implementation.

``tests/fixtures/preprocess/{anomalib,clipad,adaclip}.npz`` hold what anomalib's WinCLIP, CLIP-AD and
AdaCLIP's own code make of the PNG files beside them (generator:
``tests/fixtures/generators/preprocess_references.py``, which imports the references from checkouts).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL
import pytest
import torch
from PIL import Image
from torchvision import transforms

from zsad_core import create_detector
from zsad_core.methods.adaclip import AdaCLIPConfig
from zsad_core.methods.base import ModelOutput
from zsad_core.methods.clipad import SDPConfig, SDPPlusConfig
from zsad_core.methods.winclip import WinCLIPConfig
from zsad_core.preprocess import RESIZE_POLICIES, image_to_tensor, images_to_batch, load_image, resize_normalize

FIXTURES = Path(__file__).parent / "fixtures" / "preprocess"
IMAGES = ("small_upsampled", "large_reduced")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# reference -> the config whose default ``resize`` must reproduce it
REFERENCES = {"anomalib": WinCLIPConfig, "clipad": SDPConfig, "adaclip": AdaCLIPConfig}
# Tensor paths: the fixture came from the same torch on another run; a CPU with other SIMD widths may
# sum the (at most 2 * 2 * 100 / 48 + 1 = 9) antialiased bicubic taps in another order: a few float32
# ulps of [0, 1] values (6e-8 each), divided by std >= 0.26, stays below 2e-6. Measured: 0.
TENSOR_TOLERANCE = 2e-6


def _reference(name: str) -> np.lib.npyio.NpzFile:
    return np.load(FIXTURES / f"{name}.npz")


def _decoded(stem: str) -> Image.Image:
    return load_image(FIXTURES / f"{stem}.png")


def test_each_method_defaults_to_its_reference_policy() -> None:
    assert WinCLIPConfig().resize == "tensor-bicubic-unclamped"  # anomalib resizes float tensors, no clamp
    for config in (SDPConfig, SDPPlusConfig, AdaCLIPConfig):  # CLIP-AD and AdaCLIP resize PIL images
        assert config().resize == "pil-bicubic"
    with pytest.raises(ValueError, match="unknown resize policy 'bilinear'; choose from pil-bicubic"):
        SDPConfig(resize="bilinear")
    with pytest.raises(ValueError, match="unknown resize policy"):
        AdaCLIPConfig(resize="pil")  # its own __post_init__ runs the shared check too


@pytest.mark.parametrize("reference", sorted(REFERENCES))
def test_preprocessing_from_file_equals_the_reference(reference: str) -> None:
    fixture = _reference(reference)
    size = int(fixture["size"])
    policy = REFERENCES[reference]().resize
    versions = json.loads(str(fixture["versions"]))
    if policy == "pil-bicubic" and versions["pillow"] != PIL.__version__:
        # Pillow's resampler changes between releases (methods.md §1.1): the fixture holds Pillow's
        # output of its generator's version; the torchvision test below runs on any version.
        pytest.skip(
            f"{reference}.npz was made with Pillow {versions['pillow']}, this is {PIL.__version__}: "
            "regenerate it with tests/fixtures/generators/preprocess_references.py"
        )
    for stem in IMAGES:
        ours = resize_normalize(_decoded(stem), size, OPENAI_MEAN, OPENAI_STD, policy).numpy()
        if policy == "pil-bicubic":  # same Pillow, same uint8 pixels, same float32 arithmetic: exact
            np.testing.assert_array_equal(ours, fixture[stem], err_msg=f"{reference} {stem}")
        else:
            np.testing.assert_allclose(ours, fixture[stem], rtol=0, atol=TENSOR_TOLERANCE, err_msg=stem)
        # and every other policy is far from this reference on these images (so the test can fail)
        for other in RESIZE_POLICIES:
            if other != policy:
                theirs = resize_normalize(_decoded(stem), size, OPENAI_MEAN, OPENAI_STD, other).numpy()
                assert np.abs(theirs - fixture[stem]).max() > 0.05, (reference, stem, other)


@pytest.mark.parametrize("size", [48, 240, 518])
def test_pil_policy_equals_torchvision_on_pil_images(size: int) -> None:
    """The transform chain CLIP-AD and AdaCLIP build (``Resize((S, S), BICUBIC)`` on a PIL image,
    ``CenterCrop``, ``ToTensor``, ``Normalize``), rebuilt from torchvision, on any Pillow version;
    at the methods' sizes too (a 13 x 17 image upsampled to 518, where Pillow's rounding matters)."""
    chain = transforms.Compose(
        [
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(OPENAI_MEAN, OPENAI_STD),
        ]
    )
    for stem in IMAGES:
        expected = chain(Image.open(FIXTURES / f"{stem}.png").convert("RGB"))
        ours = resize_normalize(_decoded(stem), size, OPENAI_MEAN, OPENAI_STD, "pil-bicubic")
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)
        # the uint8 tensor input takes the same path
        tensor = image_to_tensor(_decoded(stem))
        torch.testing.assert_close(resize_normalize(tensor, size, OPENAI_MEAN, OPENAI_STD, "pil-bicubic"), ours)


def test_policies_on_a_small_image_upsampled() -> None:
    """What tells the policies apart: Pillow's output is 8-bit; the clamped tensor path stays within
    the normalised image of [0, 1]; the unclamped one overshoots it at the saturated edges."""
    image = _decoded("small_upsampled")
    low = (0 - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    high = (1 - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    out = {p: resize_normalize(image, 240, OPENAI_MEAN, OPENAI_STD, p).numpy() for p in RESIZE_POLICIES}
    levels = out["pil-bicubic"] * np.array(OPENAI_STD)[:, None, None] + np.array(OPENAI_MEAN)[:, None, None]
    np.testing.assert_allclose(levels * 255, np.round(levels * 255), atol=1e-4)  # whole grey levels
    for policy in ("pil-bicubic", "tensor-bicubic"):
        assert (out[policy] >= low[:, None, None] - 1e-6).all() and (out[policy] <= high[:, None, None] + 1e-6).all()
    unclamped = out["tensor-bicubic-unclamped"]
    assert (unclamped < low[:, None, None] - 0.05).any() and (unclamped > high[:, None, None] + 0.05).any()
    np.testing.assert_allclose(
        np.clip(unclamped, low[:, None, None], high[:, None, None]), out["tensor-bicubic"], rtol=0, atol=2e-6
    )  # clamping is the only difference (up to 1/255 vs * (1/255))


@pytest.mark.filterwarnings("ignore:adaclip. no checkpoint loaded")
@pytest.mark.parametrize("method", ["winclip", "sdp", "adaclip"])
def test_detect_feeds_the_model_its_configured_policy(method: str, monkeypatch) -> None:
    """detect() hands the model exactly images_to_batch(..., config.resize) of the decoded file."""
    model = "zsad-tiny-14" if method == "adaclip" else "zsad-tiny"
    size = 56 if method == "adaclip" else 48
    seen: list[torch.Tensor] = []

    def capture(self, pixels: torch.Tensor, text, passes=None) -> ModelOutput:
        seen.append(pixels.cpu())
        return ModelOutput(scores=torch.zeros(len(pixels)), maps=torch.zeros(len(pixels), size, size))

    path = FIXTURES / "small_upsampled.png"
    for policy in RESIZE_POLICIES:
        detector = create_detector(method, model=model, image_size=size, device="cpu", resize=policy)
        monkeypatch.setattr(type(detector.model), "forward", capture)
        monkeypatch.setattr(type(detector), "_prepare_text", lambda self, name, prompts: None)
        detector.prepare("thing").detect(path)
        mean, std = detector.backbone.mean_std
        expected, _ = images_to_batch([load_image(path)], size, mean, std, policy)
        torch.testing.assert_close(seen[-1], expected, rtol=0, atol=0)
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
