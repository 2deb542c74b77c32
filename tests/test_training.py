"""Training: losses, data, loss going down, checkpoints (content, round trip, mismatches), resume, CLI."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from zsad_core import __version__, create_detector
from zsad_core.data import make_synthetic_dataset
from zsad_core.losses import dice_loss, focal_loss
from zsad_core.methods.learnable import CheckpointMismatchError
from zsad_core.preprocess import load_image, resize_normalize
from zsad_core.training import (
    TrainingData,
    add_train_arguments,
    collect_training_samples,
    mosaic,
    run_train,
    state_path_for,
    train,
)

MODEL = "zsad-tiny"
SIZE = 160  # a 10 x 10 grid keeps the steps fast


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> str:
    """12 generated MVTec-format images (2 categories x 3 good + 3 defective), 64 px."""
    root = tmp_path_factory.mktemp("aux") / "mvtec"
    return make_synthetic_dataset(root, "mvtec", categories=("widget", "gadget"), n_good=3, n_bad=3, size=64)


def _detector(model: str = MODEL, image_size: int = SIZE, **settings):
    return create_detector("sdp_plus", model=model, image_size=image_size, device="cpu", **settings)


def _parameters(detector) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in detector.learned.state_dict().items()}


# ------------------------------------------------------------------------------------------ losses
def test_focal_loss_values():
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]])  # (B=2, C=2)
    target = torch.tensor([1, 0])
    p_t = torch.tensor([0.5, 0.9]) + 1e-5  # smoothed one-hot changes p_t by ~1e-5 only
    expected = (-((1 - p_t) ** 2) * p_t.log()).mean()
    torch.testing.assert_close(focal_loss(probs, target), expected, atol=1e-5, rtol=0)
    one_hot = torch.nn.functional.one_hot(target, 2).float()
    torch.testing.assert_close(focal_loss(probs, one_hot), focal_loss(probs, target))
    maps = torch.rand(2, 2, 5, 5).softmax(dim=1)
    mask = (torch.rand(2, 5, 5) > 0.5).float()
    assert focal_loss(maps, mask).dim() == 0
    perfect = torch.stack([1 - mask, mask], dim=1)
    assert focal_loss(perfect, mask) < 1e-6
    with pytest.raises(ValueError, match="target shape"):
        focal_loss(maps, mask[:, :4])


def test_dice_loss_values():
    mask = torch.zeros(2, 4, 4)
    mask[:, :2] = 1
    assert dice_loss(mask, mask) == 0
    empty = torch.zeros(2, 4, 4)
    # 1 - (0 + 1) / (0 + 8 + 1) per sample
    torch.testing.assert_close(dice_loss(empty, mask), torch.tensor(1 - 1 / 9))
    with pytest.raises(ValueError, match="same shape"):
        dice_loss(mask, mask[:, :2])


# -------------------------------------------------------------------------------------------- data
def test_training_data(spec):
    samples = collect_training_samples([spec])
    assert len(samples) == 12
    assert {s.class_name for s in samples} == {"widget", "gadget"}
    assert all(s.mosaic_allowed for s in samples)
    assert all((s.mask_path is None) == (s.label == 0) for s in samples)
    assert len(collect_training_samples([spec], limit=2)) == 4
    data = TrainingData(samples, 96, (0.5,) * 3, (0.5,) * 3, mosaic_prob=0.0, seed=1)
    order = data.epoch_order(0)
    assert sorted(order.tolist()) == list(range(12))
    assert torch.equal(order, TrainingData(samples, 96, (0.5,) * 3, (0.5,) * 3, seed=1).epoch_order(0))
    assert not torch.equal(order, data.epoch_order(1))
    pixels, masks, labels, names = data.batch([0, 5, 11], epoch=0, first_position=0)
    assert pixels.shape == (3, 3, 96, 96) and masks.shape == (3, 96, 96)
    assert labels.tolist() == [samples[i].label for i in (0, 5, 11)]
    assert names == [samples[i].class_name for i in (0, 5, 11)]
    for mask, label in zip(masks, labels):
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert bool(mask.any()) == bool(label)


def test_mosaic_quadrants():
    pixels = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(4)])
    masks = torch.zeros(4, 8, 8)
    masks[3] = 1
    image, mask = mosaic(pixels, masks)
    assert image.shape == (3, 8, 8) and mask.shape == (8, 8)
    assert image[0, 0, 0] == pytest.approx(0.0, abs=1e-4) and image[0, 7, 7] == pytest.approx(3.0, abs=1e-4)
    assert mask[4:, 4:].all() and not mask[:4].any() and not mask[:, :4].any()


def test_mosaic_augmentation_is_seeded(spec):
    samples = collect_training_samples([spec])
    always = TrainingData(samples, 64, (0.5,) * 3, (0.5,) * 3, mosaic_prob=1.0, seed=3)
    again = TrainingData(samples, 64, (0.5,) * 3, (0.5,) * 3, mosaic_prob=1.0, seed=3)
    never = TrainingData(samples, 64, (0.5,) * 3, (0.5,) * 3, mosaic_prob=0.0, seed=3)
    a, b, plain = always.batch([0, 1], 0, 0), again.batch([0, 1], 0, 0), never.batch([0, 1], 0, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], plain[0])
    with pytest.raises(ValueError, match="mosaic probability"):
        TrainingData(samples, 64, (0.5,) * 3, (0.5,) * 3, mosaic_prob=2.0)


def test_training_images_follow_the_resize_policy(spec):
    samples = collect_training_samples([spec])
    decoded = load_image(samples[3].image_path)  # 64 px, reduced to 40 px: the policies differ
    loaded = []
    for resize in ("pil-bicubic", "tensor-bicubic", "tensor-bicubic-unclamped"):
        image, _ = TrainingData(samples, 40, (0.5,) * 3, (0.25,) * 3, resize=resize).load(3)
        expected = resize_normalize(decoded, 40, (0.5,) * 3, (0.25,) * 3, resize)
        torch.testing.assert_close(image, expected, rtol=0, atol=0)
        assert all(not torch.equal(image, other) for other in loaded)
        loaded.append(image)
    with pytest.raises(ValueError, match="unknown resize policy"):
        TrainingData(samples, 64, (0.5,) * 3, (0.5,) * 3, resize="bilinear")


def test_data_errors(tmp_path):
    image_only = make_synthetic_dataset(tmp_path / "headct", "headct", n_good=2, n_bad=2, size=64)
    with pytest.raises(ValueError, match="no pixel masks"):
        collect_training_samples([image_only])
    with pytest.raises(ValueError, match="training-free"):
        train("sdp", image_only, tmp_path / "x.safetensors", model=MODEL, device="cpu", progress=False)


# ---------------------------------------------------------------------------------------- training
def test_training_lowers_loss_and_round_trips(spec, tmp_path):
    detector = _detector()
    samples = collect_training_samples([spec])
    mean, std = detector.backbone.mean_std
    fixed = TrainingData(samples, detector.config.image_size, mean, std, resize=detector.config.resize).batch(
        [0, 2, 4, 6, 8, 10], 0, 0
    )

    def fixed_loss() -> float:
        with torch.no_grad():
            output = detector.training_forward(fixed[0], fixed[3])
            return float(detector.training_loss(output, fixed[1], fixed[2]))

    before = fixed_loss()
    out = tmp_path / "sdp_plus.safetensors"
    summary = train(detector, [spec], out, steps=12, batch_size=4, lr=1e-2, progress=False)
    after = fixed_loss()
    assert after < before * 0.9, (before, after)
    assert summary["steps"] == 12 and len(summary["losses"]) == 12
    assert summary["epochs"] == pytest.approx(4.0)
    assert summary["final_loss"] == summary["losses"][-1] and math.isfinite(summary["final_loss"])
    assert detector.trained

    # the file holds only the learned parameters, with the documented metadata
    with safe_open(str(out), framework="pt") as handle:
        keys = set(handle.keys())
        metadata = handle.metadata()
    assert keys == set(detector.learned.state_dict())
    assert metadata["format"] == "zsad-learned-v1" and metadata["zsad_version"] == __version__
    assert metadata["method"] == "sdp_plus" and metadata["model"] == MODEL
    assert metadata["image_size"] == str(SIZE) and metadata["quick_gelu"] == "false"
    assert json.loads(metadata["layers"]) == [2, 4, 6, 8]
    assert metadata["reference_aliasing"] == "true"
    assert json.loads(metadata["training_data"]) == [spec]
    assert metadata["training_steps"] == "12" and metadata["training_seed"] == "42"
    assert metadata["training_batch_size"] == "4"
    assert json.loads(metadata["training_optimizer"]) == {"name": "adam", "lr": 0.01}
    assert metadata["training_resize"] == "pil-bicubic" == detector.config.resize  # the method's policy

    # loading gives identical maps
    loaded = _detector(checkpoint=str(out)).prepare("widget")
    assert loaded.trained
    detector.prepare("widget")
    images = [str(s.image_path) for s in samples[:3]]
    for a, b in zip(detector.detect(images), loaded.detect(images)):
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
        assert a.score == b.score

    # another backbone, size or layer set: refused, naming the setting
    for settings, setting in (
        ({"image_size": 224}, "image_size"),
        ({"layers": (1, 3, 5, 7)}, "layers"),
        ({"reference_aliasing": False}, "reference_aliasing"),
        ({"model": "zsad-tiny-14", "image_size": SIZE}, "model"),
    ):
        other = _detector(**settings)
        with pytest.raises(CheckpointMismatchError, match=f"{setting}: this detector has"):
            other.load_checkpoint(out)


def test_resume_matches_uninterrupted_run(spec, tmp_path):
    common = dict(batch_size=5, lr=1e-2, mosaic_prob=0.5, checkpoint_every=2, progress=False)  # 3 batches/epoch
    full = _detector()
    train(full, spec, tmp_path / "full.safetensors", steps=7, **common)

    resumed = _detector()
    out = tmp_path / "resumed.safetensors"
    first = train(resumed, spec, out, steps=4, **common)
    state = torch.load(state_path_for(out), map_location="cpu", weights_only=True)
    assert state["step"] == 4 and state["epoch"] == 1 and len(state["losses"]) == 4
    assert sorted(state["order"].tolist()) == list(range(12))
    assert set(state["learned"]) == set(resumed.learned.state_dict())
    assert {"optimizer", "scaler", "rng", "config"} <= set(state)

    fresh = _detector()  # a new process would start from the seeded initialisation
    second = train(fresh, spec, out, steps=7, resume=True, **common)
    assert second["steps"] == 7 and second["losses"][:4] == first["losses"]
    for name, value in _parameters(full).items():
        assert torch.equal(value, _parameters(fresh)[name]), name

    with pytest.raises(ValueError, match="'batch_size' differs"):
        train(_detector(), spec, out, steps=8, resume=True, **{**common, "batch_size": 4})
    with pytest.raises(FileNotFoundError, match="no training state"):
        train(_detector(), spec, tmp_path / "never.safetensors", steps=1, resume=True, **common)


def test_worker_processes_change_no_number(spec, tmp_path):
    """Decoding in 2 worker processes or in this one gives the same losses and trained weights."""
    common = dict(steps=5, batch_size=5, lr=1e-2, mosaic_prob=0.5, progress=False)  # mosaic: partner draws too
    here, workers = _detector(), _detector()
    a = train(here, spec, tmp_path / "here.safetensors", num_workers=0, **common)
    b = train(workers, spec, tmp_path / "workers.safetensors", num_workers=2, **common)
    assert a["losses"] == b["losses"]
    for name, value in _parameters(here).items():
        assert torch.equal(value, _parameters(workers)[name]), name
    with pytest.raises(ValueError, match="num_workers"):
        train(_detector(), spec, tmp_path / "x.safetensors", steps=1, num_workers=-1, progress=False)


def test_unreadable_images_are_skipped_and_named_once_with_workers(tmp_path):
    spec = make_synthetic_dataset(tmp_path / "aux", "mvtec", categories=("widget",), n_good=3, n_bad=3, size=64)
    broken = next(s.image_path for s in collect_training_samples([spec]) if s.label == 0)
    broken.write_bytes(broken.read_bytes()[:60])
    out = tmp_path / "x.safetensors"
    with pytest.warns(UserWarning, match="skipping") as caught:
        summary = train(_detector(), spec, out, steps=4, batch_size=3, num_workers=2, progress=False)
    assert list(summary["unreadable"]) == [str(broken)]
    assert sum("skipping" in str(w.message) for w in caught) == 1


def test_argument_checks(spec, tmp_path):
    with pytest.raises(ValueError, match=".safetensors"):
        train(_detector(), spec, tmp_path / "x.pt", steps=1, progress=False)
    with pytest.raises(ValueError, match="steps"):
        train(_detector(), spec, tmp_path / "x.safetensors", steps=0, progress=False)
    with pytest.warns(UserWarning, match="AMP"):
        train(_detector(), spec, tmp_path / "x.safetensors", steps=1, batch_size=2, amp=True, progress=False)


def test_cli(spec, tmp_path, capsys):
    parser = add_train_arguments(argparse.ArgumentParser())
    out = tmp_path / "cli.safetensors"
    args = parser.parse_args(
        [
            "sdp_plus",
            "--data",
            spec,
            "--out",
            str(out),
            "--model",
            MODEL,
            "--device",
            "cpu",
            "--image-size",
            str(SIZE),
            "--steps",
            "2",
            "--batch-size",
            "3",
            "--no-progress",
        ]
    )
    assert run_train(args) == 0
    assert out.is_file() and state_path_for(out).is_file()
    assert "trained sdp_plus: 2 steps" in capsys.readouterr().out
    args = parser.parse_args(["sdp_plus", "--data", "nope:/x", "--out", str(out), "--model", MODEL, "--device", "cpu"])
    assert run_train(args) == 2
    assert "unknown dataset format" in capsys.readouterr().err


def test_cli_accepts_method_option_and_comma_separated_data(spec, tmp_path, capsys):
    """The issue's form: ``train --method sdp_plus --data mvtec:/a,mvtec:/b``."""
    parser = add_train_arguments(argparse.ArgumentParser())
    out = tmp_path / "cli.safetensors"
    args = parser.parse_args(
        ["--method", "sdp_plus", "--data", f"{spec},{spec}", "--out", str(out), "--model", MODEL,
         "--device", "cpu", "--image-size", str(SIZE), "--steps", "1", "--batch-size", "2", "--no-progress"]
    )
    assert run_train(args) == 0
    assert "trained sdp_plus: 1 steps" in capsys.readouterr().out
    with safe_open(str(out), "pt") as handle:
        assert json.loads(handle.metadata()["training_data"]) == [spec, spec]
    conflicting = parser.parse_args(["sdp_plus", "--method", "adaclip", "--data", spec, "--out", str(out)])
    assert run_train(conflicting) == 2
    assert "exactly one learnable method" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content",
    [b"\x00\x01garbage" * 50, b"", "foreign", "damaged", "pickle"],
    ids=["random-bytes", "empty", "foreign-dict", "damaged-state", "malicious-pickle"],
)
def test_resume_from_a_bad_state_file_is_one_line(spec, tmp_path, capsys, content):
    """A corrupt, empty, foreign or damaged OUT.state.pt: exit 2, one 'error:' line naming it, no traceback."""
    from zsad_core.cli import main

    out = tmp_path / "run.safetensors"
    state = state_path_for(out)
    ran = tmp_path / "pickle-ran"
    if content == "foreign":
        torch.save({"weights": torch.zeros(3)}, state)
    elif content == "damaged":  # our format tag, nothing else
        from zsad_core.training import STATE_FORMAT

        torch.save({"format": STATE_FORMAT, "config": {}}, state)
    elif content == "pickle":
        state.write_bytes(_malicious_pickle(ran))
    else:
        state.write_bytes(content)
    argv = ["train", "sdp_plus", "--data", spec, "--out", str(out), "--model", MODEL, "--device", "cpu"]
    status = main([*argv, "--image-size", str(SIZE), "--steps", "2", "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("error:") and str(state) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not ran.exists()  # the pickle's code never ran
    if content == "pickle":  # ... though it does run when unpickled without weights_only: the payload is live
        import pickle

        pickle.loads(state.read_bytes())
        assert ran.exists()


def _malicious_pickle(marker) -> bytes:
    """A pickle that creates ``marker`` when unpickled (the classic os.system-style payload, harmless here)."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps(Payload())
