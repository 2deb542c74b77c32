"""Method registry: ``register_method``, ``list_methods``, ``create_detector`` (timm style)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .backbone import create_backbone
from .types import MethodInfo

if TYPE_CHECKING:
    from .methods.base import Detector

_METHODS: dict[str, type[Detector]] = {}
DetectorType = TypeVar("DetectorType", bound="type[Detector]")


def register_method(method_id: str) -> Callable[[DetectorType], DetectorType]:
    """Class decorator: make a :class:`~zsad_core.methods.base.Detector` available by id."""

    def decorator(cls: DetectorType) -> DetectorType:
        if method_id in _METHODS and _METHODS[method_id] is not cls:
            raise ValueError(f"method id {method_id!r} is already registered by {_METHODS[method_id]}")
        if cls.info.id != method_id:
            raise ValueError(f"{cls.__name__}.info.id is {cls.info.id!r}, registered as {method_id!r}")
        cls.method_id = method_id
        _METHODS[method_id] = cls
        return cls

    return decorator


def _load_builtin_methods() -> None:
    importlib.import_module("zsad_core.methods")


def list_methods() -> list[MethodInfo]:
    """Every registered method's description, in registration order."""
    _load_builtin_methods()
    return [cls.info for cls in _METHODS.values()]


def get_method(method_id: str) -> type[Detector]:
    """The detector class registered as ``method_id``."""
    _load_builtin_methods()
    try:
        return _METHODS[method_id]
    except KeyError:
        raise ValueError(f"unknown method {method_id!r}; known methods: {', '.join(_METHODS)}") from None


def create_detector(
    method_id: str,
    model: str | None = None,
    image_size: int | None = None,
    device: str | None = None,
    precision: str | None = None,
    **settings: Any,
) -> Detector:
    """Build a detector with the paper's defaults, changed by the given settings.

    Args:
        method_id: a registered id (``list_methods()``), e.g. "winclip".
        model: backbone model string; default: the method's paper backbone.
        image_size: input side S; default: the method's paper size.
        device: "cpu", "cuda", ... or None for CUDA when available.
        precision: "fp32", "fp16", "bf16", or None for fp32 on CPU and fp16 on CUDA.
        settings: any field of the method's config (e.g. ``sigma=0``, ``layers=(3, 6, 9, 12)``).
    """
    cls = get_method(method_id)
    config = cls.config_class()
    changes = dict(settings)
    if model is not None:
        changes["model"] = model
    if image_size is not None:
        changes["image_size"] = int(image_size)
    config = config.replace(**changes)
    backbone = create_backbone(
        config.model,
        image_size=config.image_size,
        quick_gelu=config.quick_gelu,
        device=device,
        precision=precision,
    )
    detector = cls(config, backbone)
    if getattr(config, "checkpoint", None):  # learnable methods: load their trained parameters
        detector.load_checkpoint(config.checkpoint)
    return detector


def takes_checkpoint(method_id: str) -> bool:
    """Whether the method has trained parts loaded from a checkpoint (its config has ``checkpoint``)."""
    return "checkpoint" in getattr(get_method(method_id).config_class, "__dataclass_fields__", {})


def assign_checkpoints(
    checkpoints: str | os.PathLike | Sequence[str] | Mapping[str, str] | None, methods: Sequence[str]
) -> dict[str, str]:
    """Which learnable method among ``methods`` gets which checkpoint.

    Args:
        checkpoints: ``{method: checkpoint}``; or ``"METHOD=CHECKPOINT"`` strings (what ``--checkpoint``
            takes); or one bare checkpoint, accepted when exactly one learnable method is among ``methods``.
        methods: the method ids being run.
    Returns:
        ``{method: checkpoint}`` (file path or released-weights name), learnable methods only.
    Raises:
        ValueError: a checkpoint for a method that is not run or takes none, two for one method, a bare
            one when no or several learnable methods run.
    """
    if checkpoints is None:
        return {}
    if isinstance(checkpoints, Mapping):
        pairs = [(str(method), str(value)) for method, value in checkpoints.items()]
    else:
        values = [checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints)
        pairs = [_split_checkpoint(str(value)) for value in values]
    learnable = [method for method in methods if takes_checkpoint(method)]
    chosen: dict[str, str] = {}
    for method, checkpoint in pairs:
        shown = f"{method}={checkpoint}" if method else checkpoint
        if not method:
            if not learnable:
                verb = "takes" if len(methods) == 1 else "take"
                raise ValueError(
                    f"checkpoint {shown}: checkpoints apply to learnable methods only; {', '.join(methods)} {verb} none"
                )
            if len(learnable) > 1:
                raise ValueError(
                    f"checkpoint {shown}: several learnable methods run ({', '.join(learnable)}); say which one it "
                    f"is for, e.g. {learnable[0]}={checkpoint}"
                )
            method = learnable[0]
        elif method not in learnable:
            reason = "is not among the methods run" if method not in methods else "takes no checkpoint"
            raise ValueError(f"checkpoint {shown}: {method} {reason} (methods run: {', '.join(methods)})")
        if method in chosen:
            raise ValueError(f"two checkpoints for {method}: {chosen[method]} and {checkpoint}")
        chosen[method] = checkpoint
    return chosen


def _split_checkpoint(value: str) -> tuple[str, str]:
    """``"adaclip=a.safetensors"`` -> ``("adaclip", "a.safetensors")``; a bare value -> ``("", value)``."""
    method, separator, checkpoint = value.partition("=")
    return (method, checkpoint) if separator and method in _METHODS else ("", value)
