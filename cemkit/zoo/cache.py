"""Where the model zoo keeps things on disk.

Layout under the cache root (``$CEMKIT_CACHE``, default ``~/.cache/cemkit``)::

    cards/<name>.yaml                 user cards (``cemkit zoo register``); they shadow shipped cards
    models/<name>/<filename>          downloaded or copied checkpoints
    models/<name>/<filename>.sha256   sha256 recorded at download time (detects later corruption)
    models/<name>/<filename>.part     a partial download, resumed by the next download
    models/<name>/.<filename>.lock    serialises concurrent downloads of the same file
    urls/<hash>/<filename>            checkpoints fetched from a plain URL (``resolve("https://...")``)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_ENV = "CEMKIT_CACHE"
OFFLINE_ENV = "CEMKIT_OFFLINE"


def cache_root() -> Path:
    """The cache root: ``$CEMKIT_CACHE`` if set, else ``~/.cache/cemkit``."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "cemkit"


def cards_dir() -> Path:
    """Folder of user cards (``<root>/cards``)."""
    return cache_root() / "cards"


def model_dir(name: str) -> Path:
    """Folder holding the cached checkpoint of model ``name``."""
    return cache_root() / "models" / name


def url_dir(url: str) -> Path:
    """Folder holding a checkpoint fetched from a plain URL (keyed by the URL's sha1)."""
    return cache_root() / "urls" / hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether ``$CEMKIT_OFFLINE`` is set to a true value (1/true/yes/on)."""
    if offline is not None:
        return bool(offline)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
