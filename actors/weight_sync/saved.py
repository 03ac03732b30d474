"""A saved policy's weights, as a sync sends them: what the driver resends on a resume (EnginePool.hold), what a
restarted engine loads (WeightSyncEngine._load_folder), and what a shared-memory engine learns its layout from."""
from __future__ import annotations

import glob
from pathlib import Path

import torch

from rlaif.storage import local_folder


def saved_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved HF folder (its *.safetensors files), in checkpoint names."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(glob.glob(str(Path(local_folder(str(folder))) / "*.safetensors"))):
        state.update(load_file(f))
    if not state:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    return state
