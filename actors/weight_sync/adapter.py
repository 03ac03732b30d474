"""LoRA mode of weight sync (loop.sync adapter, with train.finetune lora and train.merge_each_round false): the
engines keep the starting weights and every engine hot-loads the round's adapter from the folder it was saved in
(one call each; a few MB read by vLLM instead of the whole model sent and reloaded).

The receive side is `WeightSyncEngine.load_adapter` (actors.weight_sync.engine), on an engine started with
`adapter_rank` (vLLM LoRA enabled).
"""
from __future__ import annotations

import time

import ray


def hot_load_adapter(engines: list, folder: str, label: str | None = None) -> dict:
    """LoRA mode (loop.sync adapter): every engine hot-loads the adapter saved in `folder` (one call each), instead
    of receiving the merged weights."""
    start = time.perf_counter()
    stats = ray.get([e.load_adapter.remote(folder, label=label) for e in engines])
    return {"sync_s": time.perf_counter() - start, "sync_mode": "adapter", "sync_bytes": stats[0]["bytes"],
            "engines_synced": len(stats), "engine_weights_version": [s["version"] for s in stats]}
