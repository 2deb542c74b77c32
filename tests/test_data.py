"""Dataset readers: generated trees in every layout, odd files, load_mask, meta.json, errors, real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsad_core.data import (
    SYNTHETIC_FORMATS,
    AnomalyDataset,
    DatasetLayoutError,
    Sample,
    list_dataset_formats,
    load_mask,
    make_synthetic_dataset,
    open_dataset,
    split_data_specs,
    write_meta_json,
)

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
INDUSTRIAL = ("mvtec", "mvtec3d", "visa", "meta", "folder")
IMAGE_LABEL = ("headct", "brainmri", "br35h")
IMAGE_MASK = ("isic", "clinicdb", "colondb", "kvasir", "tn3k")


def _check_consistent(ds: AnomalyDataset) -> None:
    """Invariants every reader must satisfy."""
    assert isinstance(ds, AnomalyDataset)
    assert ds.categories() == list(ds.samples)
    for cat, samples in ds.samples.items():
        assert samples, cat
        for s in samples:
            assert isinstance(s, Sample)
            assert s.category == cat
            assert s.label in (0, 1)
            assert s.image_path.is_file()
            assert s.mask_path is None or s.mask_path.is_file()
            if s.label == 0:
                assert s.mask_path is None
        labels = [s.label for s in samples]
        assert labels == sorted(labels)  # normal images first
        assert len({s.image_path for s in samples}) == len(samples)


# --------------------------------------------------------------------------- every layout


def test_formats_listed():
    formats = list_dataset_formats()
    for f in ("mvtec", "visa", "meta", "folder", *IMAGE_LABEL, *IMAGE_MASK):
        assert f in formats
    assert set(SYNTHETIC_FORMATS) - {"mvtec3d"} <= set(formats)


@pytest.mark.parametrize("fmt", INDUSTRIAL)
def test_industrial_readers(tmp_path, fmt):
    spec = make_synthetic_dataset(
        tmp_path / fmt, fmt, categories=["metal_nut", "cap"], n_good=3, n_bad=4, defects=("blob", "scratch")
    )
    ds = open_dataset(spec)
    _check_consistent(ds)
    assert ds.categories() == ["cap", "metal_nut"]
    assert ds.counts() == {"cap": (3, 4), "metal_nut": (3, 4)}
    assert ds.has_masks and ds.has_image_labels
    assert ds.prompt_name("metal_nut") == "metal nut"
    for s in ds.all_samples():
        if s.label:
            mask = load_mask(s.mask_path)
            assert mask.any() and mask.shape == (64, 64)
    if fmt != "visa":
        assert {s.defect for s in ds.samples["cap"]} == {"good", "blob", "scratch"}


@pytest.mark.parametrize("fmt", IMAGE_LABEL)
def test_image_label_readers(tmp_path, fmt):
    ds = open_dataset(make_synthetic_dataset(tmp_path / fmt, fmt, n_good=3, n_bad=5))
    _check_consistent(ds)
    assert ds.categories() == [fmt]
    assert ds.counts() == {fmt: (3, 5)}  # br35h's unlabelled pred/ folder is ignored
    assert not ds.has_masks and ds.has_image_labels
    assert all(s.mask_path is None for s in ds)
    assert ds.prompt_name(fmt) == {"headct": "head ct", "brainmri": "brain", "br35h": "brain"}[fmt]


@pytest.mark.parametrize("fmt", IMAGE_MASK)
def test_image_mask_readers(tmp_path, fmt):
    ds = open_dataset(make_synthetic_dataset(tmp_path / fmt, fmt, n_bad=4, image_ext=("png", "JPG")))
    _check_consistent(ds)
    assert ds.counts() == {fmt: (0, 4)}
    assert ds.has_masks and not ds.has_image_labels
    for s in ds:
        assert s.mask_path.stem.replace("_Segmentation", "") == s.image_path.stem
        assert load_mask(s.mask_path).any()
    assert ds.prompt_name(fmt) == {"isic": "skin", "tn3k": "thyroid"}.get(fmt, "colon")


def test_synthetic_is_deterministic(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", "mvtec", seed=3)
    b = make_synthetic_dataset(tmp_path / "b", "mvtec", seed=3)
    c = make_synthetic_dataset(tmp_path / "c", "mvtec", seed=4)
    da, db, dc = (open_dataset(s) for s in (a, b, c))
    for sa, sb, sc in zip(da, db, dc, strict=True):
        assert sa.image_path.read_bytes() == sb.image_path.read_bytes()
        assert sa.image_path.read_bytes() != sc.image_path.read_bytes()


# --------------------------------------------------------------------------- odd files


def test_mvtec_odd_files(tmp_path):
    """Masks stored 0/253, spaces in names, JPEG + PNG with upper-case extensions, grey + RGB."""
    spec = make_synthetic_dataset(
        tmp_path / "odd",
        "mvtec",
        categories=["tire"],
        n_good=4,
        n_bad=4,
        size=(48, 40),
        image_ext=("png", "JPG", "jpeg"),
        color="mixed",
        mask_value=253,
        name_prefix="img ",
    )
    root = tmp_path / "odd" / "tire"
    (root / "test" / "good" / ".hidden.png").write_bytes(b"")
    (root / "test" / "good" / "notes.txt").write_text("not an image")
    (root.parent / "readme.txt").write_text("ignored")
    ds = open_dataset(spec)
    _check_consistent(ds)
    assert ds.counts() == {"tire": (4, 4)}
    suffixes = {s.image_path.suffix for s in ds}
    assert {".png", ".JPG", ".jpeg"} <= suffixes
    assert any(" " in s.image_path.name for s in ds)
    modes = {Image.open(s.image_path).mode for s in ds}
    assert modes == {"RGB", "L"}
    for s in ds:
        if s.label:
            assert s.mask_path.name == f"{s.image_path.stem}_mask.png"
            assert set(np.unique(np.asarray(Image.open(s.mask_path)))) == {0, 253}
            assert load_mask(s.mask_path).shape == (48, 40)
    # the category folder itself works too
    assert open_dataset(f"mvtec:{root}").counts() == ds.counts()


def test_masks_are_never_paired_by_sorted_order(tmp_path):
    """Masks whose names do not match their images are refused, naming both sides, even when the counts
    match (pairing them by sorted order would silently mismatch them)."""
    spec = make_synthetic_dataset(tmp_path / "m", "mvtec", n_good=1, n_bad=3)
    gt = tmp_path / "m" / "widget" / "ground_truth" / "blob"
    masks = sorted(gt.iterdir())
    for i, m in enumerate(masks):  # names that no longer share the image stems
        m.rename(gt / f"gt_{i:02d}.png")
    with pytest.raises(DatasetLayoutError, match="cannot pair masks") as error:
        open_dataset(spec)
    message = str(error.value)
    assert "000.png" in message and "gt_00.png" in message and "sorted order" in message
    (gt / "gt_00.png").rename(gt / "000_mask.png")  # one renamed: the other two are still named
    message = str(pytest.raises(DatasetLayoutError, open_dataset, spec).value)
    assert "2 image(s)" in message and "['001.png', '002.png']" in message


def test_mvtec_missing_ground_truth_means_no_masks(tmp_path):
    spec = make_synthetic_dataset(tmp_path / "m", "mvtec", n_good=2, n_bad=2)
    for p in sorted((tmp_path / "m" / "widget" / "ground_truth" / "blob").iterdir()):
        p.unlink()
    (tmp_path / "m" / "widget" / "ground_truth" / "blob").rmdir()
    ds = open_dataset(spec)
    assert not ds.has_masks and ds.has_image_labels
    assert all(s.mask_path is None for s in ds)


def test_categories_filter(tmp_path):
    spec = make_synthetic_dataset(tmp_path / "m", "mvtec", categories=["a", "b", "c"], n_good=1, n_bad=1)
    assert open_dataset(spec, categories=["b"]).categories() == ["b"]
    with pytest.raises(ValueError, match="unknown categories"):
        open_dataset(spec, categories=["zzz"])
    vspec = make_synthetic_dataset(tmp_path / "v", "visa", categories=["a", "b"], n_good=1, n_bad=1)
    assert open_dataset(vspec, categories=["a"]).categories() == ["a"]
    ds = open_dataset(spec)
    assert ds.subset(["c", "a"]).categories() == ["c", "a"]
    assert len(ds.subset(["a"])) == 2


def test_visa_uses_test_split_and_instance_masks(tmp_path):
    spec = make_synthetic_dataset(tmp_path / "v", "visa", categories=["candle"], n_good=2, n_bad=4)
    ds = open_dataset(spec)
    assert ds.counts() == {"candle": (2, 4)}  # the train-split normal row is skipped
    values = set()
    for s in ds:
        if s.label:
            values |= set(np.unique(np.asarray(Image.open(s.mask_path))).tolist())
            assert load_mask(s.mask_path).any()
    assert values == {0, 1, 2}
    # the CSV path itself is accepted as the spec path
    assert open_dataset(f"visa:{tmp_path / 'v' / 'split_csv' / '1cls.csv'}").counts() == ds.counts()


def test_folder_layouts(tmp_path):
    spec = make_synthetic_dataset(
        tmp_path / "f", "folder", categories=["screw"], n_good=2, n_bad=2, masks=False
    )
    ds = open_dataset(spec)
    assert ds.counts() == {"screw": (2, 2)} and not ds.has_masks
    # a single category folder: category = folder name
    single = open_dataset(f"folder:{tmp_path / 'f' / 'screw'}")
    assert single.categories() == ["screw"]
    # normal/ and ok/ are normal folders; masks as <stem>.png
    root = tmp_path / "plain"
    for sub, n in (("normal", 2), ("OK", 1), ("crack", 2)):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / sub / f"{sub} {i}.png")
    (root / "ground_truth" / "crack").mkdir(parents=True)
    for i in range(2):
        m = np.zeros((8, 8), np.uint8)
        m[2:4, 2:4] = 255
        Image.fromarray(m).save(root / "ground_truth" / "crack" / f"crack {i}.png")
    (root / "empty").mkdir()
    ds = open_dataset(f"folder:{root}")
    assert ds.categories() == ["plain"]
    assert ds.counts() == {"plain": (3, 2)} and ds.has_masks
    assert {s.defect for s in ds if s.label == 0} == {"normal", "OK"}


def test_medical_adaclip_layout(tmp_path):
    # AdaCLIP-processed: <root>/<Name>/test/{good,defect}/ (+ ground_truth/ for pixel sets)
    make_synthetic_dataset(tmp_path / "BrainMRI_tmp", "mvtec", categories=["brain_mri"], n_good=2, n_bad=3)
    ds = open_dataset(f"brainmri:{tmp_path / 'BrainMRI_tmp'}")
    assert ds.categories() == ["brainmri"] and ds.counts() == {"brainmri": (2, 3)}
    assert ds.prompt_name("brainmri") == "brain"
    make_synthetic_dataset(tmp_path / "Clinic", "mvtec", categories=["ClinicDB"], n_good=0, n_bad=3)
    ds = open_dataset(f"clinicdb:{tmp_path / 'Clinic' / 'ClinicDB'}")
    assert ds.counts() == {"clinicdb": (0, 3)} and ds.has_masks and not ds.has_image_labels


def test_medical_nested_and_ambiguous_layouts(tmp_path):
    # Kaggle-style nesting: brain_tumor_dataset/{no,yes}
    make_synthetic_dataset(tmp_path / "bt" / "brain_tumor_dataset", "brainmri", n_good=2, n_bad=2)
    assert open_dataset(f"brainmri:{tmp_path / 'bt'}").counts() == {"brainmri": (2, 2)}
    # an unknown label folder is an error, not silently dropped
    (tmp_path / "bt" / "brain_tumor_dataset" / "maybe").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "bt" / "brain_tumor_dataset" / "maybe" / "x.png")
    with pytest.raises(ValueError, match="unrecognised image folders"):
        open_dataset(f"brainmri:{tmp_path / 'bt'}")
    # PraNet-style TestDataset with several sets: the one naming the dataset wins
    for name, fmt in (("CVC-ClinicDB", "clinicdb"), ("CVC-ColonDB", "colondb"), ("Kvasir", "kvasir")):
        make_synthetic_dataset(tmp_path / "TestDataset" / name, fmt, n_bad=2 + len(name) % 3)
    ds = open_dataset(f"colondb:{tmp_path / 'TestDataset'}")
    assert all("CVC-ColonDB" in str(s.image_path) for s in ds)
    # CVC-ClinicDB Kaggle release: PNG/ and TIF/ copies; PNG is picked
    for sub in ("PNG", "TIF"):
        make_synthetic_dataset(
            tmp_path / "cvc" / sub, "clinicdb", n_bad=2, image_ext="png" if sub == "PNG" else "tif"
        )
    ds = open_dataset(f"clinicdb:{tmp_path / 'cvc'}")
    assert {s.image_path.parent.parent.name for s in ds} == {"PNG"}


# --------------------------------------------------------------------------- load_mask


def test_load_mask_values(tmp_path):
    def save(name, arr, mode=None):
        p = tmp_path / name
        (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(p)
        return p

    base = np.zeros((6, 8), np.uint8)
    base[1:3, 2:5] = 1
    expected = base.astype(bool)
    for value in (1, 2, 253, 255):
        assert np.array_equal(load_mask(save(f"v{value}.png", base * value)), expected)
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[1:3, 2:5, 0] = 200  # red-only mask
    assert np.array_equal(load_mask(save("rgb.png", rgb)), expected)
    rgba = np.dstack([rgb, np.full((6, 8), 255, np.uint8)])  # opaque alpha is not a defect
    assert np.array_equal(load_mask(save("rgba.png", rgba)), expected)
    assert np.array_equal(load_mask(save("bits.png", expected)), expected)
    pal = Image.fromarray(base * 3).convert("P")
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(load_mask(tmp_path / "pal.png"), expected)
    big = np.zeros((64, 64), np.uint8)
    big[16:48, 16:48] = 255
    Image.fromarray(big).save(tmp_path / "m.jpg", quality=70)  # lossy: noise near 0 is not a defect
    assert np.array_equal(load_mask(tmp_path / "m.jpg"), big > 0)
    m = load_mask(save("m16.png", base.astype(np.uint16) * 1000))
    assert np.array_equal(m, expected)


def test_load_mask_none_and_resize(tmp_path):
    empty = load_mask(None, size=(5, 7))
    assert empty.shape == (5, 7) and empty.dtype == bool and not empty.any()
    with pytest.raises(ValueError, match="size"):
        load_mask(None)
    with pytest.raises(ValueError, match="height, width"):
        load_mask(None, size=(0, 3))
    with pytest.raises(FileNotFoundError):
        load_mask(tmp_path / "nope.png")
    arr = np.zeros((40, 60), np.uint8)
    arr[10:30, 20:50] = 253
    Image.fromarray(arr).save(tmp_path / "m.png")
    same = load_mask(tmp_path / "m.png", size=(40, 60))
    assert np.array_equal(same, arr > 0)
    small = load_mask(tmp_path / "m.png", size=(20, 30))  # (height, width)
    assert small.shape == (20, 30) and small.dtype == bool
    assert small[5:15, 10:25].all() and not small[:4].any() and not small[:, :9].any()
    # bilinear then > 0.5: a lone pixel vanishes when shrunk, a half-covered cell does not count
    dot = np.zeros((40, 40), np.uint8)
    dot[20, 20] = 255
    Image.fromarray(dot).save(tmp_path / "dot.png")
    assert not load_mask(tmp_path / "dot.png", size=(10, 10)).any()
    up = load_mask(tmp_path / "m.png", size=(80, 120))
    assert up.shape == (80, 120) and abs(up.mean() - (arr > 0).mean()) < 0.02


# --------------------------------------------------------------------------- meta.json


@pytest.mark.parametrize("fmt", ["mvtec", "visa", "clinicdb", "brainmri"])
def test_meta_json_round_trip(tmp_path, fmt):
    ds = open_dataset(make_synthetic_dataset(tmp_path / "d", fmt, categories=["a_b", "c"], n_good=2, n_bad=3))
    out = write_meta_json(ds, tmp_path / "d")
    assert out == tmp_path / "d" / "meta.json"
    meta = json.loads(out.read_text())
    assert meta["train"] == {} and set(meta["test"]) == set(ds.categories())
    item = meta["test"][ds.categories()[0]][-1]
    assert set(item) == {"img_path", "mask_path", "cls_name", "specie_name", "anomaly"}
    assert not Path(item["img_path"]).is_absolute()
    back = open_dataset(f"meta:{tmp_path / 'd'}")
    assert back.samples == ds.samples
    assert back.has_masks == ds.has_masks and back.has_image_labels == ds.has_image_labels
    # the JSON file itself as spec path, and a meta.json outside the dataset (absolute paths)
    assert open_dataset(f"meta:{out}").samples == ds.samples
    other = write_meta_json(ds, tmp_path / "elsewhere" / "index.json")
    assert open_dataset(f"meta:{other}").samples == ds.samples


def test_meta_reader_normal_with_empty_mask(tmp_path):
    ds = open_dataset(
        make_synthetic_dataset(tmp_path / "d", "meta", categories=["bottle"], n_good=2, n_bad=2)
    )
    assert ds.counts() == {"bottle": (2, 2)} and ds.has_masks
    assert {s.defect for s in ds} == {"good", "blob"}


# --------------------------------------------------------------------------- errors


def test_bad_specs(tmp_path):
    with pytest.raises(ValueError, match="known prefixes: mvtec:"):
        open_dataset("nosuch:/data")
    with pytest.raises(ValueError, match="<format>:<path>"):
        open_dataset(str(tmp_path))
    with pytest.raises(ValueError, match="<format>:<path>"):
        open_dataset("mvtec:")
    with pytest.raises(FileNotFoundError) as e:
        open_dataset(f"mvtec:{tmp_path / 'missing'}")
    msg = str(e.value)
    assert "mvtec:" in msg and "missing" in msg and "ground_truth" in msg and "visa:" in msg


@pytest.mark.parametrize("fmt", ["mvtec", "visa", "meta", "folder", "brainmri", "headct", "isic", "kvasir"])
def test_wrong_layout_errors_name_spec_and_layout(tmp_path, fmt):
    (tmp_path / "junk" / "stuff").mkdir(parents=True)
    (tmp_path / "junk" / "readme.txt").write_text("x")
    spec = f"{fmt}:{tmp_path / 'junk'}"
    with pytest.raises((FileNotFoundError, ValueError)) as e:
        open_dataset(spec)
    msg = str(e.value)
    assert spec in msg and "expected layout" in msg and "known prefixes" in msg


def test_corrupt_index_files(tmp_path):
    spec = make_synthetic_dataset(tmp_path / "v", "visa", n_good=1, n_bad=1)
    csv_path = tmp_path / "v" / "split_csv" / "1cls.csv"
    csv_path.write_text("object,split,image\nx,test,a.png\n")
    with pytest.raises(DatasetLayoutError, match="lacks columns"):
        open_dataset(spec)
    csv_path.write_text("object,split,label,image,mask\nx,test,normal,missing.png,\n")
    with pytest.raises(FileNotFoundError, match="missing"):
        open_dataset(spec)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "meta.json").write_text("{not json")
    with pytest.raises(DatasetLayoutError, match="not valid JSON"):
        open_dataset(f"meta:{tmp_path / 'm'}")
    (tmp_path / "m" / "meta.json").write_text(json.dumps({"train": {}}))
    with pytest.raises(DatasetLayoutError, match="'test'"):
        open_dataset(f"meta:{tmp_path / 'm'}")


def test_image_mask_count_mismatch(tmp_path):
    spec = make_synthetic_dataset(tmp_path / "k", "kvasir", n_bad=3, name_prefix="a")
    masks = sorted((tmp_path / "k" / "masks").iterdir())
    masks[0].rename(masks[0].with_name("zzz.png"))
    masks[1].unlink()
    with pytest.raises(DatasetLayoutError, match="cannot pair masks"):
        open_dataset(spec)


# --------------------------------------------------------------------------- real data


real = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"real datasets not found at {DATASETS}")


@real
@pytest.mark.parametrize("sub", ["mvtec3d_tire", "mvtec3d_tire/tire"])
def test_real_mvtec3d_tire(sub):
    ds = open_dataset(f"mvtec:{DATASETS / sub}")
    assert ds.categories() == ["tire"]
    assert ds.counts() == {"tire": (25, 87)}
    assert ds.has_masks and ds.has_image_labels
    bad = [s for s in ds if s.label]
    assert {s.defect for s in bad} == {"combined", "contamination", "cut", "hole"}
    for s in bad:
        assert s.mask_path is not None and s.mask_path.stem == f"{s.image_path.stem}_mask"
        assert s.mask_path.parent.name == s.defect
    for s in bad:
        mask = load_mask(s.mask_path)
        assert mask.any(), s.mask_path
    with Image.open(bad[0].image_path) as im:
        assert load_mask(bad[0].mask_path).shape == (im.height, im.width)
    assert load_mask(bad[0].mask_path, size=(256, 256)).shape == (256, 256)


@real
@pytest.mark.parametrize("fmt", ["brainmri", "folder"])
def test_real_brainmri(fmt):
    ds = open_dataset(f"{fmt}:{DATASETS / 'brainmri'}")
    assert ds.categories() == ["brainmri"]
    assert ds.counts() == {"brainmri": (98, 155)}
    assert not ds.has_masks and ds.has_image_labels
    assert all(s.mask_path is None for s in ds)
    assert {s.defect for s in ds} == {"no", "yes"}
    assert any(" " in s.image_path.name for s in ds)
    if fmt == "brainmri":
        assert ds.prompt_name("brainmri") == "brain"


def test_split_data_specs_edge_cases() -> None:
    """The one --data parser of eval and train: a comma starts a spec only before a known '<format>:'."""
    assert split_data_specs("mvtec:/a,visa:/b") == ["mvtec:/a", "visa:/b"]
    assert split_data_specs(["mvtec:/a", "visa:/b,folder:/c"]) == ["mvtec:/a", "visa:/b", "folder:/c"]
    assert split_data_specs("mvtec:/data/a,b/c") == ["mvtec:/data/a,b/c"]  # a comma inside a path
    assert split_data_specs("folder:C:\\data,x,VisA:D:\\visa") == ["folder:C:\\data,x", "VisA:D:\\visa"]  # drives
    assert split_data_specs(" mvtec:/a , ,visa:/b,") == ["mvtec:/a ,", "visa:/b,"]  # commas not before a format stay in the path
    assert split_data_specs(["", "  "]) == []
