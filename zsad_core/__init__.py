"""zsad: zero-shot anomaly detection with CLIP (WinCLIP, CLIP-AD SDP/SDP+, AdaCLIP).

>>> from zsad_core import create_detector
>>> detector = create_detector("winclip", model="zsad-tiny").prepare("bottle")
>>> result = detector.detect("image.png")          # doctest: +SKIP
>>> result.score, result.anomaly_map.shape           # doctest: +SKIP
"""

from .backbone import ModelSpecError, WeightsNotFoundError, create_backbone, list_tiny_models
from .methods.base import Detector
from .preprocess import ImageError, load_image
from .prompts import PromptError, PromptSet
from .registry import create_detector, get_method, list_methods, register_method
from .types import AnomalyResult, MethodInfo

__version__ = "0.1.0"

__all__ = [
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
    "get_method",
    "list_methods",
    "list_tiny_models",
    "load_image",
    "register_method",
]
