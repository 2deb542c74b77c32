"""The data generator (zsad_core.data.synthetic): determinism, exact masks, the split, ``synth``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image

from zsad_core.cli import main
from zsad_core.data import load_mask, open_dataset
from zsad_core.data.synthetic import (
    CATEGORIES,
    CATEGORY_INFO,
    CATEGORY_SPLIT,
    DEFECTS,
    HELDOUT_CATEGORIES,
    TRAIN_CATEGORIES,
    caption,
    category_defects,
    generator_category,
    list_categories,
    render_sample,
)

SIZE = 96
ALL_PAIRS = [(c, d) for c in CATEGORIES for d in category_defects(c)]


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(-1)


# ------------------------------------------------------------------------------------ catalogue
def test_catalogue_sizes_and_applicability():
    assert len(CATEGORIES) >= 12 and len(DEFECTS) >= 6
    kinds = {CATEGORY_INFO[c].kind for c in CATEGORIES}
    assert kinds == {"texture", "object"}
    assert {"scratch", "crack", "hole", "stain", "contamination", "missing_part", "bent", "colour_shift"} <= set(
        DEFECTS
    )
    used = set()
    for c in CATEGORIES:
        defects = category_defects(c)
        assert len(defects) >= 4 and set(defects) <= set(DEFECTS)
        used |= set(defects)
        if CATEGORY_INFO[c].kind == "texture":  # only objects have parts to lose or bend
            assert "missing_part" not in defects and "bent" not in defects
    assert used == set(DEFECTS)


def test_split_is_fixed_disjoint_and_covers_everything():
    assert set(CATEGORY_SPLIT) == set(CATEGORIES)
    assert list_categories("train") == list(TRAIN_CATEGORIES)
    assert list_categories("heldout") == list(HELDOUT_CATEGORIES)
    assert list_categories() == list(CATEGORIES)
    assert not set(TRAIN_CATEGORIES) & set(HELDOUT_CATEGORIES)
    assert set(TRAIN_CATEGORIES) | set(HELDOUT_CATEGORIES) == set(CATEGORIES)
    assert len(TRAIN_CATEGORIES) >= 8 and len(HELDOUT_CATEGORIES) >= 4
    assert {CATEGORY_INFO[c].kind for c in HELDOUT_CATEGORIES} == {"texture", "object"}
    # the split is data: these names are what the shipped models were (will be) trained on
    assert HELDOUT_CATEGORIES == ("wood", "striped_fabric", "washer", "bottle_cap", "pill")
    # every held-out defect type is seen on some training category
    seen = {d for c in TRAIN_CATEGORIES for d in category_defects(c)}
    assert {d for c in HELDOUT_CATEGORIES for d in category_defects(c)} <= seen
    with pytest.raises(ValueError, match="unknown split"):
        list_categories("test")


def test_captions():
    assert caption("striped_fabric", "scratch") == "a photo of a scratched striped fabric"
    assert caption("metal_plate", "hole") == "a photo of a metal plate with a hole"
    assert caption("washer") == "a photo of a flawless metal washer"
    assert caption("tiles", "crack") == "a photo of cracked tiles"
    with pytest.raises(ValueError, match="unknown defect"):
        caption("tiles", "nope")


# ---------------------------------------------------------------------------------- rendering
def test_deterministic_for_a_seed():
    for category in ("woven_fabric", "circuit_board", "screw"):
        a, ma = render_sample(category, 5, seed=1, size=SIZE, defect="contamination")
        b, mb = render_sample(category, 5, seed=1, size=SIZE, defect="contamination")
        assert a.tobytes() == b.tobytes() and (ma == mb).all()
        assert (
            render_sample(category, 5, seed=2, size=SIZE)[0].tobytes()
            != render_sample(category, 5, 1, SIZE)[0].tobytes()
        )
        assert (
            render_sample(category, 6, seed=1, size=SIZE)[0].tobytes()
            != render_sample(category, 5, 1, SIZE)[0].tobytes()
        )


def test_deterministic_across_processes():
    """No dependence on Python's per-process hash() seed."""
    code = "from zsad_core.data.synthetic import render_sample as r; import hashlib; " \
           "print(hashlib.sha256(r('pill', 3, 7, 64, 'crack')[0].tobytes()).hexdigest())"  # fmt: skip
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": str(k)},
            check=True,
        ).stdout  # fmt: skip
        for k in (1, 2)
    }
    assert len(digests) == 1
    import hashlib

    assert digests.pop().strip() == hashlib.sha256(render_sample("pill", 3, 7, 64, "crack")[0].tobytes()).hexdigest()


@pytest.mark.parametrize(("category", "defect"), ALL_PAIRS)
def test_every_defect_renders_with_an_exact_mask(category, defect):
    for index in (0, 1):
        good, empty = render_sample(category, index, seed=0, size=SIZE)
        assert good.shape == (SIZE, SIZE, 3) and good.dtype == np.uint8 and not empty.any()
        bad, mask = render_sample(category, index, seed=0, size=SIZE, defect=defect)
        assert mask.dtype == bool and mask.shape == (SIZE, SIZE)
        # exact: no change outside the mask, a change at every mask pixel
        assert (_changed(bad, good) == mask).all()
        assert 0 < mask.sum() < 0.5 * mask.size


def test_samples_vary_and_look_like_pictures():
    for category in CATEGORIES:
        images = [render_sample(category, i, seed=0, size=64)[0].astype(np.float32) for i in range(3)]
        assert all(np.abs(images[0] - other).mean() > 5 for other in images[1:]), category  # not the same piece
        for image in images:
            assert 5 < image.mean() < 250 and image.std() > 3, category  # neither blank nor saturated


def test_non_square_and_small_sizes():
    for size in ((48, 40), (40, 90), 16):
        for category in ("hex_nut", "tiles"):
            bad, mask = render_sample(category, 0, 0, size, "scratch")
            good, _ = render_sample(category, 0, 0, size)
            h, w = (size, size) if isinstance(size, int) else size
            assert bad.shape == (h, w, 3) and mask.any() and (_changed(bad, good) == mask).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown category"):
        render_sample("zzz")
    with pytest.raises(ValueError, match="does not apply"):
        render_sample("woven_fabric", defect="missing_part")
    with pytest.raises(ValueError, match=">= 0"):
        render_sample("pill", seed=-1)


def test_fast_enough():
    render_sample("circuit_board", 0, 0, 256, "missing_part")  # warm-up
    started = time.perf_counter()
    count = 0
    for category in CATEGORIES:
        render_sample(category, 1, 0, 256)
        render_sample(category, 1, 0, 256, category_defects(category)[0])
        count += 2
    per_sample = (time.perf_counter() - started) / count
    assert per_sample < 0.25, per_sample  # ~0.04 s measured; generous for a busy machine


def test_dataset_names_map_to_generator_categories():
    assert generator_category("metal_nut") == "hex_nut" and generator_category("pill") == "pill"
    assert generator_category("widget") == generator_category("widget") in CATEGORIES


# ------------------------------------------------------------------------------- synth command
def test_synth_command_writes_the_mvtec_layout(tmp_path, capsys):
    out = tmp_path / "held"
    status = main(["synth", "--split", "heldout", "--out", str(out), "--per-category", "2", "--size", "64",
                   "--seed", "3", "--categories", "pill,wood", "--no-progress"])  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.out.strip() == f"mvtec:{out}"
    ds = open_dataset(f"mvtec:{out}")
    assert ds.categories() == ["pill", "wood"]
    for category in ("pill", "wood"):
        defects = category_defects(category)
        assert ds.counts()[category] == (2, 2 * len(defects))
        assert {s.defect for s in ds.samples[category]} == {"good", *defects}
        assert len(list((out / category / "train" / "good").glob("*.png"))) == 2
    assert ds.has_masks and ds.has_image_labels
    for s in ds:
        if s.label:
            raw = np.asarray(Image.open(s.mask_path))
            assert set(np.unique(raw)) == {0, 255}
            assert load_mask(s.mask_path).shape == (64, 64)
    # the written files are the rendered samples (indices: train goods, test goods, then defects)
    first_defect = category_defects("pill")[0]
    first = next(s for s in ds.samples["pill"] if s.defect == first_defect and s.image_path.stem == "000")
    image, mask = render_sample("pill", 4, seed=3, size=64, defect=first_defect)
    assert (np.asarray(Image.open(first.image_path)) == image).all()
    assert (load_mask(first.mask_path) == mask).all()
    record = json.loads((out / "synth.json").read_text())
    assert record["seed"] == 3 and record["split"] == "heldout" and set(record["categories"]) == {"pill", "wood"}


def test_synth_train_split_and_reproducible(tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["synth", "--split", "train", "--out", str(tmp_path / name), "--per-category", "1",
                     "--size", "32", "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    ds = open_dataset(f"mvtec:{tmp_path / 'a'}")
    assert ds.categories() == sorted(TRAIN_CATEGORIES)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "X"], "--split is required"),
        (["--split", "test", "--out", "X"], "--split must be"),
        (["--split", "train"], "--out is required"),
        (["--split", "train", "--out", "X", "--per-category", "0"], "--per-category must be >= 1"),
        (["--split", "train", "--out", "X", "--seed", "-1"], "--seed must be >= 0"),
        (["--split", "train", "--out", "X", "--seed", "x"], "--seed expects a whole number"),
        (["--split", "train", "--out", "X", "--size", "8"], "size must be between"),
        (["--split", "train", "--out", "X", "--categories", "pill"], "not in split 'train'"),
        (["--split", "train", "--out", "FILE"], "not a folder"),
        (["--split", "train", "--out", "FULL"], "not empty"),
    ],
)
def test_synth_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "FULL").mkdir()
    (tmp_path / "FULL" / "keep.txt").write_text("x")
    argv = [str(tmp_path / a) if a in ("X", "FILE", "FULL") else a for a in argv]
    status = main(["synth", *argv, "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "X").exists()
