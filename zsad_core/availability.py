"""What can run on this host: which backbones are on disk, which methods can run on them, with which
checkpoints, and why not when they cannot.

Nothing here downloads or loads a model: every answer comes from the local weights folders
(:func:`zsad_core.backbone.weights_dirs`), the Hugging Face cache and checkpoint headers, so a page
or a CLI can ask it whenever it draws its choices.

- A backbone is available when it needs no weights (the project's own configs) or its weights are
  on this disk; a pretrained tag whose weights are missing is available only when the caller says
  downloads are possible (``downloadable=True``, after :func:`hub_reachable`): it is then fetched
  on first use. Offline, nothing ever waits for a download that cannot happen.
- A training-free method is available wherever its backbone is.
- A learnable method also needs a checkpoint trained for that backbone and input size: a released
  one (:mod:`zsad_core.weights`) already on disk, or a ``.safetensors`` written by ``zsad train``
  lying in a weights folder (top level or one folder down) whose metadata names this method,
  backbone and size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import open_clip

from .backbone import (
    list_project_models,
    list_tiny_models,
    local_pretrained_file,
    parse_model_name,
    project_model_dir,
    weights_dirs,
)
from .hub import hub_reachable as hub_reachable  # re-exported: the app and the CLI ask it here
from .registry import get_method

logger = logging.getLogger(__name__)

# The backbones of the papers, in the order the app prefers them when they are on disk.
PAPER_MODELS: tuple[str, ...] = ("ViT-L-14-336:openai", "ViT-B-16-plus-240:laion400m_e31")


class MethodUnavailableError(RuntimeError):
    """A method that cannot run here; the message says why (e.g. no checkpoint for this backbone)."""


@dataclass(frozen=True)
class ModelStatus:
    """Whether a backbone can be used here.

    Attributes:
        model: the model string.
        available: it can be built without a download.
        random_weights: it has no trained weights, so its maps mean nothing.
        reason: why it is not available (empty when it is).
        download: its weights are not on this disk and will be downloaded on first use.
    """

    model: str
    available: bool
    random_weights: bool
    reason: str = ""
    download: bool = False


@dataclass(frozen=True)
class CheckpointChoice:
    """A checkpoint a learnable method can load here.

    Attributes:
        source: what to pass as ``checkpoint=`` (a released-weights name or a file path).
        label: a short description for a menu.
    """

    source: str
    label: str


@dataclass(frozen=True)
class MethodStatus:
    """Whether a method can run on a backbone here, and with which checkpoints.

    Attributes:
        method: the method id.
        name: its display name.
        model: the backbone it would run on.
        image_size: the input size it would run at.
        available: it can run.
        reason: why not, in a few words (empty when it can).
        remedy: what to do about it (empty when nothing can be said).
        checkpoints: for learnable methods, the checkpoints that fit, best first.
    """

    method: str
    name: str
    model: str
    image_size: int
    available: bool
    reason: str = ""
    remedy: str = ""
    checkpoints: tuple[CheckpointChoice, ...] = ()

    @property
    def explanation(self) -> str:
        """Reason and remedy in one sentence."""
        return f"{self.reason}; {self.remedy}" if self.remedy else self.reason


def is_random_weights(model: str) -> bool:
    """True for models built with random weights (the project's tiny configs, architectures with no tag)."""
    if project_model_dir(model) is not None:
        return False
    parsed = parse_model_name(model)
    return not parsed.is_schema and parsed.pretrained is None


def model_status(model: str, *, downloadable: bool = False) -> ModelStatus:
    """Whether ``model`` can be built here; without ``downloadable``, without downloading anything."""
    if project_model_dir(model) is not None:  # trained by the project, shipped in the package
        return ModelStatus(model, True, False)
    try:
        parsed = parse_model_name(model)
    except ValueError as error:
        return ModelStatus(model, False, False, str(error))
    if parsed.is_schema:
        if parsed.name.startswith("local-dir:"):
            folder = Path(parsed.name[len("local-dir:") :]).expanduser()
            if folder.is_dir():
                return ModelStatus(model, True, False)
            return ModelStatus(model, False, False, f"no such folder {folder}")
        return ModelStatus(model, False, False, "a Hugging Face Hub model: needs a download (use local-dir: offline)")
    known = set(open_clip.list_models()) | set(list_tiny_models())
    if parsed.name not in known:
        return ModelStatus(model, False, False, f"unknown architecture {parsed.name!r}")
    if parsed.pretrained is None:
        return ModelStatus(model, True, True)
    if parsed.is_file:
        path = Path(parsed.pretrained).expanduser()
        if path.is_file():
            return ModelStatus(model, True, False)
        return ModelStatus(model, False, False, f"weights file {path} does not exist")
    if local_pretrained_file(parsed.name, parsed.pretrained) is not None:
        return ModelStatus(model, True, False)
    if downloadable and open_clip.get_pretrained_cfg(parsed.name, parsed.pretrained).get("hf_hub"):
        return ModelStatus(model, True, False, download=True)
    return ModelStatus(
        model,
        False,
        False,
        f"the weights of {model} are not on this disk (see weights/README.md for where to put them)",
    )


def available_models(extra: tuple[str, ...] = (), *, downloadable: bool = False) -> list[ModelStatus]:
    """Backbones usable here: the papers' (on disk, or ``downloadable``), ``extra`` ones, the project's
    own trained models (``zsad-toy``), then its random-weight configs.

    Best first: pretrained weights on disk (the papers', then the project's), then ones to download,
    then random ones.
    """
    candidates = list(dict.fromkeys([*PAPER_MODELS, *extra, *list_project_models(), *list_tiny_models()]))
    statuses = [model_status(model, downloadable=downloadable) for model in candidates]
    usable = [status for status in statuses if status.available]
    return sorted(usable, key=lambda status: (status.random_weights, status.download))


def _released_checkpoints(method: str, model: str, image_size: int, downloadable: bool) -> list[CheckpointChoice]:
    from .weights import find_local_released_weights, list_released_weights

    local, remote = [], []
    for entry in list_released_weights(method):
        if entry.model != model or entry.image_size != image_size:
            continue
        label = f"{entry.name} (released, trained on {entry.trained_on})"
        if find_local_released_weights(entry.name) is not None:
            local.append(CheckpointChoice(entry.name, label))
        elif downloadable and entry.hub_repo:
            remote.append(CheckpointChoice(entry.name, f"{label}, downloaded on first use"))
    return local + remote


def _candidate_files(model: str) -> list[Path]:
    files: list[Path] = []
    shipped = project_model_dir(model)
    if shipped is not None:  # checkpoints trained on a project model ship beside it
        files += sorted(shipped.glob("*.safetensors"))
    for folder in weights_dirs():
        if folder.is_dir():
            files += sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*/*.safetensors"))
    return files


def offline_default_model() -> str | None:
    """The model to use when the papers' backbones cannot be had: the first shipped project model."""
    shipped = list_project_models()
    return shipped[0] if shipped else None


def _trained_checkpoints(method: str, model: str, image_size: int) -> list[CheckpointChoice]:
    from safetensors import safe_open

    from .methods.learnable import CHECKPOINT_FORMAT

    choices = []
    for path in _candidate_files(model):
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:  # reads the header only
                metadata = handle.metadata() or {}
        except Exception as error:  # noqa: BLE001 - an unreadable file is skipped, not fatal to a menu
            logger.debug("skipping %s: %s", path, error)
            continue
        if metadata.get("format") != CHECKPOINT_FORMAT or metadata.get("method") != method:
            continue
        if metadata.get("model") != model or metadata.get("image_size") != str(image_size):
            continue
        choices.append(CheckpointChoice(str(path), f"{path.name} (trained with zsad)"))
    return choices


def find_checkpoints(method: str, model: str, image_size: int, *, downloadable: bool = False) -> list[CheckpointChoice]:
    """Checkpoints ``method`` can load on ``model`` at ``image_size``, best first: on this disk, or
    (``downloadable``) released ones to download on first use."""
    released = _released_checkpoints(method, model, image_size, downloadable)
    return released + _trained_checkpoints(method, model, image_size)


def method_status(
    method: str, model: str | None = None, image_size: int | None = None, *, downloadable: bool = False
) -> MethodStatus:
    """Whether ``method`` can run here on ``model`` (None: the method's paper backbone) at ``image_size``;
    ``downloadable``: weights missing from this disk may be downloaded (see :func:`model_status`)."""
    cls = get_method(method)
    model = model or cls.info.default_model
    image_size = int(image_size or cls.info.image_size)
    backbone = model_status(model, downloadable=downloadable)
    if not backbone.available:
        return MethodStatus(method, cls.info.name, model, image_size, False, backbone.reason)
    if cls.info.training_free:
        return MethodStatus(method, cls.info.name, model, image_size, True)
    checkpoints = tuple(find_checkpoints(method, model, image_size, downloadable=downloadable))
    if not checkpoints:
        reason = f"no trained checkpoint for {model} at {image_size} px on this disk"
        remedy = (
            f"train one with `python -m zsad_core train --method {method} --model {model} ...` and put the "
            ".safetensors in weights/, or use the paper backbone with the released weights"
        )
        return MethodStatus(method, cls.info.name, model, image_size, False, reason, remedy)
    return MethodStatus(method, cls.info.name, model, image_size, True, checkpoints=checkpoints)
