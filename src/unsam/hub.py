"""Is the Hugging Face hub usable? Answered in milliseconds, so a missing model fails fast offline.

Without this, huggingface_hub retries a download for ~20-40 s on a machine with no network before
the user sees the one-sentence "download X to Y" message.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

__all__ = ["hub_offline", "quiet_loading"]

_TRUE = ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def _endpoint_unreachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3.0):
            return False
    except OSError:
        return True


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set or the hub endpoint cannot be
    reached."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if (os.environ.get(var) or "").strip().lower() in _TRUE:
            return True
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
        endpoint = constants.ENDPOINT
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        endpoint = "https://huggingface.co"
    url = urlparse(endpoint)
    return _endpoint_unreachable(
        url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    )


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No transformers / huggingface_hub progress bars while a model loads (a library should not
    draw bars the caller did not ask for); the previous setting is restored."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
