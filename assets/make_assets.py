"""Write the app's example pictures (and their defect masks) into ``assets/``.

Run ``python assets/make_assets.py`` (or ``--out DIR``). The pictures come from the package's own
generator (:func:`zsad_core.data.synthetic.render_sample`), from its *held-out* categories only:
no model of the project was trained on them, so the examples show zero-shot detection. They are
the project's own work, free to ship; no dataset image (MVTec AD, VisA, medical sets) is read.
The same pixels come out on every run (the generator is seeded).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from zsad_core.data.synthetic import CATEGORY_INFO, DEFECT_INFO, HELDOUT_CATEGORIES, render_sample

SIZE = 256
SEED = 2026  # the seed of every example; each picks its own sample index
ASSETS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Example:
    """One example: a held-out category, a defect (None: flawless) and the generator's sample index."""

    category: str
    defect: str | None
    index: int

    @property
    def stem(self) -> str:
        return f"{self.category}_{self.defect or 'good'}"


EXAMPLES: tuple[Example, ...] = (
    Example("striped_fabric", "scratch", 1),
    Example("striped_fabric", None, 2),
    Example("wood", "crack", 1),
    Example("washer", "missing_part", 3),
    Example("bottle_cap", "hole", 1),
    Example("pill", "crack", 2),
    Example("pill", None, 4),
)


def generate(out_dir: Path) -> list[dict[str, str]]:
    """Write every example (and its mask) to ``out_dir``; returns the entries of examples.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for example in EXAMPLES:
        if example.category not in HELDOUT_CATEGORIES:
            raise ValueError(f"{example.category} is a training category: examples must be held out")
        image, mask = render_sample(example.category, example.index, SEED, SIZE, example.defect)
        Image.fromarray(image).save(out_dir / f"{example.stem}.png")
        display = CATEGORY_INFO[example.category].display
        entry = {"file": f"{example.stem}.png", "category": display}
        if example.defect is None:
            entry["description"] = f"a flawless {display}"
        else:
            (out_dir / "masks").mkdir(exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / "masks" / f"{example.stem}_mask.png")
            entry["description"] = f"{display}, {DEFECT_INFO[example.defect].words}"
            entry["mask"] = f"masks/{example.stem}_mask.png"
        entries.append(entry)
    (out_dir / "examples.json").write_text(json.dumps(entries, indent=2) + "\n")
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ASSETS_DIR, help="output folder (default: assets/)")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
