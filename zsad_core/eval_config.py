"""The settings of an evaluation run: one dataclass, from which :func:`zsad_core.evaluate.evaluate`'s
keyword arguments, the ``eval`` command's options and the settings checked on ``--resume`` all derive.

:class:`EvalConfig` takes what a user gives (``"winclip,sdp"`` or a list, ``"mvtec:/a,visa:/b"``,
``aupro_variant="official"``...) and normalises and validates it on construction, raising
:class:`EvaluationError` with a message that says what to fix. Each field that is a command-line
option carries its ``argparse`` arguments in its metadata (:func:`add_eval_arguments` reads them and
:meth:`EvalConfig.from_args` reads the parsed values back).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backbone import resolve_precision
from .data import split_data_specs
from .registry import assign_checkpoints, get_method, list_methods
from .weights import find_released_weights

__all__ = ["AUPRO_CHOICES", "EvalConfig", "EvaluationError", "add_eval_arguments", "method_settings"]

#: ``--aupro`` choices -> the variant name of :func:`zsad_core.metrics.aupro`.
AUPRO_CHOICES: dict[str, str] = {"cflow": "cflow", "official": "mvtec", "mvtec": "mvtec"}

CheckpointArg = str | os.PathLike | Sequence[str] | Mapping[str, str] | None


class EvaluationError(ValueError):
    """A usage or configuration problem (bad argument, unknown method or dataset, settings that do not
    match the partial results being resumed); the message says what and how to fix it."""


def _option(*flags: str, **argparse_kwargs: Any) -> dict[str, Any]:
    """A field's metadata: its command-line flags and ``add_argument`` keyword arguments."""
    return {"flags": flags, "argparse": argparse_kwargs}


def _split_list(value: str | Sequence[str] | None) -> list[str] | None:
    """ "a,b" or ["a", "b,c"] -> ["a", "b", "c"] (stripped, empty items dropped, order kept)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        out.extend(part.strip() for part in str(item).split(",") if part.strip())
    return out


def _positive_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise EvaluationError(f"{what} must be a positive integer, got {value!r}") from None
    if number <= 0 or number != float(value):
        raise EvaluationError(f"{what} must be a positive integer, got {value!r}")
    return number


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate, how, and where to write it (the arguments of :func:`zsad_core.evaluate.evaluate`).

    Attributes (as given; normalised on construction):
        methods: registered method ids (``["winclip", "sdp"]`` or ``"winclip,sdp"``) -> a list.
        data: dataset specs (``["mvtec:/data/mvtec", "visa:/data/visa"]`` or ``"mvtec:/a,visa:/b"``,
            :func:`zsad_core.data.split_data_specs`) -> a list of single specs.
        out_dir: output folder (created) -> a Path.
        categories: only these categories (each must exist in at least one dataset; a dataset with
            none of them is skipped) -> a list or None.
        model: backbone for every method (default: each method's paper backbone).
        image_size: input side S for every method (default: each method's paper size).
        device: "cpu", "cuda", "cuda:1"... (default: CUDA when available; under torchrun each rank
            uses ``cuda:LOCAL_RANK``).
        precision: "fp32", "fp16", "bf16" (default, or "auto": fp32 on CPU, fp16 on CUDA).
        full_resolution: pixel metrics at each image's own size instead of the papers' S x S.
        resume: reuse finished categories saved in ``out_dir/partial`` by an earlier run with the same
            settings (a mismatch raises :class:`EvaluationError`).
        aupro_variant: "cflow" (papers) or "official" (alias "mvtec"), see :func:`zsad_core.metrics.aupro`
            -> the metric's variant name ("cflow" or "mvtec").
        checkpoint: trained parameters for the methods that load one (e.g. SDP+, AdaCLIP): ``{method:
            checkpoint}``, ``"METHOD=CHECKPOINT"`` strings, or one bare checkpoint when exactly one
            learnable method runs (:func:`zsad_core.registry.assign_checkpoints`) -> ``{method: checkpoint}``.
        batch_size: images per forward pass (default: each method's own).
        progress: show a tqdm progress bar (images x methods, with the time left) on stderr.
        limit: at most this many images per category, both labels kept
            (:func:`zsad_core.evaluate.select_samples`).
    """

    methods: list[str] | str = field(
        metadata=_option("--methods", required=True, help="comma-separated method ids, e.g. winclip,sdp")
    )
    data: list[str] | str = field(
        metadata=_option(
            "--data",
            required=True,
            action="append",
            help="dataset spec(s) '<format>:<path>', comma-separated or repeated, "
            "e.g. mvtec:/data/mvtec,visa:/data/visa",
        )
    )
    out_dir: Path | str | os.PathLike = field(
        metadata=_option(
            "--out", dest="out", required=True, help="output folder for results.json, results.md, scores.csv"
        )
    )
    categories: list[str] | str | None = field(
        default=None, metadata=_option("--categories", help="only these categories (comma-separated)")
    )
    model: str | None = field(
        default=None,
        metadata=_option("--model", help="backbone for every method (default: each method's paper backbone)"),
    )
    image_size: int | None = field(
        default=None,
        metadata=_option("--image-size", type=int, help="input side S for every method (default: paper size)"),
    )
    device: str | None = field(
        default=None, metadata=_option("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    )
    precision: str | None = field(
        default=None,
        metadata=_option(
            "--precision", choices=["fp32", "fp16", "bf16", "auto"], help="default: fp32 on CPU, fp16 on CUDA"
        ),
    )
    full_resolution: bool = field(
        default=False,
        metadata=_option(
            "--full-resolution",
            action="store_true",
            help="pixel metrics at each image's own size (default: the papers' S x S model map)",
        ),
    )
    resume: bool = field(
        default=False,
        metadata=_option("--resume", action="store_true", help="reuse finished categories from OUT/partial"),
    )
    aupro_variant: str = field(
        default="cflow",
        metadata=_option(
            "--aupro",
            dest="aupro",
            default="cflow",
            choices=["cflow", "official"],
            help="AUPRO variant: cflow (as the papers, default) or official (MVTec AD)",
        ),
    )
    checkpoint: CheckpointArg | dict[str, str] = field(
        default=None,
        metadata=_option(
            "--checkpoint",
            action="append",
            metavar="[METHOD=]CHECKPOINT",
            help="trained parameters of a learnable method (SDP+, AdaCLIP), e.g. --checkpoint "
            "adaclip=a.safetensors; repeat for each; a bare CHECKPOINT when exactly one learnable method runs",
        ),
    )
    batch_size: int | None = field(
        default=None,
        metadata=_option("--batch-size", type=int, help="images per forward pass (default: the method's)"),
    )
    progress: bool = field(
        default=True,
        metadata=_option("--no-progress", dest="no_progress", action="store_true", help="no progress bar")
        | {"negated": True},
    )
    limit: int | None = field(
        default=None,
        metadata=_option("--limit", type=int, help="at most N images per category (both labels kept), for quick looks"),
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        method_ids = _split_list(self.methods) or []
        if not method_ids:
            raise EvaluationError("no methods given; e.g. --methods winclip,sdp")
        known = [info.id for info in list_methods()]
        unknown = [m for m in method_ids if m not in known]
        if unknown:
            raise EvaluationError(f"unknown method(s) {unknown}; known methods: {', '.join(known)}")
        if len(set(method_ids)) != len(method_ids):
            raise EvaluationError(f"a method is listed twice in {method_ids}")
        specs = split_data_specs(self.data) if self.data else []
        if not specs:
            raise EvaluationError("no dataset given; e.g. --data mvtec:/data/mvtec_anomaly_detection")
        variant = AUPRO_CHOICES.get(str(self.aupro_variant).lower())
        if variant is None:
            raise EvaluationError(
                f"unknown AUPRO variant {self.aupro_variant!r}; choose one of {sorted(AUPRO_CHOICES)}"
            )
        try:
            checkpoints = assign_checkpoints(self.checkpoint, method_ids)
        except ValueError as error:
            raise EvaluationError(str(error)) from error
        for path in checkpoints.values():
            if not Path(path).expanduser().exists() and ":" not in path and find_released_weights(path) is None:
                raise EvaluationError(f"checkpoint file not found: {path}")
        out = Path(self.out_dir).expanduser()
        if out.exists() and not out.is_dir():
            raise EvaluationError(f"output path {out} exists and is not a folder")
        set_(self, "methods", method_ids)
        set_(self, "data", specs)
        set_(self, "out_dir", out)
        set_(self, "categories", _split_list(self.categories))
        set_(self, "image_size", _positive_int(self.image_size, "image size"))
        set_(self, "precision", None if self.precision == "auto" else self.precision)
        set_(self, "aupro_variant", variant)
        set_(self, "checkpoint", checkpoints)
        set_(self, "batch_size", _positive_int(self.batch_size, "batch size"))
        set_(self, "limit", _positive_int(self.limit, "limit"))
        set_(self, "resume", bool(self.resume))
        set_(self, "progress", bool(self.progress))

    @property
    def protocol(self) -> str:
        """``"full_resolution"`` or the papers' ``"model_map"``."""
        return "full_resolution" if self.full_resolution else "model_map"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvalConfig:
        """The config of parsed ``eval`` options (:func:`add_eval_arguments`)."""
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            dest = item.metadata["argparse"].get("dest", item.name)
            value = getattr(args, dest, item.metadata["argparse"].get("default", None))
            values[item.name] = not value if item.metadata.get("negated") else value
        return cls(**values)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``eval`` options (one per :class:`EvalConfig` field) to ``parser``."""
    for item in dataclasses.fields(EvalConfig):
        parser.add_argument(*item.metadata["flags"], **item.metadata["argparse"])


def method_settings(method: str, config: EvalConfig, device: str) -> dict[str, Any]:
    """The settings a method's numbers depend on (checked on resume), resolved without loading it."""
    cls = get_method(method)
    changes: dict[str, Any] = {}
    if config.model is not None:
        changes["model"] = config.model
    if config.image_size is not None:
        changes["image_size"] = config.image_size
    checkpoint = config.checkpoint.get(method)
    if checkpoint is not None:
        changes["checkpoint"] = checkpoint
    resolved = cls.config_class().replace(**changes)
    settings = {
        "method": method,
        "model": resolved.model,
        "image_size": int(resolved.image_size),
        "protocol": config.protocol,
        "aupro_variant": config.aupro_variant,
        "precision": resolve_precision(config.precision, device),
        "limit": config.limit,
        "checkpoint": checkpoint,
    }
    # ... and every other setting of the method (resize policy, text rounding, ...), as JSON gives it back
    method_config = json.loads(json.dumps(dataclasses.asdict(resolved), default=str))
    return {**{name: value for name, value in method_config.items() if name not in settings}, **settings}
