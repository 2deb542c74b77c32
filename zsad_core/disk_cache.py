"""Text features on disk, so a new process answers a known category without running the text tower.

Sentence embeddings depend only on the text tower's weights, the sentences, and the numerics they
were computed with. Each entry is keyed by all of them:

- a SHA-256 fingerprint of the text tower's tensors (names, shapes, dtypes and bytes; computed once
  per backbone, while it loads), so new weights under the same model name miss the cache;
- the exact sentences (every template applied to every state and the class name), so any change of
  prompts or category misses;
- the precision, the device type, and the torch and open_clip versions, so a hit gives the very
  floats the text pass would give here.

Two kinds of entries are kept: sentence embeddings, and the anchors reduced from them (a reduction
such as CLIP-AD's DBSCAN costs more than reading a file; the reducer's name is part of the key).
An entry is one safetensors file ``<cache>/text/<key[:2]>/<key>.safetensors`` holding one float32
tensor, with the key's parts in its metadata (checked on load: a collision or a foreign
file is a miss). Files are written to a temporary name and renamed, so readers never see a partial
file and concurrent writers of one entry are harmless. A file that cannot be read or written is
logged and ignored: the cache never makes a detection fail.

Location: ``$ZSAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/zsad``, else ``~/.cache/zsad``. Set
``ZSAD_DISK_CACHE=0`` to neither read nor write it. Delete the folder to clear it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import open_clip
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from .backbone import ClipBackbone

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "ZSAD_CACHE_DIR"
DISK_CACHE_ENV = "ZSAD_DISK_CACHE"
FORMAT_VERSION = "1"
_TENSOR_NAME = "embeddings"
_FINGERPRINTS: weakref.WeakKeyDictionary[ClipBackbone, str] = weakref.WeakKeyDictionary()


def disk_cache_enabled() -> bool:
    """False when ``$ZSAD_DISK_CACHE`` is 0/false/no/off."""
    return os.environ.get(DISK_CACHE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """The cache folder (not created here): ``$ZSAD_CACHE_DIR``, ``$XDG_CACHE_HOME/zsad`` or ``~/.cache/zsad``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "zsad"


def text_tower_fingerprint(backbone: ClipBackbone) -> str:
    """SHA-256 of every tensor the text features depend on (all but the image tower), memoised per backbone."""
    if backbone not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for name, tensor in sorted(backbone.model.state_dict().items()):
            if name.startswith("visual."):
                continue
            data = tensor.detach().cpu().contiguous()
            digest.update(f"{name}|{tuple(data.shape)}|{data.dtype}|".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy())
        _FINGERPRINTS[backbone] = digest.hexdigest()
    return _FINGERPRINTS[backbone]


def text_features_key(backbone: ClipBackbone, sentences: Sequence[str]) -> dict[str, str]:
    """The parts that identify one entry (stored as the file's metadata)."""
    return {
        "format": FORMAT_VERSION,
        "weights_sha256": text_tower_fingerprint(backbone),
        "precision": backbone.spec.precision,
        "device_type": backbone.device.type,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "sentences": json.dumps(list(sentences), ensure_ascii=False),
    }


def entry_path(key: dict[str, str]) -> Path:
    """Where the entry for ``key`` lives."""
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_dir() / "text" / name[:2] / f"{name}.safetensors"


def load_text_features(key: dict[str, str]) -> torch.Tensor | None:
    """The cached (P, D) float32 CPU tensor for ``key``, or None (absent, unreadable or another key)."""
    path = entry_path(key)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if handle.metadata() != key:
                logger.debug("text cache: %s holds another key; ignored", path)
                return None
        return load_file(str(path))[_TENSOR_NAME]
    except (OSError, SafetensorError, KeyError) as error:
        logger.warning("text cache: cannot read %s (%s); computing the features again", path, error)
        return None


def save_text_features(key: dict[str, str], features: torch.Tensor) -> Path | None:
    """Write one entry atomically; returns its path, or None when it could not be written (logged)."""
    path = entry_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        os.close(handle)
        try:
            save_file({_TENSOR_NAME: features.detach().float().cpu().contiguous()}, temporary, metadata=key)
            os.replace(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)
    except OSError as error:
        logger.warning("text cache: cannot write %s (%s); continuing without it", path, error)
        return None
    return path


def cached_text_tensor(
    backbone: ClipBackbone, sentences: Sequence[str], compute: Callable[[], torch.Tensor], **extra: str
) -> torch.Tensor:
    """``compute()`` through the disk cache (unless ``ZSAD_DISK_CACHE=0``): a float32 tensor that
    depends only on the text tower, ``sentences`` and ``extra`` (e.g. ``kind="anchors"``, ``reducer=...``).

    Returns:
        the tensor on the backbone's device, bit-identical to ``compute()``'s.
    """
    if not disk_cache_enabled():
        return compute()
    key = {**text_features_key(backbone, sentences), **extra}
    cached = load_text_features(key)
    if cached is not None:
        return cached.to(backbone.device)
    value = compute()
    save_text_features(key, value)
    return value


def encode_text_cached(backbone: ClipBackbone, sentences: Sequence[str]) -> torch.Tensor:
    """``backbone.encode_text(sentences)`` through the disk cache: (P, D) float32 on the backbone's device."""
    return cached_text_tensor(backbone, sentences, lambda: backbone.encode_text(sentences).float())
