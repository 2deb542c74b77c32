"""Dataset specs (``"<format>:<path>"``) and the format registry."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import folder, medical, meta, mvtec, visa
from .base import AnomalyDataset

__all__ = [
    "DatasetFormat",
    "describe_dataset_format",
    "list_dataset_formats",
    "open_dataset",
    "parse_spec",
    "register_dataset_format",
    "split_data_specs",
]

Reader = Callable[..., AnomalyDataset]  # reader(root: Path, *, name: str, categories) -> AnomalyDataset


@dataclass(frozen=True)
class DatasetFormat:
    """A registered dataset format.

    Attributes:
        name: the spec prefix (``"mvtec"``).
        reader: ``reader(root, *, name, categories) -> AnomalyDataset``.
        layout: one-line description of the expected folder layout (used in error messages).
        description: what the format is.
    """

    name: str
    reader: Reader
    layout: str
    description: str = ""


_FORMATS: dict[str, DatasetFormat] = {}


def register_dataset_format(
    name: str, reader: Reader, layout: str, description: str = "", *, overwrite: bool = False
) -> DatasetFormat:
    """Register a reader under the spec prefix ``name`` (lower-case letters, digits, ``_``, ``-``)."""
    key = name.strip().lower()
    if not key or not all(c.isalnum() or c in "_-" for c in key):
        raise ValueError(f"invalid dataset format name {name!r}")
    if key in _FORMATS and not overwrite:
        raise ValueError(f"dataset format '{key}' is already registered")
    fmt = DatasetFormat(key, reader, layout, description)
    _FORMATS[key] = fmt
    return fmt


def list_dataset_formats() -> list[str]:
    """The known spec prefixes, in registration order."""
    return list(_FORMATS)


def describe_dataset_format(name: str) -> DatasetFormat:
    """The :class:`DatasetFormat` registered under ``name``."""
    key = name.strip().lower()
    if key not in _FORMATS:
        raise ValueError(f"unknown dataset format {name!r}; known formats: {', '.join(_FORMATS)}")
    return _FORMATS[key]


def _known() -> str:
    return ", ".join(f"{n}:" for n in _FORMATS)


def parse_spec(spec: str | os.PathLike) -> tuple[str, Path]:
    """Split ``"<format>:<path>"`` into ``(format, Path)``; ``~`` in the path is expanded.

    Raises:
        ValueError: no prefix, an empty path, or an unknown format.
    """
    text = os.fspath(spec) if not isinstance(spec, str) else spec
    fmt, sep, path = text.partition(":")
    fmt = fmt.strip().lower()
    if not sep or not path.strip() or not fmt:
        raise ValueError(
            f"dataset spec {text!r} should be '<format>:<path>', e.g. 'mvtec:/data/mvtec_anomaly_detection'; "
            f"known prefixes: {_known()}"
        )
    if fmt not in _FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r} in spec {text!r}; known prefixes: {_known()}")
    return fmt, Path(path.strip()).expanduser()


def split_data_specs(data: str | Sequence[str]) -> list[str]:
    """Split dataset specs given as ``"mvtec:/a,visa:/b"`` (or a list of such strings) into single specs.

    The one parser of ``--data`` for ``eval`` and ``train``. A comma starts a new spec only when what
    follows begins with a registered ``<format>:`` prefix (case-insensitive), so:

    - paths containing commas survive: ``"mvtec:/x,y"`` is one spec (a path piece that itself starts
      with a format name and a colon, ``"mvtec:/x,visa:y"``, cannot be told apart: pass such specs as
      separate list items or ``--data`` options);
    - Windows drive letters survive: ``"folder:C:\\data,visa:D:\\visa"`` gives two specs (no format
      is called ``c``);
    - spaces around each spec are stripped and empty items dropped; order is kept.
    """
    items = [data] if isinstance(data, str) else list(data)
    prefixes = tuple(f"{name}:" for name in list_dataset_formats())
    specs: list[str] = []
    for item in items:
        current = ""
        for piece in str(item).split(","):
            if current and piece.strip().lower().startswith(prefixes):
                specs.append(current.strip())
                current = piece
            else:
                current = f"{current},{piece}" if current else piece
        if current.strip():
            specs.append(current.strip())
    return specs


def open_dataset(spec: str, categories: Sequence[str] | None = None) -> AnomalyDataset:
    """Open the test split of a dataset from a spec string ``"<format>:<path>"``.

    Args:
        spec: e.g. ``"mvtec:/data/mvtec_anomaly_detection"``, ``"visa:/data/VisA_20220922"``,
            ``"meta:/data/ClinicDB"``, ``"folder:./my_images"``, ``"brainmri:/data/brain_tumor"``.
            :func:`list_dataset_formats` lists the prefixes; ``zsad_core/data/README.md`` the layouts.
        categories: optional subset of categories to read (unknown names raise ``ValueError``).

    Raises:
        ValueError: malformed spec, unknown prefix, unknown category, or content that does not
            match the layout (:class:`~zsad_core.data.base.DatasetLayoutError`).
        FileNotFoundError: the path or the files the layout requires are missing.
        Messages name the spec, the expected layout and the known prefixes.
    """
    fmt, path = parse_spec(spec)
    info = _FORMATS[fmt]
    if isinstance(categories, str):
        categories = [categories]
    hint = f"expected layout for '{fmt}:': {info.layout}; known prefixes: {_known()}"
    if not path.exists():
        raise FileNotFoundError(f"dataset spec {spec!r}: path '{path}' does not exist ({hint})")
    try:
        return info.reader(path, name=fmt, categories=list(categories) if categories is not None else None)
    except (FileNotFoundError, ValueError) as err:
        if str(err).startswith("dataset spec "):
            raise
        try:
            wrapped = type(err)(f"dataset spec {spec!r}: {err} ({hint})")
        except TypeError:  # pragma: no cover - exotic subclass signature
            raise err from None
        raise wrapped from err


register_dataset_format(
    "mvtec", mvtec.read_mvtec, mvtec.LAYOUT, "MVTec AD and sets in its layout (MVTec 3D-AD, MPDD, BTAD...)"
)
register_dataset_format("visa", visa.read_visa, visa.LAYOUT, "VisA via split_csv/1cls.csv")
register_dataset_format(
    "meta", meta.read_meta, meta.LAYOUT, "any set indexed by an April-GAN/AdaCLIP meta.json"
)
register_dataset_format("folder", folder.read_folder, folder.LAYOUT, "a plain folder: good/ + defect folders")
for _name, _desc in (
    ("headct", "HeadCT (hemorrhage), image-level"),
    ("brainmri", "Brain MRI tumour detection, image-level"),
    ("br35h", "Br35H brain tumour, image-level"),
):
    register_dataset_format(_name, medical.read_image_label_set, medical.IMAGE_LABEL_LAYOUT, _desc)
for _name, _desc in (
    ("isic", "ISIC 2016 skin lesion segmentation test set, pixel-level"),
    ("clinicdb", "CVC-ClinicDB colon polyps, pixel-level"),
    ("colondb", "CVC-ColonDB colon polyps, pixel-level"),
    ("kvasir", "Kvasir-SEG colon polyps, pixel-level"),
    ("tn3k", "TN3K thyroid nodules, pixel-level"),
):
    register_dataset_format(_name, medical.read_image_mask_set, medical.IMAGE_MASK_LAYOUT, _desc)
