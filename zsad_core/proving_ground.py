"""The proving-ground table: every method on the generator's held-out categories, trained model vs random.

``python -m zsad_core proving-ground --out DIR [--model zsad-toy] [--per-category N] [--seed N]``

1. writes the held-out categories (never seen by any training: :data:`HELDOUT_CATEGORIES`) with
   :func:`zsad_core.data.synthetic.write_synthetic_dataset` to ``DIR/data``;
2. evaluates every method on them (the papers' protocol, :func:`zsad_core.evaluate.evaluate`) twice:
   on the project's trained model, learnable methods with the checkpoints shipped beside it, and
   on the same architecture with random weights (the model's own config, seeded), learnable methods
   with their untrained heads;
3. writes ``DIR/table.md`` and ``DIR/table.json``: image AUROC/AP and pixel AUROC/AP/AUPRO, mean
   over the held-out categories, per method and model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .availability import find_checkpoints
from .backbone import project_model_dir
from .data.synthetic import HELDOUT_CATEGORIES, write_synthetic_dataset
from .registry import get_method, list_methods

COLUMNS = (
    ("image_auroc", "I-AUROC"),
    ("image_ap", "I-AP"),
    ("pixel_auroc", "P-AUROC"),
    ("pixel_ap", "P-AP"),
    ("pixel_aupro", "P-AUPRO"),
)


def random_twin(model: str, folder: Path, seed: int = 0) -> str:
    """An open_clip folder with ``model``'s architecture and random weights; returns its model string."""
    from .clip_training import build_clip, save_model_folder

    source = project_model_dir(model)
    if source is None:
        raise ValueError(f"{model!r} is not a model shipped with the project (see zsad_core/pretrained/)")
    config = json.loads((source / "open_clip_config.json").read_text())["model_cfg"]
    save_model_folder(build_clip(config, seed), config, folder, {"format": "random-twin", "of": model, "seed": seed})
    return f"local-dir:{folder}"


def _checkpoint(method: str, model: str) -> str | None:
    info = get_method(method).info
    if info.training_free:
        return None
    choices = find_checkpoints(method, model, info.image_size)
    return choices[0].source if choices else None


def run_proving_ground(
    out: str | Path,
    model: str = "zsad-toy",
    methods: list[str] | None = None,
    per_category: int = 8,
    seed: int = 1,
    size: int = 256,
    progress: bool = False,
) -> dict[str, Any]:
    """Steps 1-3 of the module docstring; returns the table as a dict."""
    from .evaluate import evaluate

    out = Path(out)
    methods = methods or [info.id for info in list_methods()]
    data = write_synthetic_dataset(out / "data", "heldout", seed=seed, per_category=per_category, size=size)
    models = {"trained": model, "random": random_twin(model, out / "random-model")}
    table: dict[str, Any] = {"model": model, "categories": list(HELDOUT_CATEGORIES), "per_category": per_category,
                             "seed": seed, "rows": []}  # fmt: skip
    for method in methods:
        for kind, name in models.items():
            checkpoint = _checkpoint(method, model) if kind == "trained" else None
            if kind == "trained" and not get_method(method).info.training_free and checkpoint is None:
                table["rows"].append({"method": method, "weights": kind, "error": f"no checkpoint for {model}"})
                continue
            result = evaluate(
                [method], data, out / "runs" / f"{method}-{kind}", model=name, checkpoint=checkpoint,
                device="cpu", precision="fp32", progress=progress,
            )  # fmt: skip
            mean = next(iter(result["results"][method].values()))["mean"]
            table["rows"].append(
                {"method": method, "weights": kind, "checkpoint": checkpoint, **{key: mean[key] for key, _ in COLUMNS}}
            )
    (out / "table.json").write_text(json.dumps(table, indent=2))
    (out / "table.md").write_text(markdown_table(table))
    return table


def markdown_table(table: dict[str, Any]) -> str:
    """The table as Markdown, metrics in percent."""
    header = "| method | weights | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (2 + len(COLUMNS))]
    for row in table["rows"]:
        if "error" in row:
            lines.append(f"| {row['method']} | {row['weights']} | " + " | ".join("–" for _ in COLUMNS) + " |")
            continue
        values = ["–" if row[key] is None else f"{100 * row[key]:.1f}" for key, _ in COLUMNS]
        lines.append(f"| {row['method']} | {row['weights']} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def add_proving_ground_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", required=True, help="output folder (data, runs, table.md, table.json)")
    parser.add_argument("--model", default="zsad-toy", help="the project's trained model (default: zsad-toy)")
    parser.add_argument("--methods", default=None, help="comma-separated method ids (default: all)")
    parser.add_argument("--per-category", type=int, default=8, help="images per split and defect (default: 8)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out images (default: 1)")
    return parser


def run_proving_ground_command(args: argparse.Namespace) -> int:
    if args.per_category < 1:
        raise ValueError(f"--per-category must be at least 1, got {args.per_category}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    for method in methods or []:
        get_method(method)
    table = run_proving_ground(args.out, args.model, methods, args.per_category, args.seed,
                               progress=sys.stderr.isatty())  # fmt: skip
    print(markdown_table(table), end="")
    return 0
