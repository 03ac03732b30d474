"""Send side of weight sync: new policy weights → every policy engine, in a few buckets, one call per engine.

The weights are packed into a few contiguous buckets (actors.weight_sync.buckets) and reach the engines by one of two transports
(loop.sync_transport):
  - object_store: each bucket is put once in the object store; every engine gets one `load_weight_buckets` call
    carrying all the bucket refs and fetches them itself (once per node, zero-copy on it);
  - collective: a private torch.distributed group per sync (actors.weight_sync.collective) between the sender (the trainer's
    rank 0) and the engines, each bucket one broadcast: gloo on CPU, NCCL when both sides are on GPUs. When the
    group cannot be formed or a broadcast fails within the timeout, the sync falls back to the object store and says
    so in its stats (`sync_fallback`).
The per-parameter-RPC pattern costs one round trip per tensor; either transport costs one call per engine.
"""
from __future__ import annotations

import glob
import logging
import time
from pathlib import Path
from typing import Iterable

import ray
import torch

from rlaif.storage import local_folder
from actors.weight_sync.buckets import Bucket, pack_buckets

log = logging.getLogger(__name__)

# Forming the group takes well under a second with idle engines; the timeout bounds a sync whose group cannot form
# (an engine whose node cannot reach the sender's port, an engine busy elsewhere), on both sides.
COLLECTIVE_TIMEOUT_S = 60.0


def broadcast_weights(engines: list, named: Iterable[tuple[str, torch.Tensor]], bucket_mb: int = 256,
                      label: str | None = None, transport: str = "object_store",
                      timeout_s: float = COLLECTIVE_TIMEOUT_S) -> dict:
    """`label` names the weights on the engines (the policy folder they are saved in), see EnginePool.hold.
    `transport`: "object_store" or "collective" (loop.sync_transport); `timeout_s` bounds each step of the latter."""
    start = time.perf_counter()
    with torch.no_grad():
        buckets = pack_buckets(named, bucket_bytes=bucket_mb << 20)
    stats, used = _try_collective(engines, buckets, label, timeout_s) if transport == "collective" else (None, {})
    if stats is None:
        stats = _object_store_sync(engines, buckets, label)
        used = {"sync_transport": "object_store", **used}
    return {"sync_s": time.perf_counter() - start, "sync_mode": "weights", "sync_buckets": len(buckets),
            "sync_bytes": sum(b.nbytes for b in buckets), "engines_synced": len(stats),
            "engine_weights_version": [s["version"] for s in stats], **used}


def _object_store_sync(engines: list, buckets: list[Bucket], label: str | None) -> list[dict]:
    refs = [ray.put(b) for b in buckets]
    return ray.get([e.load_weight_buckets.remote(*refs, label=label) for e in engines])


def _try_collective(engines: list, buckets: list[Bucket], label: str | None,
                    timeout_s: float) -> tuple[list[dict] | None, dict]:
    """(the engines' load stats, the transport used), or (None, why it failed) for the object store to take over."""
    try:
        backend = _collective_backend(engines)
        stats = _collective_sync(engines, buckets, label, backend, timeout_s)
        return stats, {"sync_transport": "collective", "sync_backend": backend}
    except Exception as err:  # whatever broke the group, the object store still gets the weights there
        reason = f"{type(err).__name__}: {next(iter(str(err).strip().splitlines()), '')}"
        log.warning("collective weight sync failed (%s); syncing through the object store", reason)
        return None, {"sync_fallback": reason}


def _collective_backend(engines: list) -> str:
    """NCCL when the sender and every engine are on GPUs; otherwise gloo, which carries host memory between any."""
    if not torch.cuda.is_available():
        return "gloo"
    devices = {h["device"] for h in ray.get([e.health.remote() for e in engines])}
    return "nccl" if devices == {"cuda"} else "gloo"


def _collective_sync(engines: list, buckets: list[Bucket], label: str | None, backend: str,
                     timeout_s: float) -> list[dict]:
    from actors.weight_sync.collective import open_store, send_buckets

    host = ray.util.get_node_ip_address()
    store = open_store(host, timeout_s)
    world_size = 1 + len(engines)
    index = [b.index for b in buckets]
    # The engines' calls go out first: the sender's side of the group waits for every engine to join.
    receives = [e.receive_weight_broadcast.remote(host, store.port, rank, world_size, backend, index, timeout_s,
                                                  label=label)
                for rank, e in enumerate(engines, start=1)]
    try:
        send_buckets(store, world_size, backend, buckets, timeout_s)
        return ray.get(receives)
    except Exception:
        _settle(receives)
        raise


def _settle(receives: list) -> None:
    """Waits out the engines' receive calls of a failed collective sync. Each gives up on its own within the timeout
    (its weights unchanged), and the fallback's calls would queue behind it on its engine anyway; collecting the
    errors here keeps them from being reported as unhandled."""
    for call in receives:
        try:
            ray.get(call)
        except ray.exceptions.RayError:
            pass


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
