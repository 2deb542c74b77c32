"""Built-in methods; importing this package registers them."""

from . import adaclip, clipad, winclip  # noqa: F401  (registration side effect)
from .base import Detector, MethodConfig, Prediction

__all__ = ["Detector", "MethodConfig", "Prediction"]
