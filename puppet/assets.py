"""Where optional assets are found: one place, no paths baked into defaults.

Order: an explicit path (CLI option), then an environment variable, then the cache directory
(``$PUPPET_CACHE_DIR`` or ``~/.cache/puppet``).
"""

from __future__ import annotations

import os
from pathlib import Path

from puppet.errors import AssetError

FACE_LANDMARKER_ENV = "PUPPET_FACE_LANDMARKER"
FACE_LANDMARKER_FILE = "face_landmarker.task"


def cache_dir() -> Path:
    return Path(os.environ.get("PUPPET_CACHE_DIR", Path.home() / ".cache" / "puppet"))


def find_face_landmarker(explicit: str | os.PathLike | None = None) -> Path | None:
    """Path of MediaPipe's ``face_landmarker.task`` bundle, or None when it is nowhere.

    An explicit path that does not exist is an error (the user asked for it); the environment
    variable and cache directory are only looked at.
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise AssetError(f"face landmarker bundle not found: {path}")
        return path
    env = os.environ.get(FACE_LANDMARKER_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise AssetError(f"${FACE_LANDMARKER_ENV} points to a missing file: {path}")
        return path
    cached = cache_dir() / FACE_LANDMARKER_FILE
    return cached if cached.is_file() else None
