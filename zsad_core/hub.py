"""Files from the Hugging Face Hub: the local cache first, the network only when it answers.

The one place that calls ``huggingface_hub.hf_hub_download`` for :mod:`zsad_core.backbone`
(open_clip weights and configs) and :mod:`zsad_core.weights` (released checkpoints). Each caller
raises its own "not found" error, naming where it looked (:func:`cache_description`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["cache_description", "hub_fetch", "hub_reachable"]

logger = logging.getLogger(__name__)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub answers: a cheap connectivity probe, so offline use fails at once instead of
    after minutes of retries (False at once when ``HF_HUB_OFFLINE`` is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def cache_description(repo_id: str) -> str:
    """Where the Hub cache of ``repo_id`` lives, for "looked in" lists."""
    from huggingface_hub.constants import HF_HUB_CACHE

    return f"the Hugging Face cache {HF_HUB_CACHE} (repo {repo_id})"


def hub_fetch(repo_id: str, filenames: Sequence[str], revision: str | None = None) -> Path | None:
    """The first of ``filenames`` in ``repo_id`` (at ``revision``) that the cache holds, else the first
    the Hub gives when it is reachable (:func:`hub_reachable`); None when neither has any."""
    from huggingface_hub import hf_hub_download

    for local_only in (True, False):
        if not local_only and not hub_reachable():
            break
        for filename in filenames:
            try:
                return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=local_only))
            except Exception as error:  # noqa: BLE001 - the hub client raises many types; the caller reports
                logger.debug("hub %s/%s (local_only=%s): %s", repo_id, filename, local_only, error)
    return None
