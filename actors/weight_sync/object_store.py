"""The object-store transport of weight sync (loop.sync_transport object_store: the default, and the fallback of the
collective transport): each bucket (actors.weight_sync.buckets) is put once in Ray's object store, and every engine
gets one `load_weight_buckets` call carrying all the bucket refs and fetches them itself (once per node, zero-copy on
it: a numpy bucket is read as a view of the node's shared memory).

The receive side is the engine's `WeightSyncEngine.load_weight_buckets` (actors.weight_sync.engine), which hands the
buckets to every vLLM worker's `WeightReceiver.load_weight_buckets` (actors.weight_sync.receive).
"""
from __future__ import annotations

import ray

from actors.weight_sync.buckets import Bucket


def sync_engines(engines: list, buckets: list[Bucket], label: str | None) -> list[dict]:
    """Every engine's load stats, once each has loaded every bucket. `label` names the weights on the engines."""
    refs = [ray.put(b) for b in buckets]
    return ray.get([e.load_weight_buckets.remote(*refs, label=label) for e in engines])
