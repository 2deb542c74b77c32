"""The shipped example pictures: reproducible from their script, listed, with sound masks.

The pictures come from the package's generator (held-out categories). They are compared pixel by
pixel, not byte by byte: PNG bytes also depend on the zlib that compresses them, the pixels only on
the generator and its seeds.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from zsad_core.data.synthetic import CATEGORY_INFO, HELDOUT_CATEGORIES

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SIZE = 256
MAX_TOTAL_BYTES = 1_500_000  # the app ships them; keep the repository small


def _load_script() -> ModuleType:
    """``assets/make_assets.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("make_assets", ASSETS / "make_assets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.fixture(scope="module")
def committed() -> list[dict[str, str]]:
    return json.loads((ASSETS / "examples.json").read_text())


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    out = tmp_path_factory.mktemp("assets")
    return out, _load_script().generate(out)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_examples_json_lists_existing_files(committed: list[dict[str, str]]) -> None:
    assert [entry["file"] for entry in committed] == [
        "striped_fabric_scratch.png",
        "striped_fabric_good.png",
        "wood_crack.png",
        "washer_missing_part.png",
        "bottle_cap_hole.png",
        "pill_crack.png",
        "pill_good.png",
    ]
    # every example is of a category no model of the project was trained on
    held_out = {CATEGORY_INFO[name].display for name in HELDOUT_CATEGORIES}
    assert {entry["category"] for entry in committed} <= held_out
    for entry in committed:
        assert set(entry) <= {"file", "category", "description", "mask"}
        assert entry["category"].strip() and entry["description"].strip()
        assert (ASSETS / entry["file"]).is_file()
        if "mask" in entry:
            assert entry["mask"] == f"masks/{Path(entry['file']).stem}_mask.png"
            assert (ASSETS / entry["mask"]).is_file()
    assert [entry["file"] for entry in committed if "mask" not in entry] == ["striped_fabric_good.png", "pill_good.png"]
    # nothing else sits in the folder: no unlisted picture (a dataset image must never land here)
    listed = {entry["file"] for entry in committed} | {entry["mask"] for entry in committed if "mask" in entry}
    on_disk = {
        path.relative_to(ASSETS).as_posix()
        for path in ASSETS.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert on_disk == listed | {"README.md", "examples.json", "make_assets.py"}


def test_regenerated_pictures_equal_the_committed_ones(
    committed: list[dict[str, str]], regenerated: tuple[Path, list[dict[str, str]]]
) -> None:
    out, entries = regenerated
    assert entries == committed
    assert json.loads((out / "examples.json").read_text()) == committed
    for entry in committed:
        for key in ("file", "mask"):
            if key in entry:
                np.testing.assert_array_equal(
                    _pixels(out / entry[key]), _pixels(ASSETS / entry[key]), err_msg=entry[key]
                )


def test_pictures_and_masks_are_well_formed(committed: list[dict[str, str]]) -> None:
    total = 0
    for entry in committed:
        with Image.open(ASSETS / entry["file"]) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (SIZE, SIZE))
            pixels = np.asarray(image)
        assert pixels.std() > 10  # a textured picture, not a flat fill
        total += (ASSETS / entry["file"]).stat().st_size
        if "mask" not in entry:
            continue
        with Image.open(ASSETS / entry["mask"]) as mask_image:
            assert (mask_image.mode, mask_image.size) == ("L", (SIZE, SIZE))
            mask = np.asarray(mask_image)
        total += (ASSETS / entry["mask"]).stat().st_size
        assert set(np.unique(mask).tolist()) == {0, 255}, entry["mask"]  # binary and non-empty
        defect = mask == 255
        # a local defect: between 0.1 % and 10 % of the picture, clear of the border
        assert 0.001 < defect.mean() < 0.10, entry["mask"]
        rows, cols = np.nonzero(defect)
        assert rows.min() > 0 and cols.min() > 0 and rows.max() < SIZE - 1 and cols.max() < SIZE - 1
    assert total < MAX_TOTAL_BYTES
