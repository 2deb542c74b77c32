"""Command line: ``python -m zsad_core`` (or ``zsad``) ``list | detect | explain | eval | train | synth | bench``.

- ``list``: the registered methods (``--json`` for machine output), or with ``--models`` the
  project's tiny model configs and how to name open_clip models.
- ``detect IMAGE... --category NAME --out DIR``: anomaly maps for images, files or folders or glob
  patterns, with one or more methods. Writes ``DIR/<stem>__<method>.png`` (overlay),
  ``DIR/<stem>__<method>.npy`` (raw float32 map at the image's own size) and ``DIR/results.json``.
- ``synth --split train|heldout --out DIR``: the generated dataset (:mod:`zsad_core.data.synthetic`).
- ``eval``, ``train`` and ``synth``: provided by :mod:`zsad_core.evaluate`, :mod:`zsad_core.training`
  and :mod:`zsad_core.data.synthetic`;
  loaded only when asked for, so a missing or broken one never affects the other commands.

Exit status: 0 when everything worked, 1 when some images could not be processed (each is named on
stderr, the others are still processed), 2 for usage and configuration errors (unknown method or
model, missing weights, bad settings), printed as one ``error: ...`` message without a traceback
(``--debug`` shows it), 3 for running out of memory and for internal errors (a bug: one line, the
traceback with ``--debug``), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .files import write_json_atomic

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm"}
)
GLOB_CHARACTERS = frozenset("*?[")
RESULTS_FILE = "results.json"
DEFAULT_MAX_MAP_PIXELS = 4096 * 4096

logger = logging.getLogger(__name__)


class UsageError(Exception):
    """A command-line mistake: printed as ``error: <message>``, exit status 2."""


class CommandUnavailable(UsageError):
    """A subcommand whose module is not part of this installation or cannot be imported."""


# ----------------------------------------------------------------------------- plugin commands
@dataclass(frozen=True)
class PluginCommand:
    """A subcommand implemented in its own module, imported only when it is used.

    The module provides ``add_arguments(parser)`` (adds the subcommand's options) and
    ``run(args) -> int`` (runs it and returns the exit status).
    """

    name: str
    module: str
    add_arguments: str
    run: str
    help: str


PLUGIN_COMMANDS: tuple[PluginCommand, ...] = (
    PluginCommand(
        "eval",
        "zsad_core.evaluate",
        "add_eval_arguments",
        "run_eval",
        "evaluate methods on a dataset: image and pixel metrics per category",
    ),
    PluginCommand(
        "train",
        "zsad_core.training",
        "add_train_arguments",
        "run_train",
        "train a learnable method (e.g. AdaCLIP) on auxiliary data",
    ),
    PluginCommand(
        "train-clip",
        "zsad_core.clip_training",
        "add_train_clip_arguments",
        "run_train_clip",
        "train the project's own small CLIP on generated images (an open_clip model folder)",
    ),
    PluginCommand(
        "proving-ground",
        "zsad_core.proving_ground",
        "add_proving_ground_arguments",
        "run_proving_ground_command",
        "every method on the generated held-out categories: the project's model against random weights",
    ),
    PluginCommand(
        "export",
        "zsad_core.export",
        "add_export_arguments",
        "run_export",
        "export a method's model with one category's text as ONNX or a torch.export program",
    ),
    PluginCommand(
        "bench",
        "zsad_core.bench",
        "add_bench_arguments",
        "run_bench",
        "time each method: latency, throughput, memory, text preparation, and the ratio to its bare forward passes",
    ),
    PluginCommand(
        "synth",
        "zsad_core.data.synthetic",
        "add_synth_arguments",
        "run_synth",
        "generate the project's synthetic anomaly dataset (MVTec AD layout, exact masks)",
    ),
)


def load_plugin(command: PluginCommand) -> ModuleType:
    """Import a plugin command's module.

    Raises:
        CommandUnavailable: the module does not exist, or importing it fails (a missing
            dependency, an error in the module); the message says which.
    """
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as error:
        if error.name == command.module:
            raise CommandUnavailable(
                f"the '{command.name}' command is not available in this installation "
                f"(module {command.module} is missing)"
            ) from None
        raise CommandUnavailable(f"the '{command.name}' command cannot be loaded: {error}") from error
    except ImportError as error:
        raise CommandUnavailable(f"the '{command.name}' command cannot be loaded: {error}") from error
    for attribute in (command.add_arguments, command.run):
        if not callable(getattr(module, attribute, None)):
            raise CommandUnavailable(
                f"the '{command.name}' command is not available: {command.module} has no function {attribute}()"
            )
    return module


def _unavailable_handler(message: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        raise CommandUnavailable(message)

    return handler


def _add_plugin_command(subcommands: argparse._SubParsersAction, command: PluginCommand, load: bool) -> None:
    parser = subcommands.add_parser(command.name, help=command.help, description=command.help)
    if not load:  # not the command being run: keep start-up fast and independent of the module
        parser.set_defaults(handler=_unavailable_handler(f"the '{command.name}' command was not loaded"))
        return
    module = load_plugin(command)  # CommandUnavailable: main() prints it
    getattr(module, command.add_arguments)(parser)
    parser.set_defaults(handler=getattr(module, command.run))


# ------------------------------------------------------------------------------- argument types
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
    return value


def split_list(text: str | None, separator: str, what: str) -> list[str] | None:
    """``"a; b;"`` -> ``["a", "b"]``; None stays None; nothing left after splitting is an error."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(separator)]
    items = [item for item in items if item]
    if not items:
        raise UsageError(f"{what} is empty: give one or more values separated by '{separator}'")
    return items


# ------------------------------------------------------------------------------------------ list
def _method_rows() -> list[dict[str, Any]]:
    from .registry import list_methods, takes_checkpoint

    rows = []
    for info in list_methods():
        row = dataclasses.asdict(info)
        row["map_range"] = list(info.map_range)
        row["score_range"] = list(info.score_range)
        row["takes_checkpoint"] = takes_checkpoint(info.id)
        rows.append(row)
    return rows


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with left-aligned columns and a rule under the header."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip() for line in (headers, *rows)
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _format_range(values: Sequence[float]) -> str:
    return f"[{values[0]:g}, {values[1]:g}]"


def _tiny_model_rows() -> list[dict[str, Any]]:
    from .backbone import MODEL_CONFIG_DIR, list_tiny_models

    rows = []
    for name in list_tiny_models():
        config = json.loads((MODEL_CONFIG_DIR / f"{name}.json").read_text())
        vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
        rows.append(
            {
                "name": name,
                "image_size": vision.get("image_size"),
                "patch_size": vision.get("patch_size"),
                "vision_layers": vision.get("layers"),
                "vision_width": vision.get("width"),
                "text_layers": text.get("layers"),
                "embed_dim": config.get("embed_dim"),
            }
        )
    return rows


MODEL_NAMING = (
    (
        "zsad-tiny, zsad-tiny-14",
        "the project's tiny configs: random weights from a fixed seed, for tests and trying the tools",
    ),
    ("ViT-B-16-plus-240:laion400m_e31", "an open_clip architecture with a pretrained tag"),
    (
        "ViT-L-14-336:/path/to/weights.safetensors",
        "an architecture with a local weights file (.safetensors, .bin, .pt)",
    ),
    ("hf-hub:org/repo", "an open_clip model repository on the Hugging Face Hub"),
    ("local-dir:/path/to/folder", "a copy of such a repository on disk"),
    ("ViT-B-16", "an architecture without a tag: random weights (scores mean nothing)"),
)


def run_list(args: argparse.Namespace) -> int:
    """``list``: methods, or (``--models``) model names."""
    if args.models:
        return _run_list_models(args)
    rows = _method_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    table = [
        (
            row["id"],
            row["name"],
            "yes" if row["training_free"] else "no",
            row["default_model"],
            str(row["image_size"]),
            _format_range(row["map_range"]),
        )
        for row in rows
    ]
    print(format_table(("id", "name", "training-free", "default backbone", "input size", "map range"), table))
    print("\npapers:")
    for row in rows:
        print(f"  {row['id']}: {row['paper']}")
    print("\nrun one with: python -m zsad_core detect IMAGE --category NAME --methods ID --out DIR")
    return EXIT_OK


def _run_list_models(args: argparse.Namespace) -> int:
    from .backbone import weights_dirs

    tiny = _tiny_model_rows()
    defaults = {row["id"]: row["default_model"] for row in _method_rows()}
    folders = [str(folder) for folder in weights_dirs()]
    if args.json:
        payload = {
            "tiny_models": tiny,
            "method_default_models": defaults,
            "naming": [{"example": example, "meaning": meaning} for example, meaning in MODEL_NAMING],
            "weights_dirs": folders,
        }
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    print("tiny models (random init, run in seconds; use them to try the tools or in tests):")
    print(
        format_table(
            ("name", "input size", "patch", "vision layers", "width", "text layers", "embed dim"),
            [
                tuple(
                    str(row[key])
                    for key in (
                        "name",
                        "image_size",
                        "patch_size",
                        "vision_layers",
                        "vision_width",
                        "text_layers",
                        "embed_dim",
                    )
                )
                for row in tiny
            ],
        )
    )
    print("\nnaming a model (--model):")
    print(format_table(("example", "meaning"), MODEL_NAMING))
    print("\neach method's default backbone:")
    for method, model in defaults.items():
        print(f"  {method}: {model}")
    print("\nweights are looked up in these folders, then in the Hugging Face cache, then downloaded:")
    for folder in folders:
        print(f"  {folder}")
    print('list open_clip architectures: python -c "import open_clip; print(open_clip.list_models())"')
    return EXIT_OK


# ---------------------------------------------------------------------------------------- detect
def _has_glob(text: str) -> bool:
    return any(character in text for character in GLOB_CHARACTERS)


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _images_in_folder(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and _is_image_name(path))


@dataclass(frozen=True)
class InputImage:
    """One image found from the command-line inputs.

    Attributes:
        path: the file.
        name: its output name, which depends only on how it was found, never on the other inputs:
            an image found in a folder or by a pattern is named by its path below that folder (or
            below the pattern's fixed part), without the extension, ``/`` written ``__``
            (``good/000.png`` -> ``good__000``); a file named directly is named by its stem.
    """

    path: Path
    name: str


def _relative_name(path: Path, base: Path) -> str:
    try:
        relative = path.relative_to(base)
    except ValueError:
        return path.stem
    return "__".join((*relative.parent.parts, relative.stem)) or path.stem


def _glob_base(pattern: str) -> Path:
    """The part of a glob pattern before its first wildcard component."""
    parts = []
    for part in Path(os.path.expanduser(pattern)).parts:
        if _has_glob(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _expand_input(text: str) -> list[InputImage]:
    """The images one command-line input names.

    Raises:
        FileNotFoundError: it does not exist, or is a folder or pattern with no images.
    """
    candidate = Path(text).expanduser()
    if candidate.is_dir():
        found = [InputImage(path, _relative_name(path, candidate)) for path in _images_in_folder(candidate)]
        if not found:
            extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise FileNotFoundError(f"{text}: folder holds no images (looked for {extensions})")
        return found
    if candidate.exists():
        return [InputImage(candidate, candidate.stem)]
    if not _has_glob(text):
        raise FileNotFoundError(f"{text}: no such file or folder")
    base = _glob_base(text)
    found = []
    for match in sorted(glob.glob(os.path.expanduser(text), recursive=True)):
        match_path = Path(match)
        if match_path.is_dir():
            found += [InputImage(path, _relative_name(path, base)) for path in _images_in_folder(match_path)]
        elif match_path.is_file() and _is_image_name(match_path):
            found.append(InputImage(match_path, _relative_name(match_path, base)))
    if not found:
        raise FileNotFoundError(f"{text}: pattern matches no images")
    return found


def collect_images(inputs: Sequence[str], problems: list[tuple[str, str]] | None = None) -> list[InputImage]:
    """Expand command-line inputs into images, in order, without duplicates, with unique output names.

    A file is taken as is (whatever its extension: a bad file is reported when it is decoded);
    a folder gives the images in it and its sub-folders, sorted; a pattern with ``*``, ``?`` or
    ``[`` is expanded (``**`` recurses) and gives the images it matches, sorted. Names that still
    coincide (case-insensitively) get ``-2``, ``-3``, ... appended.

    Args:
        inputs: the command-line arguments.
        problems: when given, each input that names no image is appended here as ``(input, message)``
            and the others are still collected; when None, it raises.
    Raises:
        FileNotFoundError: an input that does not exist, or a folder or pattern with no images
            (only when ``problems`` is None).
    """
    images: list[InputImage] = []
    for text in inputs:
        try:
            images += _expand_input(text)
        except FileNotFoundError as error:
            if problems is None:
                raise
            problems.append((text, str(error)))
    unique: list[InputImage] = []
    seen: set[Path] = set()
    for image in images:
        key = image.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(image)
    names = unique_names([image.name for image in unique])
    return [InputImage(image.path, name) for image, name in zip(unique, names)]


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with repeats (compared case-insensitively, for case-insensitive file systems) made
    unique by appending ``-2``, ``-3``, ...; the first occurrence keeps its name."""
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, number = name, 1
        while candidate.lower() in taken:
            number += 1
            candidate = f"{name}-{number}"
        taken.add(candidate.lower())
        unique.append(candidate)
    return unique


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """The file stems of ``paths``, made unique by :func:`unique_names`."""
    return unique_names([path.stem for path in paths])


def parse_methods(text: str | None) -> list[str]:
    """``"winclip,sdp"`` -> ids, checked against the registry; None or ``"all"``: every training-free method."""
    from .registry import get_method, list_methods

    if text is None:
        return [info.id for info in list_methods() if info.training_free]
    if text.strip().lower() == "all":
        return [info.id for info in list_methods()]
    methods = split_list(text, ",", "--methods") or []
    for method in methods:
        get_method(method)  # ValueError naming the known methods
    return list(dict.fromkeys(methods))


@dataclass
class DetectionRun:
    """What ``detect`` writes to results.json, filled in as images are processed."""

    out_dir: Path
    header: dict[str, Any]
    images: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    interrupted: bool = False
    aborted: str | None = None

    @property
    def failed(self) -> list[str]:
        return [entry["path"] for entry in self.images if entry["status"] == "error"]

    def payload(self) -> dict[str, Any]:
        payload = {**self.header, "images": self.images, "failed": self.failed}
        if self.interrupted:
            payload["interrupted"] = True
        if self.aborted:
            payload["aborted"] = self.aborted
        return payload

    def save(self) -> Path:
        path = self.out_dir / RESULTS_FILE
        write_json_atomic(path, self.payload())
        return path


def _build_detectors(args: argparse.Namespace, methods: Sequence[str]) -> dict[str, Any]:
    from .registry import assign_checkpoints, create_detector

    normal_states = split_list(args.normal_states, ";", "--normal-states")
    abnormal_states = split_list(args.abnormal_states, ";", "--abnormal-states")
    templates = split_list(args.templates, ";", "--templates")
    checkpoints = assign_checkpoints(args.checkpoint, methods)  # ValueError: one line, exit 2
    detectors = {}
    fallback = _offline_fallback(args, methods)
    for method in methods:
        settings: dict[str, Any] = {}
        if args.sigma is not None:
            settings["sigma"] = args.sigma
        if method in checkpoints:
            settings["checkpoint"] = checkpoints[method]
        try:
            detector = create_detector(
                method,
                model=args.model or fallback.get(method),
                image_size=args.image_size,
                device=args.device,
                precision=args.precision,
                **settings,
            )
        except TypeError as error:  # a setting this method's config does not have
            raise UsageError(f"{method}: {error}") from error
        detector.prepare(
            args.category,
            normal_states=normal_states,
            abnormal_states=abnormal_states,
            templates=templates,
        )
        detectors[method] = detector
    return detectors


def _offline_fallback(args: argparse.Namespace, methods: Sequence[str]) -> dict[str, str]:
    """Without ``--model``: method -> the project's own model for methods whose paper backbone can be
    neither found nor downloaded (said in one line); empty when the paper backbones can be had."""
    from .availability import hub_reachable, model_status, offline_default_model
    from .registry import get_method

    fallback = offline_default_model()
    if args.model is not None or fallback is None:
        return {}
    downloadable = hub_reachable()
    chosen = {}
    for method in methods:
        paper = get_method(method).info.default_model
        if not model_status(paper, downloadable=downloadable).available:
            chosen[method] = fallback
            _report(
                f"warning: {method}'s paper backbone {paper} is not on this disk and cannot be downloaded; "
                f"using the project's own {fallback} (see weights/README.md for the paper weights)"
            )
    return chosen


def _warn_random_weights(detectors: dict[str, Any]) -> None:
    """One line per model with random weights (the project's tiny configs): its numbers mean nothing."""
    from .availability import is_random_weights

    for model in dict.fromkeys(detector.config.model for detector in detectors.values()):
        if is_random_weights(model):
            _report(f"warning: {model} has random weights: its maps and scores mean nothing (see weights/README.md)")


def _progress(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="image", file=sys.stderr, disable=None, dynamic_ncols=True, desc="detect")


def _report(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def _clean_category(text: str) -> str:
    from .prompts import clean_text

    category = clean_text(text, "--category")
    if not category:
        raise UsageError("--category is empty; give the object's name as it reads in a sentence, e.g. 'bottle'")
    return category


def _image_entry(image: InputImage, picture: Any) -> dict[str, Any]:
    """The results.json entry of a decoded image: its full size, and the reduction when its maps are smaller."""
    from .decode import full_size

    width, height = full_size(picture)
    entry: dict[str, Any] = {"path": str(image.path), "status": "ok", "image_size": [height, width], "results": {}}
    if picture.size != (width, height):
        entry["map_scale"] = round(picture.height / height, 6)
    return entry


def run_detect(args: argparse.Namespace) -> int:
    """``detect``: maps, overlays and results.json for every input image and method."""
    import numpy as np

    from . import __version__
    from .methods.base import detect_together
    from .preprocess import ImageError, load_image
    from .visualize import display_range, get_colormap, overlay, save_png

    get_colormap(args.cmap)  # a bad colour-map name fails now, not after the models are loaded
    category = _clean_category(args.category)
    methods = parse_methods(args.methods)
    if not methods:
        raise UsageError("no methods to run")
    problems: list[tuple[str, str]] = []
    images = collect_images(args.images, problems)
    if not images:
        raise UsageError("; ".join(message for _, message in problems) or "no images to process")
    out_dir = Path(args.out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} exists and is not a folder")
    detectors = _build_detectors(args, methods)  # configuration errors surface before anything is written
    _warn_random_weights(detectors)
    out_dir.mkdir(parents=True, exist_ok=True)
    batch_size = args.batch_size
    max_pixels = args.max_map_pixels or None
    run = DetectionRun(
        out_dir=out_dir,
        header={
            "zsad_version": __version__,
            "model": args.model,
            "category": category,
            "methods": list(methods),
            "settings": {
                method: {
                    "model": detector.config.model,
                    "image_size": detector.config.image_size,
                    "sigma": detector.config.sigma,
                    "device": str(detector.device),
                    "precision": detector.backbone.spec.precision,
                    "checkpoint": getattr(detector, "checkpoint_source", None),
                }
                for method, detector in detectors.items()
            },
            "colour_scale": args.scale,
            "max_map_pixels": max_pixels,
        },
    )
    for argument, problem in problems:  # inputs that named no image: reported, the others still run
        _report(f"error: {problem}")
        run.images.append({"path": argument, "status": "error", "error": problem, "results": {}})
    progress = _progress(len(images))
    try:
        for start in range(0, len(images), batch_size):
            entries: list[dict[str, Any]] = []  # one per input, in input order
            decoded = []  # (entry, name, picture) of the images that could be read
            for image in images[start : start + batch_size]:
                try:
                    picture = load_image(image.path, reduce_to=max_pixels)
                except ImageError as error:
                    _report(f"error: {error}")
                    entries.append({"path": str(image.path), "status": "error", "error": str(error), "results": {}})
                    continue
                entries.append(_image_entry(image, picture))
                decoded.append((entries[-1], image.name, picture))
            pictures = [picture for _, _, picture in decoded]
            # All methods on the batch together: the passes they share run once (detect_together).
            per_method = detect_together(list(detectors.values()), pictures, batch_size, errors="collect")
            for outcome in per_method.values():
                if isinstance(outcome, Exception):  # a model failing (out of memory, a bug) stops the run
                    raise outcome
            for index, (entry, name, picture) in enumerate(decoded):
                outcomes = {method: per_method[method][index] for method in methods}
                failed = [f"{method}: {outcome}" for method, outcome in outcomes.items() if isinstance(outcome, ImageError)]
                if failed:
                    _report(f"error: {'; '.join(failed)}")
                    entry.update(status="error", error="; ".join(failed))
                    continue
                ranges = display_range(outcomes, args.scale)
                for method, result in outcomes.items():
                    stem = f"{name}__{method}"
                    np.save(out_dir / f"{stem}.npy", result.anomaly_map.astype(np.float32, copy=False))
                    low, high = ranges[method]
                    picture_out = overlay(
                        picture, result, low, high, alpha=args.alpha, cmap=args.cmap, colorbar=args.colorbar
                    )
                    save_png(out_dir / f"{stem}.png", picture_out)
                    summary = result.summary()
                    summary.pop("method", None)
                    summary.pop("category", None)
                    entry["results"][method] = {**summary, "overlay": f"{stem}.png", "map": f"{stem}.npy"}
            run.images += entries
            progress.update(len(entries))
    except KeyboardInterrupt:
        run.interrupted = True
        progress.close()
        saved = run.save()
        print(f"interrupted: results so far in {saved}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        run.aborted = f"{type(error).__name__}: {error}"  # keep what was done, then let it surface
        progress.close()
        run.save()
        raise
    progress.close()
    saved = run.save()
    failed = run.failed
    done = len(run.images) - len(failed)
    print(
        f"{done} of {len(run.images)} images processed with {', '.join(methods)}; results in {saved}", file=sys.stderr
    )
    if failed:
        print(f"{len(failed)} image(s) failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def run_explain(args: argparse.Namespace) -> int:
    """``explain``: how much each prompt state moves one image's score, per method."""
    from .explain import explain_prompts
    from .preprocess import load_image

    category = _clean_category(args.category)
    methods = parse_methods(args.methods)
    picture = load_image(args.image)  # a bad file is named before any model is loaded
    detectors = _build_detectors(args, methods)
    _warn_random_weights(detectors)
    report = []
    for method, detector in detectors.items():
        result = detector.detect(picture, with_evidence=True)
        explanation = explain_prompts(result)
        report.append(
            {
                "method": method,
                "score": result.score,
                "text_score": explanation.text_score,
                "text_score_is": explanation.score_name,
                "states": explanation.rows()[: args.top] if args.top else explanation.rows(),
            }
        )
    if args.json:
        print(json.dumps({"image": str(args.image), "category": category, "methods": report}, indent=2))
        return EXIT_OK

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:+.4f}"

    for entry in report:
        print(f"{entry['method']}: text score {entry['text_score']:.4f} ({entry['text_score_is']})")
        rows = [
            [row["kind"], row["state"].replace("{}", category), f"{row['similarity']:.4f}", number(row["effect"])]
            for row in entry["states"]
        ]
        print(format_table(["kind", "state", "similarity", "effect"], rows))
        print()
    print("effect = score with every state - score without it: positive pushes the image towards abnormal")
    return EXIT_OK


# ---------------------------------------------------------------------------------------- parser
def _add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON instead of a table")
    parser.add_argument(
        "--models", action="store_true", help="list the tiny model configs and how to name open_clip models"
    )
    parser.set_defaults(handler=run_list)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Category, methods, model, device and prompt options shared by ``detect`` and ``explain``."""
    parser.add_argument("--category", required=True, help="the object's name as it reads in a prompt, e.g. 'bottle'")
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated method ids (see 'list'); default: every training-free method; 'all': every method",
    )
    parser.add_argument(
        "--model", default=None, help="backbone for all methods (see 'list --models'); default: each method's own"
    )
    parser.add_argument(
        "--image-size", type=_positive_int, default=None, help="model input side in pixels; default: each method's own"
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto = cuda when available)"
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "fp16", "bf16"),
        help="default: auto = bf16 on CPUs with native bf16 (AVX512-BF16/AMX), fp16 on CUDA, else fp32",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=8, help="images decoded and run together (default: 8)"
    )
    parser.add_argument(
        "--normal-states", default=None, help="';'-separated normal state words, e.g. 'flawless;perfect'"
    )
    parser.add_argument(
        "--abnormal-states", default=None, help="';'-separated abnormal state words, e.g. 'cracked;{} with a hole'"
    )
    parser.add_argument("--templates", default=None, help="';'-separated templates with '{}', e.g. 'a photo of a {}.'")
    parser.add_argument(
        "--sigma", type=_non_negative_float, default=None, help="Gaussian smoothing of the maps in pixels (0 = none)"
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=None,
        metavar="[METHOD=]CHECKPOINT",
        help="trained parameters (path or released name) of a learnable method, e.g. --checkpoint adaclip=a.safetensors "
        "--checkpoint sdp_plus=b.safetensors; a bare CHECKPOINT when exactly one learnable method runs",
    )


def _add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="one image file")
    _add_model_arguments(parser)
    parser.add_argument("--top", type=_positive_int, default=None, help="show only the N states of largest effect")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON instead of tables")
    parser.set_defaults(handler=run_explain)


def _add_detect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files, folders (searched recursively) or glob patterns such as 'shots/*.png'",
    )
    _add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument(
        "--scale",
        default="absolute",
        choices=("absolute", "per_image", "shared"),
        help="colour scale of the overlays: each method's map range (default), each map's own min-max, "
        "or one scale shared by all methods of an image",
    )
    parser.add_argument("--alpha", type=_fraction, default=0.5, help="heat-map opacity in the overlays (default: 0.5)")
    parser.add_argument("--cmap", default="jet", help="matplotlib colour map of the overlays (default: jet)")
    parser.add_argument("--colorbar", action="store_true", help="add a colour bar to each overlay")
    parser.add_argument(
        "--max-map-pixels",
        type=_non_negative_int,
        default=DEFAULT_MAX_MAP_PIXELS,
        help="images with more pixels are decoded, mapped and written at a size reduced by a whole factor "
        f"(results.json gives map_scale), which bounds memory and output size; 0: always full size "
        f"(default: {DEFAULT_MAX_MAP_PIXELS:,} = 4096 x 4096)",
    )
    parser.set_defaults(handler=run_detect)


def build_parser(load_commands: Collection[str] = ()) -> argparse.ArgumentParser:
    """The ``zsad`` argument parser.

    Args:
        load_commands: plugin commands (``eval``, ``train``) whose modules are imported to add their
            options; the others are listed by name only. :func:`main` loads the one being run.
    """
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="zsad",
        description="Zero-shot anomaly detection with CLIP (WinCLIP, CLIP-AD SDP/SDP+, AdaCLIP).",
        epilog="exit status: 0 ok, 1 some images failed, 2 usage or configuration error, 3 out of memory or internal error",
    )
    parser.add_argument("--version", action="version", version=f"zsad {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_list_arguments(
        subcommands.add_parser(
            "list", help="list methods (or --models: model names)", description="List the registered methods."
        )
    )
    _add_detect_arguments(
        subcommands.add_parser(
            "detect",
            help="anomaly maps and scores for images",
            description="Anomaly maps and scores for images: an overlay PNG and a raw NPY map per image and "
            "method, and results.json.",
        )
    )
    _add_explain_arguments(
        subcommands.add_parser(
            "explain",
            help="which prompt words move an image's score",
            description="For one image and each method: every normal and abnormal prompt state's similarity to "
            "the image and its leave-one-out effect on the score (zsad_core.explain).",
        )
    )
    for command in PLUGIN_COMMANDS:
        _add_plugin_command(subcommands, command, load=command.name in load_commands)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand in ``argv``: the first word that is not an option (top-level options take no value)."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


def _expected_errors() -> tuple[type[BaseException], ...]:
    from .backbone import ModelSpecError, WeightsNotFoundError
    from .preprocess import ImageError
    from .prompts import PromptError

    expected: tuple[type[BaseException], ...] = (
        UsageError,
        ImageError,
        WeightsNotFoundError,
        ModelSpecError,
        PromptError,
        ValueError,
        FileNotFoundError,
    )
    try:  # released checkpoints whose download does not match its recorded hash
        from .weights import WeightsIntegrityError
    except ImportError:
        return expected
    return (*expected, WeightsIntegrityError)


def _out_of_memory_error() -> type[BaseException]:
    import torch

    return torch.OutOfMemoryError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(load_commands={_chosen_command(argv)} - {None})
        args = parser.parse_args(argv)
    except CommandUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exit_request:  # --help, --version, and argparse's usage errors
        code = exit_request.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    previous_format = warnings.formatwarning
    if not args.debug:  # one readable line per warning, without the library source line under it
        warnings.formatwarning = _one_line_warning  # for this command only (restored below)
    started = time.perf_counter()
    try:
        status = int(args.handler(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `zsad list | head`: stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except _expected_errors() as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (MemoryError, _out_of_memory_error()) as error:
        if args.debug:
            raise
        print(
            f"error: out of memory ({type(error).__name__}); try a smaller --batch-size or --image-size"
            + (" or --max-map-pixels" if args.command == "detect" else ""),
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    except Exception as error:  # noqa: BLE001 - a bug: one line (and the traceback with --debug), not a usage error
        if args.debug:
            raise
        print(
            f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    finally:
        warnings.formatwarning = previous_format
    logger.debug("%s finished in %.2fs with status %d", args.command, time.perf_counter() - started, status)
    return status


def _one_line_warning(message: Warning | str, category: type[Warning], *_args: Any, **_kwargs: Any) -> str:
    """``warning: message``: the CLI's format of a warning, without the source line under it."""
    return f"warning: {message}\n"


if __name__ == "__main__":
    sys.exit(main())
