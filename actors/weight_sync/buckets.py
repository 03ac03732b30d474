"""Packing a model's weights into a few large contiguous buckets, and unpacking them on the receiving side.

Weight sync sends one control message per sync: each bucket is one flat byte buffer (one object-store object, or
one collective broadcast) plus a small index, instead of one RPC per parameter.

The buffer is a numpy array, not a torch tensor: the object store takes a numpy array with one copy and hands it to
every reader on the node as a view of its shared memory (zero copy), while a torch tensor is pickled (several
copies of every byte on both sides).
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
    data: np.ndarray  # uint8, 1-D, contiguous (read-only when it comes out of the object store)
    slots: list[TensorSlot]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    @property
    def index(self) -> BucketIndex:
        return BucketIndex(self.nbytes, self.slots)

    @classmethod
    def empty(cls, index: BucketIndex) -> "Bucket":
        """A writable bucket of `index`'s layout, its bytes still to be received."""
        return cls(np.empty(index.nbytes, dtype=np.uint8), index.slots)


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def pack_buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = 512 << 20,
                 dtype: torch.dtype | None = None) -> list[Bucket]:
    """Groups tensors (in order) into buckets of at most `bucket_bytes` (a bigger tensor gets a bucket of its own).
    `dtype` casts floating-point tensors first (e.g. bfloat16 halves the bytes sent)."""
    groups: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, t in named:
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        if groups[-1] and size + t.nbytes > bucket_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, t))
        size += t.nbytes
    buckets = []
    for group in groups:
        if not group:
            continue
        data = np.empty(sum(t.nbytes for _, t in group), dtype=np.uint8)
        view = torch.from_numpy(data)
        slots, offset = [], 0
        for name, t in group:
            view[offset: offset + t.nbytes] = _as_bytes(t)
            slots.append(TensorSlot(name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset, t.nbytes))
            offset += t.nbytes
        buckets.append(Bucket(data, slots))
    return buckets


def unpack_bucket(bucket: Bucket) -> Iterator[tuple[str, torch.Tensor]]:
    """Views into the bucket's buffer (no copy): (name, tensor) in packing order. A bucket from the object store is
    read-only shared memory: its tensors are for copying from (what loading weights does), never to be written."""
    with warnings.catch_warnings():  # torch warns once that it cannot mark the view read-only
        warnings.simplefilter("ignore", UserWarning)
        data = torch.from_numpy(bucket.data)
    for s in bucket.slots:
        raw = data[s.offset: s.offset + s.nbytes]
        yield s.name, raw.view(getattr(torch, s.dtype)).reshape(s.shape)
