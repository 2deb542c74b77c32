"""Start-up stays light: the package and the CLI's help import neither torch nor the other heavy libraries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "gradio", "sklearn", "matplotlib", "scipy", "cv2", "numpy")


def _modules_after(code: str) -> set[str]:
    """Top-level module names in sys.modules after running ``code`` in a fresh interpreter."""
    script = f"{code}\nimport sys\nprint('MODULES', *sorted({{name.split('.')[0] for name in sys.modules}}))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    last = done.stdout.splitlines()[-1].split()  # the help text printed before may name anything
    assert last[0] == "MODULES", done.stdout
    return set(last[1:])


@pytest.mark.parametrize(
    "code",
    [
        "import zsad_core",
        "from zsad_core import __version__",
        # what `python -m zsad_core --help` and `... detect --help` run, without leaving the interpreter
        "from zsad_core.cli import main\nassert main(['--help']) == 0",
        "from zsad_core.cli import main\nassert main(['detect', '--help']) == 0",
    ],
)
def test_startup_imports_nothing_heavy(code: str) -> None:
    loaded = _modules_after(code)
    assert not loaded & set(HEAVY), f"{code!r} imported {sorted(loaded & set(HEAVY))}"


def test_lazy_exports_resolve_to_the_defining_modules() -> None:
    import zsad_core
    from zsad_core.backbone import create_backbone
    from zsad_core.registry import create_detector

    assert zsad_core.create_detector is create_detector
    assert zsad_core.create_backbone is create_backbone
    assert set(zsad_core.__all__) == {*zsad_core._EXPORTS, "__version__"}
    assert set(zsad_core.__all__) <= set(dir(zsad_core))
    with pytest.raises(AttributeError, match="no_such_name"):
        zsad_core.no_such_name  # noqa: B018
