"""Text features on disk: a new process or a cleared memory cache reads them back bit for bit, and
any change of prompts or weights misses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from zsad_core import create_backbone
from zsad_core.disk_cache import cache_dir, entry_path, text_features_key, text_tower_fingerprint
from zsad_core.prompts import REDUCERS, WINCLIP_PROMPTS, clear_text_caches, sentence_embeddings, text_anchors

REPO_ROOT = Path(__file__).resolve().parents[1]
CATEGORY = "metal nut"
PROMPTS = WINCLIP_PROMPTS.with_overrides(templates=["a photo of a {}.", "a close-up photo of the {}."])


@pytest.fixture
def disk_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ZSAD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ZSAD_DISK_CACHE", raising=False)
    clear_text_caches()
    yield tmp_path / "cache"
    clear_text_caches()


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.safetensors"))


def _sentences(prompts=PROMPTS, category: str = CATEGORY) -> list[str]:
    normal, abnormal = prompts.sentences(category)
    return normal + abnormal


def _forbid_text_pass(monkeypatch: pytest.MonkeyPatch, backbone) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the text tower ran although the features are on disk")

    monkeypatch.setattr(backbone, "encode_text", fail)


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZSAD_CACHE_DIR", str(tmp_path / "here"))
    assert cache_dir() == tmp_path / "here"
    monkeypatch.delenv("ZSAD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "zsad"


def test_cleared_memory_reads_identical_features_from_disk(disk_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backbone = create_backbone("zsad-tiny")
    computed = sentence_embeddings(backbone, CATEGORY, PROMPTS).clone()
    entries = _entries(disk_cache)
    assert len(entries) == 1 and entries[0] == entry_path(text_features_key(backbone, _sentences()))
    assert computed.shape == (len(_sentences()), backbone.embed_dim)
    assert not list(disk_cache.rglob("*.tmp"))  # written under a temporary name, then renamed

    clear_text_caches()
    _forbid_text_pass(monkeypatch, backbone)
    loaded = sentence_embeddings(backbone, CATEGORY, PROMPTS)
    assert loaded.dtype == torch.float32 and loaded.device == backbone.device
    assert torch.equal(loaded, computed)


def test_a_new_process_reads_identical_features_from_disk(disk_cache: Path, tmp_path: Path) -> None:
    backbone = create_backbone("zsad-tiny")
    computed = sentence_embeddings(backbone, CATEGORY, PROMPTS)
    script = f"""
import torch
from safetensors.torch import save_file
from zsad_core import create_backbone
from zsad_core.prompts import WINCLIP_PROMPTS, sentence_embeddings
backbone = create_backbone("zsad-tiny")
def fail(*args, **kwargs):
    raise AssertionError("text tower ran")
backbone.encode_text = fail
prompts = WINCLIP_PROMPTS.with_overrides(templates={list(PROMPTS.templates)!r})
save_file({{"x": sentence_embeddings(backbone, {CATEGORY!r}, prompts)}}, {str(tmp_path / "child.safetensors")!r})
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert torch.equal(load_file(str(tmp_path / "child.safetensors"))["x"], computed)


def test_other_prompts_category_or_weights_miss(disk_cache: Path) -> None:
    backbone = create_backbone("zsad-tiny")
    sentence_embeddings(backbone, CATEGORY, PROMPTS)
    sentence_embeddings(backbone, CATEGORY, PROMPTS.with_overrides(abnormal_states=["scratched"]))
    sentence_embeddings(backbone, "bottle", PROMPTS)
    assert len(_entries(disk_cache)) == 3

    other_weights = create_backbone("zsad-tiny", seed=1)  # same name and geometry, other weights
    assert text_tower_fingerprint(other_weights) != text_tower_fingerprint(backbone)
    assert text_features_key(other_weights, _sentences()) != text_features_key(backbone, _sentences())
    features = sentence_embeddings(other_weights, CATEGORY, PROMPTS)
    assert len(_entries(disk_cache)) == 4
    assert torch.equal(features, other_weights.encode_text(_sentences()))


def test_fingerprint_covers_the_text_tower_only() -> None:
    backbone = create_backbone("zsad-tiny")
    text_only = create_backbone("zsad-tiny", image_size=96)  # other image geometry, same text tower
    assert text_tower_fingerprint(text_only) == text_tower_fingerprint(backbone)
    assert len(text_tower_fingerprint(backbone)) == 64


def test_opt_out_neither_reads_nor_writes(disk_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZSAD_DISK_CACHE", "0")
    sentence_embeddings(create_backbone("zsad-tiny"), CATEGORY, PROMPTS)
    assert not disk_cache.exists()


def test_corrupt_or_foreign_entries_are_recomputed(disk_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    backbone = create_backbone("zsad-tiny")
    computed = sentence_embeddings(backbone, CATEGORY, PROMPTS).clone()
    (path,) = _entries(disk_cache)

    path.write_bytes(b"not a safetensors file")
    clear_text_caches()
    with caplog.at_level("WARNING", logger="zsad_core.disk_cache"):
        assert torch.equal(sentence_embeddings(backbone, CATEGORY, PROMPTS), computed)
    assert "cannot read" in caplog.text
    assert torch.equal(load_file(str(path))["embeddings"], computed)  # rewritten

    save_file({"embeddings": torch.zeros_like(computed)}, str(path), metadata={"format": "other"})
    clear_text_caches()
    assert torch.equal(sentence_embeddings(backbone, CATEGORY, PROMPTS), computed)


def test_anchors_are_read_back_without_reducing_again(disk_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counting_mean(embeddings: torch.Tensor) -> torch.Tensor:
        calls.append(len(embeddings))
        return torch.nn.functional.normalize(embeddings.mean(0), dim=-1)

    monkeypatch.setitem(REDUCERS, "counting-mean-test", counting_mean)
    backbone = create_backbone("zsad-tiny")
    computed = text_anchors(backbone, CATEGORY, PROMPTS, reducer="counting-mean-test").clone()
    assert len(calls) == 2  # normal and abnormal

    clear_text_caches()
    _forbid_text_pass(monkeypatch, backbone)
    loaded = text_anchors(backbone, CATEGORY, PROMPTS, reducer="counting-mean-test")
    assert len(calls) == 2 and torch.equal(loaded, computed)
    assert not torch.equal(text_anchors(backbone, CATEGORY, PROMPTS, reducer="mean"), computed)  # another key
