"""Send side of weight sync: new policy weights → every policy engine, in place, without restarting it.

The weights reach the engines by one of three transports (loop.sync_transport), one file each:
  - object_store (actors.weight_sync.object_store): each bucket (the tensors' own memory, unpacked) is put once in the
    object store; every engine gets one `load_weight_buckets` call carrying all the bucket refs and fetches them
    itself (once per node, zero-copy on it);
  - collective (actors.weight_sync.collective): a private torch.distributed group per sync between the sender (the
    trainer's rank 0) and the engines, each bucket (packed into one buffer) one broadcast: gloo on CPU, NCCL when
    both sides are on GPUs. When the group cannot be formed or a broadcast fails within the timeout, the sync falls
    back to the object store, logs a WARNING naming the cause and says so in its stats (`sync_fallback`: the train
    stage records it and the run's summary shows it); with `required` (loop.sync_transport_required) it raises
    SyncTransportError instead;
  - shared_memory (actors.weight_sync.shared_memory): no buckets; the sender writes each tensor straight into the
    parameters of every engine on its node that keeps them in shared memory (one copy). Engines it cannot write
    (another node, an engine that refused) go through the object store, with the same WARNING and `sync_fallback`
    (or SyncTransportError with `required`).
The per-parameter-RPC pattern costs one round trip per tensor; the bucketed transports one call per engine, shared
memory three (where to write, begin, end).
LoRA mode (loop.sync adapter) sends no weights: see actors.weight_sync.adapter.hot_load_adapter.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable

import torch

import actors.weight_sync.collective as collective
import actors.weight_sync.object_store as object_store
from actors.weight_sync.buckets import Bucket, pack_buckets, tensor_buckets
from actors.weight_sync.collective import COLLECTIVE_TIMEOUT_S

log = logging.getLogger(__name__)


class SyncTransportError(RuntimeError):
    """The collective transport failed and loop.sync_transport_required forbids the object-store fallback."""


def broadcast_weights(engines: list, named: Iterable[tuple[str, torch.Tensor]], bucket_mb: int = 256,
                      label: str | None = None, transport: str = "object_store",
                      timeout_s: float = COLLECTIVE_TIMEOUT_S, required: bool = False) -> dict:
    """`label` names the weights on the engines (the policy folder they are saved in), see EnginePool.hold.
    `transport`: "object_store", "collective" or "shared_memory" (loop.sync_transport); `timeout_s` bounds each step
    of the collective. `required` (loop.sync_transport_required): a failed collective sync raises SyncTransportError
    (the engines keep their weights) instead of falling back to the object store; so does a shared-memory sync with
    an engine it cannot write (after writing those it can)."""
    start = time.perf_counter()
    stats, used = None, {}
    if transport == "shared_memory":
        return _shared_memory(engines, list(named), bucket_mb, label, required, start)
    with torch.no_grad():
        if transport == "collective":  # a broadcast sends one flat buffer per bucket: packed
            buckets = pack_buckets(named, bucket_bytes=bucket_mb << 20)
            stats, used = _try_collective(engines, buckets, label, timeout_s, required)
        else:  # the object store copies each tensor in itself: no packing copy first
            buckets = tensor_buckets(named, bucket_bytes=bucket_mb << 20)
    if stats is None:
        stats = object_store.sync_engines(engines, buckets, label)
        used = {"sync_transport": "object_store", **used}
    return _sync_stats(start, stats, len(buckets), sum(b.nbytes for b in buckets), used)


def _sync_stats(start: float, stats: list[dict], buckets: int, nbytes: int, used: dict) -> dict:
    """A weights sync's figures (the train stage records them), from the engines' own `stats`. `sync_ignored`: the
    sent names a shared-memory engine keeps nothing of (a tied output layer), which vLLM's loader skips silently."""
    ignored = sorted({name for s in stats for name in s.get("ignored", ())})
    return {"sync_s": time.perf_counter() - start, "sync_mode": "weights", "sync_buckets": buckets,
            "sync_bytes": nbytes, "engines_synced": len(stats), "engine_weights_version": [s["version"] for s in stats],
            "engine_load_s": max((s["seconds"] for s in stats), default=0.0),
            **({"sync_ignored": ignored} if ignored else {}), **used}


def _shared_memory(engines: list, named: list, bucket_mb: int, label: str | None, required: bool,
                   start: float) -> dict:
    """The shared-memory transport, and the object store for the engines it cannot write."""
    import actors.weight_sync.shared_memory as shared_memory

    stats, rest, why = shared_memory.sync_engines(engines, named, label)
    used: dict = {"sync_transport": "shared_memory"}
    if rest:
        reason = "; ".join(sorted(set(why)))
        if required:
            raise SyncTransportError(
                f"{len(rest)} of {len(engines)} engine(s) cannot take a shared-memory weight sync ({reason}) and "
                f"loop.sync_transport_required is true, so they are not synced through the object store")
        log.warning("WEIGHT SYNC FALLBACK: %d of %d engine(s) cannot take a shared-memory sync (%s); syncing them "
                    "through the object store", len(rest), len(engines), reason)
        used = {"sync_transport": "shared_memory" if stats else "object_store",
                "sync_fallback": f"shared memory: {reason}"}
        with torch.no_grad():
            buckets = tensor_buckets(named, bucket_bytes=bucket_mb << 20)
            stats += object_store.sync_engines(rest, buckets, label)
    return _sync_stats(start, stats, len(buckets) if rest else 0, sum(t.nbytes for _, t in named), used)


def _try_collective(engines: list, buckets: list[Bucket], label: str | None, timeout_s: float,
                    required: bool = False) -> tuple[list[dict] | None, dict]:
    """(the engines' load stats, the transport used), or (None, why it failed) for the object store to take over;
    with `required`, a failure raises SyncTransportError instead."""
    backend = "?"
    try:
        backend = collective.choose_backend(engines)
        stats = collective.sync_engines(engines, buckets, label, backend, timeout_s)
        return stats, {"sync_transport": "collective", "sync_backend": backend}
    except Exception as err:  # whatever broke the group (gloo, NCCL, the store, an engine), it is said out loud
        reason = f"{backend}: {type(err).__name__}: {next(iter(str(err).strip().splitlines()), '')}"
        if required:
            raise SyncTransportError(
                f"collective weight sync failed ({reason}) and loop.sync_transport_required is true, so it does not "
                f"fall back to the object store; the engines keep their previous weights") from err
        log.warning("WEIGHT SYNC FALLBACK: the collective transport failed (%s); syncing through the object store "
                    "instead (slower on GPUs; set loop.sync_transport_required to make this an error)", reason)
        return None, {"sync_fallback": reason}
