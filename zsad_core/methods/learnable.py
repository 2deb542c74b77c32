"""The interface of methods with trained parts (AdaCLIP, SDP+): checkpoints and the training hooks.

A :class:`LearnableDetector` is a :class:`~zsad_core.methods.base.Detector` whose trained parameters
live in one ``nn.Module``, ``self.learned`` (its torch model's ``learned`` submodule), built with a
seeded, deterministic initialisation in the subclass's ``build_model``. The frozen CLIP backbone is
never part of it.

Checkpoints (:meth:`LearnableDetector.save_checkpoint`) are safetensors files holding *only*
``self.learned``'s state dict, with string metadata:

=====================  ==========================================================================
``format``             ``zsad-learned-v1``
``method``             the method id (``sdp_plus``, ``adaclip``)
``model``              the backbone string (``ViT-B-16-plus-240:laion400m_e31``, ``zsad-tiny``)
``image_size``         input side S
``quick_gelu``         ``true`` / ``false``
``layers``             JSON list of the tap layers (1-based)
method settings        whatever else the method's :meth:`~LearnableDetector.setting_metadata` adds
``zsad_version``       the package version that wrote the file
training keys          ``training_data`` (JSON list of dataset specs), ``training_steps``,
                       ``training_seed``... as given by the trainer (:mod:`zsad_core.training`)
=====================  ==========================================================================

:meth:`LearnableDetector.load_checkpoint` compares the setting keys with the detector's own and
refuses a file made for another backbone, size or layer set (:class:`CheckpointMismatchError`
names the setting, expected and found). It also accepts a released-weights name from
:mod:`zsad_core.weights` and the authors' own ``.pth``/``.pt`` files, which each method maps to its
parameter names in :meth:`LearnableDetector.convert_foreign_state_dict`.

Training (:mod:`zsad_core.training`) uses only :meth:`LearnableDetector.training_forward`,
:meth:`LearnableDetector.training_loss` and the class defaults (``default_optimizer``,
``default_epochs``, ``default_batch_size``, ``default_seed``, ``default_mosaic_prob``), so any
method implementing them trains with the same loop.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import warnings
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..backbone import ClipBackbone
from .base import Detector, MethodConfig

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "zsad-learned-v1"
FOREIGN_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit this detector: other settings, other parameters, unknown format."""


@dataclass
class TrainingOutput:
    """What :meth:`LearnableDetector.training_forward` returns for one batch.

    Attributes:
        layer_probs: per tap layer, (B, 2, S, S) softmax probabilities (normal, abnormal) at the
            input size S; differentiable w.r.t. ``detector.learned``.
        image_probs: (B, 2) image-level probabilities, or None when the paper has no image loss.
    """

    layer_probs: list[torch.Tensor]
    image_probs: torch.Tensor | None = None


def _metadata_string(value: Any) -> str:
    """Metadata values are strings; structured values are JSON-encoded."""
    return value if isinstance(value, str) else json.dumps(value)


class LearnableDetector(Detector):
    """A Detector with trained parameters in ``self.learned`` (``self.model.learned``, an ``nn.Module``).

    Subclasses build the learned module in ``build_model`` as their model's ``learned``, seeded so
    that an untrained detector is reproducible, on the backbone's device in float32, and implement
    :meth:`training_forward` and :meth:`training_loss`. Their config has a field
    ``checkpoint: str | None = None``, loaded by :func:`zsad_core.create_detector`.

    Class attributes (the paper's training recipe, used by :mod:`zsad_core.training`):
        default_optimizer: ``{"name": "adam" | "adamw" | "sgd", "lr": ..., other optimiser kwargs}``.
        default_epochs: passes over the auxiliary data.
        default_batch_size: images per optimiser step.
        default_seed: seed of the data order and augmentation (AdaCLIP 111, SDP+ 42).
        default_mosaic_prob: probability of the 2x2 same-class mosaic augmentation, applied only to
            MVTec-format data (AdaCLIP 0.2; methods.md §2.9).
    """

    default_optimizer: ClassVar[dict[str, Any]] = {"name": "adam", "lr": 1e-4}
    default_epochs: ClassVar[int] = 5
    default_batch_size: ClassVar[int] = 8
    default_seed: ClassVar[int] = 111
    default_mosaic_prob: ClassVar[float] = 0.0

    def __init__(self, config: MethodConfig, backbone: ClipBackbone) -> None:
        super().__init__(config, backbone)
        self.trained = False  # set by load_checkpoint and by the trainer
        self.checkpoint_source: str | None = None
        self._warned_untrained = False

    @property
    def learned(self) -> nn.Module:
        """The trained parameters (the torch model's ``learned`` submodule)."""
        return self.model.learned

    # ----------------------------------------------------------------------------------- settings
    @property
    def tap_layers(self) -> tuple[int, ...]:
        """The 1-based tap layers: the config's ``layers``, or the backbone's four default taps."""
        layers = getattr(self.config, "layers", None)
        return tuple(int(layer) for layer in layers) if layers else self.backbone.default_layers()

    def setting_metadata(self) -> dict[str, str]:
        """The settings a checkpoint must match to be loaded into this detector (all strings).

        Subclasses extend it: ``return {**super().setting_metadata(), "my_setting": "..."}``.
        """
        return {
            "method": self.method_id,
            "model": self.config.model,
            "image_size": str(int(self.config.image_size)),
            "quick_gelu": json.dumps(bool(self.config.quick_gelu)),
            "layers": json.dumps(list(self.tap_layers)),
        }

    # ---------------------------------------------------------------------------------- save / load
    def save_checkpoint(self, path: str | os.PathLike, extra_metadata: Mapping[str, Any] | None = None) -> None:
        """Write ``self.learned``'s parameters (only those) to a safetensors file.

        Args:
            path: the file to write (its folder is created); written atomically.
            extra_metadata: more metadata (training data, steps...); non-string values are
                JSON-encoded. Setting keys cannot be overridden this way.
        """
        from safetensors.torch import save

        from .. import __version__
        from ..files import write_bytes_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {name: value.detach().cpu().contiguous().clone() for name, value in self.learned.state_dict().items()}
        metadata = {key: _metadata_string(value) for key, value in (extra_metadata or {}).items()}
        metadata.update(self.setting_metadata())
        metadata.update({"format": CHECKPOINT_FORMAT, "zsad_version": __version__})
        write_bytes_atomic(path, save(tensors, metadata=metadata))  # mode from the umask, like every output

    def load_checkpoint(self, source: str | os.PathLike) -> None:
        """Load trained parameters into ``self.learned``.

        Args:
            source: a ``.safetensors`` file written by :meth:`save_checkpoint`; a released-weights
                name (:func:`zsad_core.weights.list_released_weights`); or a foreign checkpoint
                (``.pth``/``.pt``, e.g. the authors' release), read with
                ``torch.load(weights_only=True)`` and mapped by :meth:`convert_foreign_state_dict`.
        Raises:
            CheckpointMismatchError: the file was made for other settings (the message names the
                setting, expected and found), has other parameters, or is in an unknown format.
            FileNotFoundError: ``source`` is neither a file nor a released-weights name.
            zsad_core.backbone.WeightsNotFoundError: a released-weights name whose file is not on
                this disk and cannot be downloaded (the message says where to put it).
        """
        path = self._resolve_checkpoint_source(source)
        if path.suffix.lower() == ".safetensors":
            state_dict = self._read_safetensors(path)
        elif path.suffix.lower() in FOREIGN_SUFFIXES:
            state_dict = self._read_foreign(path)
        else:
            raise CheckpointMismatchError(
                f"checkpoint {path}: unknown file type {path.suffix!r}; expected a .safetensors file written "
                f"by zsad or a PyTorch checkpoint ({', '.join(FOREIGN_SUFFIXES)})"
            )
        self._load_learned_state(state_dict, path)
        self.trained = True
        self.checkpoint_source = str(source)

    def _resolve_checkpoint_source(self, source: str | os.PathLike) -> Path:
        path = Path(source).expanduser()
        if path.is_file():
            return path
        from ..weights import find_released_weights, list_released_weights, resolve_released_weights

        entry = find_released_weights(str(source))
        if entry is None:
            names = [w.name for w in list_released_weights(self.method_id)]
            raise FileNotFoundError(
                f"checkpoint {str(source)!r} is neither an existing file nor a released-weights name"
                + (f"; released weights for {self.method_id}: {', '.join(names)}" if names else "")
            )
        if entry.method != self.method_id:
            raise CheckpointMismatchError(
                f"released weights {entry.name!r} are for method {entry.method!r}, not {self.method_id!r}"
            )
        return resolve_released_weights(entry.name)

    def _read_safetensors(self, path: Path) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                metadata = handle.metadata() or {}
                state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError) as error:
            raise CheckpointMismatchError(f"checkpoint {path}: not a readable safetensors file ({error})") from error
        if metadata.get("format") != CHECKPOINT_FORMAT:
            logger.info("%s has no zsad metadata: treating it as a foreign checkpoint", path)
            return self.convert_foreign_state_dict(state_dict)
        self.check_metadata(metadata, path)
        return state_dict

    def check_metadata(self, metadata: Mapping[str, str], path: str | os.PathLike = "checkpoint") -> None:
        """Raise :class:`CheckpointMismatchError` when ``metadata`` differs from :meth:`setting_metadata`."""
        expected = self.setting_metadata()
        differences = []
        for key, value in expected.items():
            found = metadata.get(key)
            if found != value:
                differences.append(f"{key}: this detector has {value!r}, the checkpoint has {found!r}")
        if differences:
            raise CheckpointMismatchError(
                f"checkpoint {path} was trained with other settings ("
                + "; ".join(differences)
                + "). Create the detector with the checkpoint's settings, or train one for these."
            )

    def _read_foreign(self, path: Path) -> dict[str, torch.Tensor]:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
            raise CheckpointMismatchError(
                f"checkpoint {path}: cannot be read safely with torch.load(weights_only=True) ({error})"
            ) from error
        if not isinstance(loaded, dict):
            raise CheckpointMismatchError(f"checkpoint {path}: expected a dictionary, found {type(loaded).__name__}")
        logger.info("%s: foreign checkpoint; settings cannot be verified, only parameter names and shapes", path)
        return self.convert_foreign_state_dict(loaded)

    def convert_foreign_state_dict(self, state_dict: dict) -> dict[str, torch.Tensor]:
        """Map a checkpoint from another code base to ``self.learned``'s parameter names.

        The default knows no foreign format. Methods with released reference checkpoints override it.
        """
        raise CheckpointMismatchError(
            f"{self.method_id}: unknown checkpoint format (keys {sorted(state_dict)[:6]}...); expected a "
            ".safetensors file written by zsad"
        )

    def _load_learned_state(self, state_dict: Mapping[str, Any], path: Path) -> None:
        own = self.learned.state_dict()
        not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if missing or unexpected or not_tensors:
            raise CheckpointMismatchError(
                f"checkpoint {path} does not fit {self.method_id}'s trained parameters: "
                f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}, "
                f"unexpected {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
                + (f", not tensors {not_tensors[:10]}" if not_tensors else "")
            )
        shapes = [
            f"{key}: expected {tuple(own[key].shape)}, found {tuple(state_dict[key].shape)}"
            for key in own
            if tuple(own[key].shape) != tuple(state_dict[key].shape)
        ]
        if shapes:
            raise CheckpointMismatchError(
                f"checkpoint {path} has other parameter shapes (another backbone?): " + "; ".join(shapes[:6])
            )
        self.learned.load_state_dict(dict(state_dict), strict=True)

    # -------------------------------------------------------------------------------------- detect
    def warn_if_untrained(self) -> None:
        """Warn once when the learned parts were never trained or loaded (called before detecting)."""
        if not self.trained and not self._warned_untrained and self._prepared is not None:
            self._warned_untrained = True
            warnings.warn(
                f"{self.method_id}: no checkpoint loaded, the learned layers keep their random initialisation "
                "and the maps mean little; pass checkpoint=... (a file or a released-weights name) or train one "
                "with `python -m zsad_core train`",
                UserWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------------------------ training
    @abstractmethod
    def training_forward(self, pixels: torch.Tensor, class_names: Sequence[str]) -> TrainingOutput:
        """Forward pass for training, differentiable w.r.t. ``self.learned``; the backbone stays frozen.

        Args:
            pixels: (B, 3, S, S) normalised images on ``self.device``.
            class_names: B class names as put into prompts (e.g. "metal nut").
        """

    @abstractmethod
    def training_loss(self, output: TrainingOutput, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The paper's loss for one batch (scalar).

        Args:
            output: what :meth:`training_forward` returned.
            masks: (B, S, S) float {0, 1} ground truth.
            labels: (B,) {0, 1} image labels.
        """
