"""Where ray-rlaif keeps things that outlive a run: built test models, converted checkpoints."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$RLAIF_CACHE`, else `~/.cache/ray-rlaif`. Created on first use."""
    root = Path(os.environ.get("RLAIF_CACHE") or Path.home() / ".cache" / "ray-rlaif")
    root.mkdir(parents=True, exist_ok=True)
    return root
