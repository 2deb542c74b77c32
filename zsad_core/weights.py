"""Registry of released checkpoints for the trained methods, and where to find them offline.

``load_checkpoint("adaclip-mvtec-colondb")`` (or ``create_detector("adaclip", checkpoint=...)``)
resolves a name listed here to a file:

1. the local weights folders (``$ZSAD_WEIGHTS_DIR``, ``weights/`` beside the package, ``./weights``;
   see :func:`zsad_core.backbone.weights_dirs`), as ``<folder>/<filename>``;
2. the Hugging Face cache, for entries published on the Hub;
3. a download from the Hub, only when it is reachable (``HF_HUB_OFFLINE=1`` forbids it).

When all fail, :class:`~zsad_core.backbone.WeightsNotFoundError` says where the file comes from and
where to put it. When an entry's ``sha256`` is known the file is verified first
(:class:`WeightsIntegrityError` when it differs).

Entries:

- AdaCLIP (methods.md §2.11): the authors' three checkpoints, mirrored unchanged on the Hub repo
  ``cubert-gmbh/adaclip`` (AdaCLIP issue #59). Their revision and hashes were not verifiable
  offline when this list was written, so ``revision`` and ``sha256`` are None (latest revision,
  no verification).
- SDP+ (methods.md §3.5): ``pretrained_models/train_on_{mvtec,visa}.pth`` are tracked in the
  authors' git repository https://github.com/ByChelsea/CLIP-AD, not on the Hub. Download them from
  there (GitHub's "Download raw file") and put them in a weights folder; or retrain with
  ``python -m zsad_core train sdp_plus``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from .backbone import WeightsNotFoundError, _hub_reachable, weights_dirs

logger = logging.getLogger(__name__)


class WeightsIntegrityError(RuntimeError):
    """A weights file whose sha256 differs from the registry's: corrupt, truncated or another file."""


@dataclass(frozen=True)
class ReleasedWeights:
    """One released checkpoint.

    Attributes:
        name: the name to pass as ``checkpoint=`` (lower case, e.g. "adaclip-mvtec-colondb").
        method: the method id it loads into.
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


_ADACLIP_NOTES = (
    "AdaCLIP authors' release (Google Drive / Baidu links in caoyunkang/AdaCLIP README), mirrored unchanged "
    "on the Hub; load with model ViT-L-14-336:openai (GELU), 518 px."
)
_SDP_PLUS_NOTES = (
    "not on the Hugging Face Hub: download pretrained_models/{file} from the authors' repository "
    "https://github.com/ByChelsea/CLIP-AD (open the file on GitHub and use 'Download raw file'); load with model "
    "ViT-B-16-plus-240:laion400m_e31, 240 px, layers 3/6/9/12, reference_aliasing=True."
)

RELEASED_WEIGHTS: tuple[ReleasedWeights, ...] = (
    ReleasedWeights(
        name="adaclip-mvtec-colondb",
        method="adaclip",
        hub_repo="cubert-gmbh/adaclip",
        filename="pretrained_mvtec_colondb.pth",
        revision=None,
        sha256=None,
        license="MIT (caoyunkang/AdaCLIP)",
        trained_on="MVTec AD + ColonDB (test splits)",
        notes=_ADACLIP_NOTES + " Zero-shot on VisA, ClinicDB, BTAD, MPDD, KSDD, DAGM, DTD, HeadCT, BrainMRI, "
        "Br35H, ISIC, TN3K.",
    ),
    ReleasedWeights(
        name="adaclip-visa-clinicdb",
        method="adaclip",
        hub_repo="cubert-gmbh/adaclip",
        filename="pretrained_visa_clinicdb.pth",
        revision=None,
        sha256=None,
        license="MIT (caoyunkang/AdaCLIP)",
        trained_on="VisA + ClinicDB (test splits)",
        notes=_ADACLIP_NOTES + " Zero-shot on MVTec AD and ColonDB.",
    ),
    ReleasedWeights(
        name="adaclip-all",
        method="adaclip",
        hub_repo="cubert-gmbh/adaclip",
        filename="pretrained_all.pth",
        revision=None,
        sha256=None,
        license="MIT (caoyunkang/AdaCLIP)",
        trained_on="all 14 datasets of the AdaCLIP paper (test splits)",
        notes=_ADACLIP_NOTES + " Demo only: not zero-shot on any of the paper's datasets.",
    ),
    ReleasedWeights(
        name="sdp-plus-mvtec",
        method="sdp_plus",
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


def resolve_released_weights(name: str) -> Path:
    """The local path of released checkpoint ``name``: weights folders, Hub cache, then Hub download.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        zsad_core.backbone.WeightsNotFoundError: not on this disk and not downloadable; the message
            says where the file comes from and where to put it.
        WeightsIntegrityError: the file found has another sha256 than the registry's.
    """
    entry = find_released_weights(name)
    if entry is None:
        known = ", ".join(w.name for w in RELEASED_WEIGHTS)
        raise ValueError(f"unknown released weights {name!r}; known: {known}")
    looked_in = []
    for folder in weights_dirs():
        candidate = folder / entry.filename
        if candidate.is_file():
            return _verified(entry, candidate)
        looked_in.append(str(candidate))
    if entry.hub_repo:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.constants import HF_HUB_CACHE

        looked_in.append(f"the Hugging Face cache {HF_HUB_CACHE} (repo {entry.hub_repo})")
        for local_only in (True, False):
            if not local_only and not _hub_reachable():
                break
            try:
                path = hf_hub_download(
                    entry.hub_repo, entry.filename, revision=entry.revision, local_files_only=local_only
                )
            except Exception as error:  # noqa: BLE001 - the hub client raises many types; reported below
                logger.debug("hub %s/%s (local_only=%s): %s", entry.hub_repo, entry.filename, local_only, error)
                continue
            return _verified(entry, Path(path))
    raise WeightsNotFoundError(
        f"Could not find the released weights '{entry.name}' ({entry.method}, trained on {entry.trained_on}).\n"
        "Looked in:\n  - " + "\n  - ".join(looked_in) + "\n"
        f"Where to get the file '{entry.filename}': {entry.source}\n"
        f"Put it at {looked_in[0]} (or in the folder named by $ZSAD_WEIGHTS_DIR), "
        "or pass the file path itself as the checkpoint."
    )
