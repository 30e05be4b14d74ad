"""Where the harness keeps generated data and caches."""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def harness_home() -> Path:
    """``$HARNESS_HOME`` if set, else the per-user cache directory."""
    env = os.environ.get("HARNESS_HOME")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("wsol-harness"))
