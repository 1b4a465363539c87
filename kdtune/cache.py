"""Where kdtune keeps what it can recompute: ``$KDTUNE_CACHE``, else ``~/.cache/kdtune``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The root of kdtune's caches (teacher outputs, the empty MLflow store template)."""
    return Path(os.environ.get("KDTUNE_CACHE") or Path.home() / ".cache" / "kdtune")
