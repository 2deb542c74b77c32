"""Registry of released checkpoints for the trained methods, and where to find them offline.

``load_checkpoint("adaclip-mvtec-colondb")`` (or ``create_detector("adaclip", checkpoint=...)``)
resolves a name listed here to a file:

1. the local weights folders (``$ZSAD_WEIGHTS_DIR``, ``weights/`` beside the package, ``./weights``;
   see :func:`zsad_core.backbone.weights_dirs`), as ``<folder>/<filename>``;
2. the Hugging Face cache, for entries published on the Hub, at the entry's pinned ``revision``;
3. a download of that revision from the Hub, only when it is reachable (``HF_HUB_OFFLINE=1`` forbids it).

When all fail, :class:`~zsad_core.backbone.WeightsNotFoundError` says where the file comes from and
where to put it. When an entry's ``sha256`` is known the file is verified first, wherever it was
found (:class:`WeightsIntegrityError` when it differs).

:func:`find_local_released_weights` answers "is it already on this disk?" without network and
without hashing, for pages that list the checkpoints.

Entries:

- AdaCLIP (methods.md §2.11): the authors' three checkpoints, mirrored unchanged on the Hub repo
  ``cubert-gmbh/adaclip`` (AdaCLIP issue #59). The revision and sha256 pins are the ones listed in
  the public weights registry of cubert-hyperspectral/cuvis-ai-core
  (``cuvis_ai_core/data/model_weights.py``; recorded in the project's design notes, 2026-12); they
  were not re-hashed here, as the files cannot be downloaded on the machines this was written on.
  The file names pair MVTec AD with ColonDB and VisA with ClinicDB, as the AdaCLIP README's Train
  section does (its weights table labels them otherwise).
- SDP+ (methods.md §3.5): ``pretrained_models/train_on_{mvtec,visa}.pth`` are tracked in the
  authors' git repository https://github.com/ByChelsea/CLIP-AD, not on the Hub. Download them from
  there (GitHub's "Download raw file") and put them in a weights folder; or retrain with
  ``python -m zsad_core train sdp_plus``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .backbone import WeightsNotFoundError, weights_dirs
from .hub import cache_description, hub_fetch


class WeightsIntegrityError(RuntimeError):
    """A weights file whose sha256 differs from the registry's: corrupt, truncated or another file."""


@dataclass(frozen=True)
class ReleasedWeights:
    """One released checkpoint.

    Attributes:
        name: the name to pass as ``checkpoint=`` (lower case, e.g. "adaclip-mvtec-colondb").
        method: the method id it loads into.
        model: the backbone model string it was trained with (see :mod:`zsad_core.backbone`), e.g.
            "ViT-L-14-336:openai"; a detector loading it must use this backbone.
        image_size: the input side S in pixels it was trained at.
        hub_repo: Hugging Face Hub repository holding it, or None when it is not on the Hub.
        filename: file name in that repository, and in the local weights folders.
        revision: Hub revision (commit) to pin, or None for the latest.
        sha256: expected hex digest of the file, or None when unknown (no verification).
        license: the license under which the authors released it.
        trained_on: the auxiliary data it was trained on.
        notes: where else to get it, and what it is meant for.
    """

    name: str
    method: str
    model: str
    image_size: int
    hub_repo: str | None
    filename: str
    revision: str | None
    sha256: str | None
    license: str
    trained_on: str
    notes: str = ""

    @property
    def source(self) -> str:
        """Where the file comes from, in words."""
        if self.hub_repo:
            return f"https://huggingface.co/{self.hub_repo} (file '{self.filename}')"
        return self.notes


# Hub commit of cubert-gmbh/adaclip holding the three files, and their sha256, as listed in the public
# registry of cubert-hyperspectral/cuvis-ai-core (cuvis_ai_core/data/model_weights.py).
_ADACLIP_REVISION = "16153b4ba74c2fe54a99679fc2e1b1e29993dc3f"
_ADACLIP_MODEL = "ViT-L-14-336:openai"  # run with plain GELU (AdaCLIPConfig.quick_gelu=False)
_ADACLIP_SIZE = 518
_SDP_PLUS_MODEL = "ViT-B-16-plus-240:laion400m_e31"
_SDP_PLUS_SIZE = 240

_ADACLIP_NOTES = (
    "AdaCLIP authors' release (Google Drive / Baidu links in caoyunkang/AdaCLIP README), mirrored unchanged "
    f"on the Hub; load with model {_ADACLIP_MODEL} (GELU), {_ADACLIP_SIZE} px."
)
_SDP_PLUS_NOTES = (
    "not on the Hugging Face Hub: download pretrained_models/{file} from the authors' repository "
    "https://github.com/ByChelsea/CLIP-AD (open the file on GitHub and use 'Download raw file'); load with model "
    f"{_SDP_PLUS_MODEL}, {_SDP_PLUS_SIZE} px, layers 3/6/9/12, reference_aliasing=True."
)

RELEASED_WEIGHTS: tuple[ReleasedWeights, ...] = (
    ReleasedWeights(
        name="adaclip-mvtec-colondb",
        method="adaclip",
        model=_ADACLIP_MODEL,
        image_size=_ADACLIP_SIZE,
        hub_repo="cubert-gmbh/adaclip",
        filename="pretrained_mvtec_colondb.pth",
        revision=_ADACLIP_REVISION,
        sha256="be51a42c052bd4cf060e54f503a1f5d0b2a3b899bc8dc2e243042f18b215427e",
        license="MIT (caoyunkang/AdaCLIP)",
        trained_on="MVTec AD + ColonDB (test splits)",
        notes=_ADACLIP_NOTES + " Zero-shot on VisA, ClinicDB, BTAD, MPDD, KSDD, DAGM, DTD, HeadCT, BrainMRI, "
        "Br35H, ISIC, TN3K.",
    ),
    ReleasedWeights(
        name="adaclip-visa-clinicdb",
        method="adaclip",
        model=_ADACLIP_MODEL,
        image_size=_ADACLIP_SIZE,
        hub_repo="cubert-gmbh/adaclip",
        filename="pretrained_visa_clinicdb.pth",
        revision=_ADACLIP_REVISION,
        sha256="3deabbbaf1e412cfdfcb42923a500b986f4b9ee96ccbc7a735d89dbc87df44c8",
        license="MIT (caoyunkang/AdaCLIP)",
        trained_on="VisA + ClinicDB (test splits)",
        notes=_ADACLIP_NOTES + " Zero-shot on MVTec AD and ColonDB.",
    ),
    ReleasedWeights(
        name="adaclip-all",
        method="adaclip",
        model=_ADACLIP_MODEL,
        image_size=_ADACLIP_SIZE,
        hub_repo="cubert-gmbh/adaclip",
        filename="pretrained_all.pth",
        revision=_ADACLIP_REVISION,
        sha256="33e8d3db1cb4aab030866b8b70a46e10aa27ebf2c23b5463cb07f2574addd98c",
        license="MIT (caoyunkang/AdaCLIP)",
        trained_on="all 14 datasets of the AdaCLIP paper (test splits)",
        notes=_ADACLIP_NOTES + " Demo only: not zero-shot on any of the paper's datasets.",
    ),
    ReleasedWeights(
        name="sdp-plus-mvtec",
        method="sdp_plus",
        model=_SDP_PLUS_MODEL,
        image_size=_SDP_PLUS_SIZE,
        hub_repo=None,
        filename="train_on_mvtec.pth",
        revision=None,
        sha256=None,
        license="see https://github.com/ByChelsea/CLIP-AD",
        trained_on="MVTec AD (test split)",
        notes=_SDP_PLUS_NOTES.format(file="train_on_mvtec.pth") + " Zero-shot on VisA, ISIC, ClinicDB.",
    ),
    ReleasedWeights(
        name="sdp-plus-visa",
        method="sdp_plus",
        model=_SDP_PLUS_MODEL,
        image_size=_SDP_PLUS_SIZE,
        hub_repo=None,
        filename="train_on_visa.pth",
        revision=None,
        sha256=None,
        license="see https://github.com/ByChelsea/CLIP-AD",
        trained_on="VisA (test split)",
        notes=_SDP_PLUS_NOTES.format(file="train_on_visa.pth")
        + " Zero-shot on MVTec AD, HeadCT, BrainMRI; the official VisA scripts smooth with sigma 2.",
    ),
)


def list_released_weights(method: str | None = None) -> list[ReleasedWeights]:
    """The registered checkpoints, optionally only those for ``method``."""
    return [w for w in RELEASED_WEIGHTS if method is None or w.method == method]


def find_released_weights(name: str) -> ReleasedWeights | None:
    """The entry called ``name`` (case-insensitive; its file name also matches), or None."""
    key = name.strip().lower()
    for entry in RELEASED_WEIGHTS:
        if key in (entry.name, entry.filename.lower()):
            return entry
    return None


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(entry: ReleasedWeights, path: Path) -> Path:
    if entry.sha256 is not None:
        found = file_sha256(path)
        if found.lower() != entry.sha256.lower():
            raise WeightsIntegrityError(
                f"{path} is not the released '{entry.name}' checkpoint: sha256 {found}, expected {entry.sha256}. "
                f"Download it again from {entry.source}."
            )
    return path


def _entry(name: str) -> ReleasedWeights:
    entry = find_released_weights(name)
    if entry is None:
        known = ", ".join(w.name for w in RELEASED_WEIGHTS)
        raise ValueError(f"unknown released weights {name!r}; known: {known}")
    return entry


def find_local_released_weights(name: str) -> Path | None:
    """The path of released checkpoint ``name`` when it is already on this disk, else None.

    Looks where :func:`resolve_released_weights` looks first: the local weights folders, then the
    Hugging Face cache at the entry's pinned revision. Never touches the network and never hashes
    the file (it is meant for a page that lists the checkpoints; :func:`resolve_released_weights`
    verifies the sha256 when the file is used).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    entry = _entry(name)
    for folder in weights_dirs():
        candidate = folder / entry.filename
        if candidate.is_file():
            return candidate
    if entry.hub_repo:
        from huggingface_hub import try_to_load_from_cache

        # a plain look-up in the cache folders (refs, snapshots): no request, unlike hf_hub_download
        cached = try_to_load_from_cache(entry.hub_repo, entry.filename, revision=entry.revision)
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
    return None


def resolve_released_weights(name: str) -> Path:
    """The local path of released checkpoint ``name``: weights folders, Hub cache, then Hub download.

    The Hub cache and the download use the entry's pinned ``revision``; a file found anywhere is
    checked against the entry's ``sha256`` when it has one.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        zsad_core.backbone.WeightsNotFoundError: not on this disk and not downloadable; the message
            says where the file comes from and where to put it.
        WeightsIntegrityError: the file found has another sha256 than the registry's.
    """
    entry = _entry(name)
    looked_in = []
    for folder in weights_dirs():
        candidate = folder / entry.filename
        if candidate.is_file():
            return _verified(entry, candidate)
        looked_in.append(str(candidate))
    if entry.hub_repo:
        looked_in.append(cache_description(entry.hub_repo))
        path = hub_fetch(entry.hub_repo, (entry.filename,), revision=entry.revision)
        if path is not None:
            return _verified(entry, path)
    raise WeightsNotFoundError(
        f"Could not find the released weights '{entry.name}' ({entry.method}, trained on {entry.trained_on}).\n"
        "Looked in:\n  - " + "\n  - ".join(looked_in) + "\n"
        f"Where to get the file '{entry.filename}': {entry.source}\n"
        f"Put it at {looked_in[0]} (or in the folder named by $ZSAD_WEIGHTS_DIR), "
        "or pass the file path itself as the checkpoint."
    )
