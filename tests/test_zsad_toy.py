"""The shipped proving-ground model ``zsad-toy``: every method finds defects on categories never trained on.

A small held-out set is rendered here (the generator's held-out categories, a seed no training used),
each method runs on ``zsad-toy`` with the checkpoints shipped beside it, and pixel AUROC is computed
per category and averaged (scikit-learn). About a minute on a CPU. Measured when the model was
shipped: WinCLIP 0.771, SDP 0.759, SDP+ 0.810, AdaCLIP 0.823.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from zsad_core import create_detector
from zsad_core.availability import find_checkpoints, method_status, model_status
from zsad_core.backbone import list_project_models, project_model_dir
from zsad_core.data.synthetic import HELDOUT_CATEGORIES, TRAIN_CATEGORIES, category_defects, render_sample

MODEL = "zsad-toy"
CATEGORIES = ("wood", "washer", "pill")  # a texture and two objects, all held out
SEED = 7  # not a seed of any training run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def heldout() -> list[tuple[str, np.ndarray, np.ndarray]]:
    samples = []
    for category in CATEGORIES:
        assert category in HELDOUT_CATEGORIES and category not in TRAIN_CATEGORIES
        for index in range(2):
            samples.append((category, *render_sample(category, index, SEED, 256, None)))
            for defect in category_defects(category):
                samples.append((category, *render_sample(category, 100 + index, SEED, 256, defect)))
    return samples


@pytest.fixture(scope="module")
def pixel_auroc(heldout) -> dict[str, float]:
    """Method -> pixel AUROC, per category then averaged over the categories (the papers' protocol)."""
    scores = {}
    for method in ("winclip", "sdp", "sdp_plus", "adaclip"):
        status = method_status(method, MODEL)
        assert status.available, status.explanation
        settings = {"checkpoint": status.checkpoints[0].source} if status.checkpoints else {}
        detector = create_detector(method, model=MODEL, device="cpu", precision="fp32", **settings)
        per_category: dict[str, tuple[list, list]] = {category: ([], []) for category in CATEGORIES}
        for category, image, mask in heldout:
            result = detector.prepared(category.replace("_", " ")).detect(image)
            per_category[category][0].append(result.anomaly_map.ravel())
            per_category[category][1].append(mask.ravel())
        scores[method] = float(
            np.mean([roc_auc_score(np.concatenate(m), np.concatenate(a)) for a, m in per_category.values()])
        )
    return scores


def test_the_model_ships_in_the_package_with_its_checkpoints_and_record() -> None:
    assert MODEL in list_project_models()
    folder = project_model_dir(MODEL)
    status = model_status(MODEL)
    assert status.available and not status.random_weights
    total = sum(path.stat().st_size for path in folder.iterdir())
    assert total < 32e6  # "all of it at most about 30 MB"
    record = json.loads((folder / "training.json").read_text())
    assert record["training_categories"] == list(TRAIN_CATEGORIES)  # never a held-out category
    for method, size in (("sdp_plus", 240), ("adaclip", 518)):
        (choice,) = find_checkpoints(method, MODEL, size)
        assert choice.source.startswith(str(folder))


def test_every_method_finds_defects_on_held_out_categories(pixel_auroc: dict[str, float]) -> None:
    assert all(value >= 0.65 for value in pixel_auroc.values()), pixel_auroc  # clearly above chance (0.5)


def test_learnable_methods_beat_their_training_free_counterparts(pixel_auroc: dict[str, float]) -> None:
    assert pixel_auroc["sdp_plus"] > pixel_auroc["sdp"], pixel_auroc
    assert pixel_auroc["adaclip"] > pixel_auroc["winclip"], pixel_auroc
