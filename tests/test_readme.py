"""The README's promises: its offline examples run as written, and its Space front matter is complete."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from zsad_core.cli import main

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
yaml = pytest.importorskip("yaml")


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_front_matter_configures_the_space() -> None:
    assert README.startswith("---\n")
    front = yaml.safe_load(README.split("---\n")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and (REPO_ROOT / "app.py").is_file()
    pinned = re.search(r"^gradio==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), flags=re.MULTILINE)
    assert pinned and front["sdk_version"] == pinned.group(1)  # the Space runs the Gradio the tests ran
    assert str(front["python_version"]).startswith("3.")
    assert front["suggested_hardware"]
    preloads = " ".join(front["preload_from_hub"])
    for repository in ("vit_base_patch16_plus_clip_240.laion400m_e31", "vit_large_patch14_clip_336.openai"):
        assert repository in preloads  # the papers' backbones
    from zsad_core.weights import list_released_weights

    for entry in list_released_weights("adaclip"):  # the released heads, at their pinned revision
        line = next(item for item in front["preload_from_hub"] if item.startswith(entry.hub_repo))
        assert entry.filename in line and line.split()[-1] == entry.revision


def test_offline_examples_run_as_written(tmp_path: Path, monkeypatch, capsys) -> None:
    section = _section("Try it on a fresh machine")
    monkeypatch.chdir(REPO_ROOT)
    lines = [line for block in _blocks(section, "bash") for line in block.replace("\\\n", " ").splitlines()]
    detect = next(shlex.split(line.split("#")[0]) for line in lines if "zsad_core detect" in line)
    arguments = detect[detect.index("detect") :]
    arguments[arguments.index("--out") + 1] = str(tmp_path / "out")
    assert main(arguments) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.npy")) == [
        "striped_fabric_good__sdp.npy",
        "striped_fabric_good__winclip.npy",
        "striped_fabric_scratch__sdp.npy",
        "striped_fabric_scratch__winclip.npy",
    ]
    (snippet,) = _blocks(section, "python")
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    assert namespace["result"].anomaly_map.shape == (256, 256)
    capsys.readouterr()
