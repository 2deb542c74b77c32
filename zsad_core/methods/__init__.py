"""Built-in methods; importing this package registers them."""

from . import winclip, clipad, adaclip  # noqa: F401,I001  (registration side effect, in order of publication)
from .base import Detector, MethodConfig, Prediction

__all__ = ["Detector", "MethodConfig", "Prediction"]
