"""Send side of weight sync: new policy weights → every policy engine, in a few buckets, one call per engine.

Each bucket (rlaif.weights) is put once in the object store; every engine gets one `load_weight_buckets` call
carrying all the bucket refs and fetches them itself (once per node). The per-parameter-RPC pattern costs one
round trip per tensor; this costs one per engine.
"""
from __future__ import annotations

import glob
import time
from pathlib import Path
from typing import Iterable

import ray
import torch

from rlaif.storage import local_folder
from rlaif.weights import pack_buckets


def broadcast_weights(engines: list, named: Iterable[tuple[str, torch.Tensor]], bucket_mb: int = 256,
                      label: str | None = None) -> dict:
    """`label` names the weights on the engines (the policy folder they are saved in), see EnginePool.hold."""
    start = time.perf_counter()
    with torch.no_grad():
        buckets = pack_buckets(named, bucket_bytes=bucket_mb << 20)
    refs = [ray.put(b) for b in buckets]
    stats = ray.get([e.load_weight_buckets.remote(*refs, label=label) for e in engines])
    return {"sync_s": time.perf_counter() - start, "sync_mode": "weights", "sync_buckets": len(buckets),
            "sync_bytes": sum(b.nbytes for b in buckets), "engines_synced": len(stats),
            "engine_weights_version": [s["version"] for s in stats]}


def hot_load_adapter(engines: list, folder: str, label: str | None = None) -> dict:
    """LoRA mode (loop.sync adapter): every engine hot-loads the adapter saved in `folder` (one call each), instead
    of receiving the merged weights."""
    start = time.perf_counter()
    stats = ray.get([e.load_adapter.remote(folder, label=label) for e in engines])
    return {"sync_s": time.perf_counter() - start, "sync_mode": "adapter", "sync_bytes": stats[0]["bytes"],
            "engines_synced": len(stats), "engine_weights_version": [s["version"] for s in stats]}


def saved_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved HF folder (its *.safetensors files), in checkpoint names."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(glob.glob(str(Path(local_folder(str(folder))) / "*.safetensors"))):
        state.update(load_file(f))
    if not state:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    return state
