"""Export a method's torch model, with one category's text baked in, as an ONNX file or a ``torch.export`` program.

An exported model is the method's :class:`~zsad_core.methods.base.AnomalyModel` after text
preparation: ``(B, 3, S, S)`` normalised pixels in, ``scores`` (B,) and smoothed ``maps`` (B, S, S)
out, at the batch size and input size it was exported with. Decoding, resizing and normalising the
image (:meth:`Detector.preprocess`) and resizing the map back to the image stay outside, as in the
Python API; :func:`export_metadata` records what the consumer needs (mean, std, size, method).

What can be exported:

- WinCLIP, SDP and SDP+: everything.
- AdaCLIP: the whole image side, the dynamic text prompts and the text tower included (the
  category's token ids are constants of the graph). Its HSF image score clusters with
  scikit-learn's KMeans on the host, which no graph can hold: export with ``hsf_kmeans="torch"``
  (fixed-iteration k-means on the device, initialised from the most anomalous patches; its
  clusters, hence the scores, differ slightly from scikit-learn's) or ``use_hsf=False``.
  :func:`check_exportable` says so before anything runs.

The CLI (``python -m zsad_core export``) exports, then runs the file (onnxruntime for ONNX) on a
test batch and prints its largest difference from the eager model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .methods.base import AnomalyModel, Detector

EXPORT_FORMATS = ("onnx", "torch-export")


class NotExportableError(ValueError):
    """A detector whose settings need something no exported graph can hold; the message says which setting."""


class BakedTextModel(nn.Module):
    """``forward(pixels) -> (scores (B,), maps (B, S, S))``: a method's model with its text features fixed.

    Args:
        model: the method's :class:`AnomalyModel` (shared, not copied).
        text: the prepared category's text features (:attr:`Detector.text_features`).
    """

    def __init__(self, model: AnomalyModel, text: Any) -> None:
        super().__init__()
        self.model = model
        self.text = text

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(pixels, self.text)
        return output.scores, output.maps


def check_exportable(detector: Detector) -> None:
    """Raise :class:`NotExportableError` naming the setting when ``detector`` cannot be exported."""
    config = detector.config
    if getattr(config, "use_hsf", False) and getattr(config, "hsf_kmeans", "torch") == "sklearn":
        raise NotExportableError(
            f"{detector.method_id}: the HSF image score clusters with scikit-learn's KMeans on the host, which an "
            "exported graph cannot hold; export with hsf_kmeans='torch' (k-means on the device) or use_hsf=False"
        )
    if detector.category is None:
        raise NotExportableError(
            f"{detector.method_id}: call prepare(category) first; the text is baked into the export"
        )


def export_metadata(detector: Detector, batch_size: int) -> dict[str, str]:
    """What a consumer of the exported file needs to feed it and read it (all strings)."""
    mean, std = detector.backbone.mean_std
    return {
        "method": detector.method_id,
        "model": detector.config.model,
        "category": detector.category or "",
        "image_size": str(detector.config.image_size),
        "batch_size": str(batch_size),
        "mean": json.dumps(list(mean)),
        "std": json.dumps(list(std)),
        "inputs": "pixels: (B, 3, S, S) float32, RGB resized to S x S, (x / 255 - mean) / std",
        "outputs": "scores: (B,) float32; maps: (B, S, S) float32 smoothed anomaly maps",
        "settings": json.dumps({k: v for k, v in vars(detector.config).items()}, default=str),
    }


@dataclass
class ExportResult:
    """What :func:`export_detector` wrote and how well the file reproduces the eager model.

    Attributes:
        path: the written file.
        max_score_difference, max_map_difference: largest absolute differences between the file's
            outputs and the eager model's on the check batch.
    """

    path: Path
    max_score_difference: float
    max_map_difference: float


def _example_pixels(detector: Detector, batch_size: int, seed: int = 0) -> torch.Tensor:
    size = detector.config.image_size
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, size, size, generator=generator).to(detector.device)


def export_detector(
    detector: Detector,
    path: str | os.PathLike,
    export_format: str = "onnx",
    batch_size: int = 1,
    check_pixels: torch.Tensor | None = None,
) -> ExportResult:
    """Export ``detector``'s model with its prepared category and check the file against eager.

    Args:
        detector: a prepared detector (see :func:`check_exportable`).
        path: the output file (``.onnx`` or ``.pt2`` by convention).
        export_format: one of :data:`EXPORT_FORMATS`.
        batch_size: B of the exported graph.
        check_pixels: (B, 3, S, S) batch to compare on; default a seeded random batch.
    Returns:
        :class:`ExportResult`.
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {export_format!r}; choose from {EXPORT_FORMATS}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    check_exportable(detector)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = BakedTextModel(detector.model, detector.text_features).eval()
    pixels = _example_pixels(detector, batch_size) if check_pixels is None else check_pixels.to(detector.device)
    with torch.no_grad():
        eager_scores, eager_maps = module(pixels)
        if export_format == "onnx":
            program = torch.onnx.export(
                module, (pixels,), dynamo=True, input_names=["pixels"], output_names=["scores", "maps"], verbose=False
            )
            for key, value in export_metadata(detector, batch_size).items():
                program.model.metadata_props[key] = value
            program.save(str(path))
            scores, maps = run_onnx(path, pixels)
        else:
            program = torch.export.export(module, (pixels,))
            torch.export.save(
                program, str(path), extra_files={"zsad.json": json.dumps(export_metadata(detector, batch_size))}
            )
            scores, maps = (t.numpy() for t in run_torch_export(path, pixels))
    return ExportResult(
        path=path,
        max_score_difference=float(np.abs(scores - eager_scores.float().cpu().numpy()).max()),
        max_map_difference=float(np.abs(maps - eager_maps.float().cpu().numpy()).max()),
    )


def run_onnx(path: str | os.PathLike, pixels: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported ONNX file with onnxruntime on the CPU: (B, 3, S, S) -> (scores, maps) numpy."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    array = (
        pixels.detach().float().cpu().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels, np.float32)
    )
    scores, maps = session.run(["scores", "maps"], {"pixels": array})
    return scores, maps


def run_torch_export(path: str | os.PathLike, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a saved ``torch.export`` program and run it: (B, 3, S, S) -> (scores, maps) on the CPU."""
    program = torch.export.load(str(path))
    with torch.no_grad():
        scores, maps = program.module()(pixels.detach().float().cpu())
    return scores, maps


# ------------------------------------------------------------------------------------------- CLI
def _parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value); the value is read as JSON when it parses (numbers, true, lists)."""
    key, separator, raw = text.partition("=")
    if not separator or not key.strip():
        raise ValueError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), tuple(value) if isinstance(value, list) else value


def add_export_arguments(parser: Any) -> Any:
    """Options of ``python -m zsad_core export``."""
    parser.add_argument("--method", required=True, help="method id (see 'list')")
    parser.add_argument("--category", required=True, help="the object's name as it reads in a prompt; baked in")
    parser.add_argument("--model", default=None, help="backbone (see 'list --models'); default: the method's own")
    parser.add_argument("--image-size", type=int, default=None, help="input side S; default: the method's own")
    parser.add_argument("--checkpoint", default=None, help="trained parameters for a learnable method")
    parser.add_argument("--format", dest="export_format", default="onnx", choices=EXPORT_FORMATS)
    parser.add_argument("--batch", type=int, default=1, help="batch size of the exported graph (default: 1)")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method setting, e.g. --set hsf_kmeans=torch (repeatable; values read as JSON when they parse)",
    )
    parser.add_argument("--out", required=True, help="output file (.onnx, or .pt2 for torch-export)")
    return parser


def run_export(args: Any) -> int:
    """``export``: build, prepare, export, check against eager, print one line per fact."""
    from .registry import create_detector

    settings = dict(_parse_setting(text) for text in args.settings)
    if args.checkpoint is not None:
        settings["checkpoint"] = args.checkpoint
    try:
        detector = create_detector(
            args.method, model=args.model, image_size=args.image_size, device="cpu", precision="fp32", **settings
        )
    except TypeError as error:  # a setting this method's config does not have
        raise ValueError(f"{args.method}: {error}") from None
    detector.prepare(args.category)
    result = export_detector(detector, args.out, args.export_format, args.batch)
    print(
        f"wrote {result.path} ({args.export_format}, {detector.method_id} on {detector.config.model}, "
        f"category {detector.category!r}, input {args.batch}x3x{detector.config.image_size}x{detector.config.image_size})"
    )
    print(
        f"checked against the eager model: max |score difference| {result.max_score_difference:.2e}, "
        f"max |map difference| {result.max_map_difference:.2e}"
    )
    return 0
