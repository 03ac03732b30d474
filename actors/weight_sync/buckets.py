"""A model's weights in a few buckets, each sent as one message, and their tensors on the receiving side.

Weight sync sends one control message per sync: a bucket is a group of tensors plus a small index, one object-store
object or one collective broadcast, instead of one RPC per parameter. Two forms:
  - unpacked (`tensor_buckets`, the object-store transport): each tensor's bytes as a numpy view of its own memory.
    `ray.put` copies each view once into the object store, and every reader on the node gets views of its shared
    memory: one copy on the way, where packing first would be two;
  - packed (`pack_buckets`, the collective transport): one flat byte buffer per bucket, what a broadcast sends.

Numpy, not torch tensors: the object store takes a numpy array with one copy and hands it to every reader on the node
as a view of its shared memory (zero copy), while a torch tensor is pickled (several copies of every byte on both
sides).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch


@dataclass(frozen=True)
class TensorSlot:
    name: str
    dtype: str  # torch dtype name, e.g. "float32"
    shape: tuple[int, ...]
    offset: int  # bytes into the bucket
    nbytes: int


@dataclass(frozen=True)
class BucketIndex:
    """A bucket without its bytes: what a receiver needs to allocate the buffer a collective broadcast fills."""
    nbytes: int
    slots: list[TensorSlot]


@dataclass
class Bucket:
    data: np.ndarray | None  # packed: uint8, 1-D, contiguous (read-only when it comes out of the object store)
    slots: list[TensorSlot]
    parts: list[np.ndarray] | None = None  # unpacked: each slot's bytes (uint8, 1-D), instead of `data`

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.slots)

    @property
    def index(self) -> BucketIndex:
        return BucketIndex(self.nbytes, self.slots)

    @classmethod
    def empty(cls, index: BucketIndex) -> "Bucket":
        """A writable packed bucket of `index`'s layout, its bytes still to be received."""
        return cls(np.empty(index.nbytes, dtype=np.uint8), index.slots)


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _groups(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int,
            dtype: torch.dtype | None) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The tensors (on CPU, floating-point ones cast to `dtype` if given), in order, in groups of at most
    `bucket_bytes` (a bigger tensor gets a group of its own)."""
    group: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in named:
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        if group and size + t.nbytes > bucket_bytes:
            yield group
            group, size = [], 0
        group.append((name, t))
        size += t.nbytes
    if group:
        yield group


def _slots(group: list[tuple[str, torch.Tensor]]) -> list[TensorSlot]:
    slots, offset = [], 0
    for name, t in group:
        slots.append(TensorSlot(name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset, t.nbytes))
        offset += t.nbytes
    return slots


def tensor_buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = 512 << 20,
                   dtype: torch.dtype | None = None) -> list[Bucket]:
    """Unpacked buckets: views of the tensors' own memory (no copy, unless a tensor needs a cast or is not
    contiguous), grouped as pack_buckets groups them. The tensors must not change until the buckets are sent."""
    return [Bucket(None, _slots(group), [_as_bytes(t).numpy() for _, t in group])
            for group in _groups(named, bucket_bytes, dtype)]


def pack_buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = 512 << 20,
                 dtype: torch.dtype | None = None) -> list[Bucket]:
    """Packed buckets: the tensors (in order) copied into one buffer per group of at most `bucket_bytes` (a bigger
    tensor gets a bucket of its own). `dtype` casts floating-point tensors first (e.g. bfloat16 halves the bytes)."""
    buckets = []
    for group in _groups(named, bucket_bytes, dtype):
        slots = _slots(group)
        data = np.empty(sum(s.nbytes for s in slots), dtype=np.uint8)
        view = torch.from_numpy(data)
        for s, (_, t) in zip(slots, group):
            view[s.offset: s.offset + s.nbytes] = _as_bytes(t)
        buckets.append(Bucket(data, slots))
    return buckets


def unpack_bucket(bucket: Bucket) -> Iterator[tuple[str, torch.Tensor]]:
    """Views into the bucket's memory (no copy): (name, tensor) in packing order. A bucket from the object store is
    read-only shared memory: its tensors are for copying from (what loading weights does), never to be written."""
    with warnings.catch_warnings():  # torch warns once that it cannot mark a view of read-only memory read-only
        warnings.simplefilter("ignore", UserWarning)
        if bucket.parts is not None:
            raws = [torch.from_numpy(part) for part in bucket.parts]
        else:
            data = torch.from_numpy(bucket.data)
            raws = [data[s.offset: s.offset + s.nbytes] for s in bucket.slots]
    for s, raw in zip(bucket.slots, raws):
        yield s.name, raw.view(getattr(torch, s.dtype)).reshape(s.shape)
