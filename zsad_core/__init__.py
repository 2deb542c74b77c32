"""zsad: zero-shot anomaly detection with CLIP (WinCLIP, CLIP-AD SDP/SDP+, AdaCLIP).

>>> from zsad_core import create_detector
>>> detector = create_detector("winclip", model="zsad-tiny").prepare("bottle")
>>> result = detector.detect("image.png")          # doctest: +SKIP
>>> result.score, result.anomaly_map.shape           # doctest: +SKIP

The public names are imported on first use (PEP 562 module ``__getattr__``), so ``import zsad_core``
and ``python -m zsad_core --help`` do not load torch, open_clip or the methods.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "AnomalyResult": "types",
    "Detector": "methods.base",
    "ImageError": "preprocess",
    "MethodInfo": "types",
    "ModelSpecError": "backbone",
    "PromptError": "prompts",
    "PromptSet": "prompts",
    "WeightsNotFoundError": "backbone",
    "create_backbone": "backbone",
    "create_detector": "registry",
    "detect_together": "methods.base",
    "get_method": "registry",
    "list_methods": "registry",
    "list_tiny_models": "backbone",
    "load_image": "preprocess",
    "register_method": "registry",
}

__all__ = [  # the same names as _EXPORTS (tests/test_startup.py checks)
    "AnomalyResult",
    "Detector",
    "ImageError",
    "MethodInfo",
    "ModelSpecError",
    "PromptError",
    "PromptSet",
    "WeightsNotFoundError",
    "__version__",
    "create_backbone",
    "create_detector",
    "detect_together",
    "get_method",
    "list_methods",
    "list_tiny_models",
    "load_image",
    "register_method",
]

if TYPE_CHECKING:
    from .backbone import ModelSpecError, WeightsNotFoundError, create_backbone, list_tiny_models
    from .methods.base import Detector, detect_together
    from .preprocess import ImageError, load_image
    from .prompts import PromptError, PromptSet
    from .registry import create_detector, get_method, list_methods, register_method
    from .types import AnomalyResult, MethodInfo


def __getattr__(name: str) -> Any:
    """Import the submodule behind a public name on first access, then keep the name here."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
