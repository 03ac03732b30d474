"""The collective transport of weight sync: a private torch.distributed group per sync, rank 0 the sender (the
trainer's rank 0), one rank per engine, each bucket (actors.weight_sync.buckets) sent by one broadcast.

The group never touches the default process group: the sender runs inside a Ray Train worker that already has one
(the trainers' group), and each vLLM worker has its own. It lives for one sync, rendezvousing through a TCPStore on a
fresh port, so a failed sync leaves nothing behind for the next. Every step (connecting to the store, all ranks
checking in, each broadcast) gives up after `timeout_s`, on both sides: a sender that gives up falls back to another
transport, and the engines must not stay blocked waiting for it.

gloo (CPU) is what the project's CPU machines run and test. NCCL (sender and engines on GPUs) takes the same steps
but is UNTESTED: the development machines have no GPU.
"""
from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

from actors.weight_sync.buckets import Bucket, BucketIndex

ROOT = 0  # the sender's rank


def open_store(host: str, timeout_s: float) -> dist.TCPStore:
    """The sender's store, on a free port of this node (`.port`; port 0 lets the OS pick it, so two syncs never
    race for one). `host` is only what the engines are told to connect to."""
    return dist.TCPStore(host, 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=timeout_s))


@contextlib.contextmanager
def joined(store: dist.Store, rank: int, world_size: int, backend: str, timeout_s: float) -> Iterator:
    """This process's member of the sync's group (a backend object, not a torch.distributed group: nothing global)."""
    timeout = timedelta(seconds=timeout_s)
    # Every rank checks in before any backend connects, so a missing rank fails here within the timeout for either
    # backend (NCCL would only notice in its first collective).
    store.set(f"joined/{rank}", "1")
    store.wait([f"joined/{r}" for r in range(world_size)], timeout)
    if backend == "gloo":
        yield dist.ProcessGroupGloo(store, rank, world_size, timeout)
        return
    options = dist.ProcessGroupNCCL.Options()  # UNTESTED (no GPU here)
    options._timeout = timeout
    group = dist.ProcessGroupNCCL(store, rank, world_size, options)
    try:
        yield group
    finally:
        group.shutdown()  # frees the communicator's GPU buffers: one group per sync would otherwise pile them up


def broadcast_buckets(group, buckets: list[Bucket], backend: str) -> None:
    """The root's bucket bytes into every other rank's buckets (the same layout, see Bucket.empty)."""
    options = dist.BroadcastOptions()
    options.rootRank = ROOT
    for bucket in buckets:
        data = torch.from_numpy(bucket.data)
        if backend == "gloo":
            group.broadcast([data], options).wait()
            continue
        device = data.cuda()  # UNTESTED: NCCL sends from and to GPU memory; the buckets stay in host memory
        group.broadcast([device], options).wait()
        if group.rank() != ROOT:
            data.copy_(device)


def send_buckets(store: dist.Store, world_size: int, backend: str, buckets: list[Bucket], timeout_s: float) -> None:
    """Rank 0: the group forms on `store` (see open_store) once every engine has joined, then each bucket goes out."""
    with joined(store, ROOT, world_size, backend, timeout_s) as group:
        broadcast_buckets(group, buckets, backend)


def receive_buckets(host: str, port: int, rank: int, world_size: int, backend: str, index: list[BucketIndex],
                    timeout_s: float) -> list[Bucket]:
    """An engine's side of send_buckets: the buckets described by `index`, filled by the sender's broadcasts."""
    store = dist.TCPStore(host, port, world_size, is_master=False, timeout=timedelta(seconds=timeout_s))
    buckets = [Bucket.empty(i) for i in index]
    with joined(store, rank, world_size, backend, timeout_s) as group:
        broadcast_buckets(group, buckets, backend)
    return buckets
