"""The collective transport of weight sync (loop.sync_transport collective): a private torch.distributed group per
sync, rank 0 the sender (the trainer's rank 0), one rank per engine, each bucket (actors.weight_sync.buckets) sent by
one broadcast.

Driver side: `sync_engines` (called by actors.weight_sync.send.broadcast_weights, which falls back to the object store
when it raises, logging a warning with the cause and recording it as `sync_fallback`, or, with
loop.sync_transport_required, raises SyncTransportError instead). Group side, on both ends: `open_store` /
`send_buckets` for the sender, `receive_buckets` for each engine (called in its vLLM worker by rlaif's vLLM weight
transfer engine, actors.weight_sync.transfer_engine, for an update whose info names a `group`).

The group never touches the default process group: the sender runs inside a Ray Train worker that already has one
(the trainers' group), and each vLLM worker has its own. It lives for one sync, rendezvousing through a TCPStore on a
fresh port, so a failed sync leaves nothing behind for the next. Every step (connecting to the store, all ranks
checking in, each broadcast) gives up after `timeout_s`, on both sides: a sender that gives up falls back to another
transport, and the engines must not stay blocked waiting for it.

gloo (CPU) is what the project's CPU machines run and test. On GPUs (sender and every engine) the sync is vLLM's own
NCCL weight transfer instead (actors.weight_sync.vllm_nccl; UNTESTED: the development machines have no GPU).

Topology: the broadcast of one bucket is gloo's `broadcast` (torch's ProcessGroupGloo calls gloo::broadcast), a
binomial tree over the group: ceil(log2(1 + engines)) rounds, each rank that has the bucket sending it whole to one
more; so the sender sends each bucket at most ceil(log2(1 + engines)) times, not once per engine (README.md, "Many
engines").
"""
from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Iterator

import ray
import torch
import torch.distributed as dist

from actors.weight_sync.buckets import Bucket, BucketIndex

ROOT = 0  # the sender's rank
# Forming the group takes well under a second with idle engines; the timeout bounds a sync whose group cannot form
# (an engine whose node cannot reach the sender's port, an engine busy elsewhere), on both sides.
COLLECTIVE_TIMEOUT_S = 60.0


# Driver side: the sender's process (the trainer's rank 0) and the engine actors' calls.

def choose_backend(engines: list) -> str:
    """NCCL when the sender and every engine are on GPUs; otherwise gloo, which carries host memory between any."""
    if not torch.cuda.is_available():
        return "gloo"
    devices = {h["device"] for h in ray.get([e.health.remote() for e in engines])}
    return "nccl" if devices == {"cuda"} else "gloo"


def sync_engines(engines: list, buckets: list[Bucket], label: str | None, backend: str,
                 timeout_s: float) -> list[dict]:
    """Every engine's load stats, once each has received and loaded every bucket. Raises when the group or a
    broadcast fails within `timeout_s`, after the engines' calls have given up (their weights unchanged)."""
    if backend == "nccl":  # UNTESTED (no GPU here)
        from actors.weight_sync.vllm_nccl import sync_engines as sync_over_vllm_nccl

        return sync_over_vllm_nccl(engines, buckets, label)
    host = ray.util.get_node_ip_address()
    store = open_store(host, timeout_s)
    world_size = 1 + len(engines)
    index = [b.index for b in buckets]
    # The engines' calls go out first: the sender's side of the group waits for every engine to join.
    receives = [e.receive_weight_broadcast.remote(host, store.port, rank, world_size, index, timeout_s, label=label)
                for rank, e in enumerate(engines, start=1)]
    try:
        send_buckets(store, world_size, buckets, timeout_s)
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


# Group side: the sender's rank 0 and each engine's rank, over a store of their own.

def open_store(host: str, timeout_s: float) -> dist.TCPStore:
    """The sender's store, on a free port of this node (`.port`; port 0 lets the OS pick it, so two syncs never
    race for one). `host` is only what the engines are told to connect to."""
    return dist.TCPStore(host, 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=timeout_s))


@contextlib.contextmanager
def joined(store: dist.Store, rank: int, world_size: int, timeout_s: float) -> Iterator:
    """This process's member of the sync's gloo group (a backend object, not a torch.distributed group: nothing
    global). gloo only: on GPUs the sync is vLLM's NCCL engine (see sync_engines)."""
    timeout = timedelta(seconds=timeout_s)
    # Every rank checks in before the group connects, so a missing rank fails here within the timeout.
    store.set(f"joined/{rank}", "1")
    store.wait([f"joined/{r}" for r in range(world_size)], timeout)
    yield dist.ProcessGroupGloo(store, rank, world_size, timeout)


def broadcast_buckets(group, buckets: list[Bucket]) -> None:
    """The root's bucket bytes into every other rank's buckets (the same layout, see Bucket.empty)."""
    options = dist.BroadcastOptions()
    options.rootRank = ROOT
    for bucket in buckets:
        group.broadcast([torch.from_numpy(bucket.data)], options).wait()


def send_buckets(store: dist.Store, world_size: int, buckets: list[Bucket], timeout_s: float) -> None:
    """Rank 0: the group forms on `store` (see open_store) once every engine has joined, then each bucket goes out."""
    with joined(store, ROOT, world_size, timeout_s) as group:
        broadcast_buckets(group, buckets)


def receive_buckets(host: str, port: int, rank: int, world_size: int, index: list[BucketIndex],
                    timeout_s: float) -> list[Bucket]:
    """An engine's side of send_buckets: the buckets described by `index`, filled by the sender's broadcasts."""
    store = dist.TCPStore(host, port, world_size, is_master=False, timeout=timedelta(seconds=timeout_s))
    buckets = [Bucket.empty(i) for i in index]
    with joined(store, rank, world_size, timeout_s) as group:
        broadcast_buckets(group, buckets)
    return buckets
