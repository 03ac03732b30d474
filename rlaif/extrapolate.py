"""Parameter extrapolation (MMAIP-V's weak-to-strong step; ExPO, Zheng et al. 2024): θ ← θ_ref + α·(θ_dpo − θ_ref).

A DPO round moves the weights from the reference θ_ref towards θ_dpo; with α > 1 the update is pushed further along
the same direction (cheaply amplifying a small, conservative round), α = 1 leaves θ_dpo unchanged.
"""
from __future__ import annotations

from typing import Mapping

import torch


def extrapolate(reference: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor],
                alpha: float) -> dict[str, torch.Tensor]:
    """New state dict with every floating-point tensor extrapolated; other tensors (int buffers) are taken from
    `trained`. Both state dicts must name the same tensors with the same shapes."""
    missing = set(trained) ^ set(reference)
    if missing:
        raise ValueError(f"reference and trained weights differ in tensors: {sorted(missing)[:5]}")
    out = {}
    for name, new in trained.items():
        old = reference[name]
        if old.shape != new.shape:
            raise ValueError(f"{name}: shape {tuple(old.shape)} in the reference, {tuple(new.shape)} trained")
        if new.is_floating_point():
            # Computed in float32 so that bf16 weights do not lose the small update (θ_dpo − θ_ref) to rounding.
            delta = new.float() - old.float()
            out[name] = (old.float() + alpha * delta).to(new.dtype)
        else:
            out[name] = new
    return out
