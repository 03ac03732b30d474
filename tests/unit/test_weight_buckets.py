"""Weight buckets on the receiving side: a bucket rebuilt from its index and its bytes unpacks to the packed tensors,
and the collective transport (actors.weight_sync.collective, gloo) carries the bytes from rank 0 to every other rank."""
import threading

import pytest
import torch

from actors.weight_sync import Bucket, pack_buckets, unpack_bucket
from actors.weight_sync.collective import open_store, receive_buckets, send_buckets


def _weights():
    g = torch.Generator().manual_seed(0)
    return {"embed.weight": torch.randn(16, 8, generator=g), "norm.weight": torch.randn(8, generator=g).bfloat16(),
            "layer.0.bias": torch.arange(5, dtype=torch.int64), "lm_head.weight": torch.randn(3, 8, generator=g)}


def _assert_same(buckets, weights):
    received = dict(kv for b in buckets for kv in unpack_bucket(b))
    assert list(received) == list(weights)
    for name, t in weights.items():
        assert received[name].dtype == t.dtype and torch.equal(received[name], t), name


def test_a_bucket_rebuilt_from_its_index_and_bytes_unpacks_to_the_packed_tensors():
    weights = _weights()
    packed = pack_buckets(weights.items(), bucket_bytes=600)
    assert len(packed) > 1
    rebuilt = [Bucket.empty(b.index) for b in packed]
    assert [b.nbytes for b in rebuilt] == [b.nbytes for b in packed]
    for target, source in zip(rebuilt, packed):
        target.data[:] = source.data
    _assert_same(rebuilt, weights)


@pytest.mark.parametrize("receivers", [1, 2])
def test_gloo_group_carries_every_bucket_to_every_rank(receivers):
    weights = _weights()
    packed = pack_buckets(weights.items(), bucket_bytes=600)
    store = open_store("127.0.0.1", timeout_s=20)
    world_size = 1 + receivers
    received: dict[int, list[Bucket]] = {}

    def receive(rank):
        received[rank] = receive_buckets("127.0.0.1", store.port, rank, world_size, "gloo", [b.index for b in packed],
                                         timeout_s=20)

    threads = [threading.Thread(target=receive, args=(r,)) for r in range(1, world_size)]
    for t in threads:
        t.start()
    send_buckets(store, world_size, "gloo", packed, timeout_s=20)
    for t in threads:
        t.join(timeout=30)
    assert sorted(received) == list(range(1, world_size))
    for buckets in received.values():
        _assert_same(buckets, weights)


def test_a_missing_receiver_fails_the_sender_within_the_timeout():
    packed = pack_buckets(_weights().items())
    store = open_store("127.0.0.1", timeout_s=0.5)
    with pytest.raises(RuntimeError):  # torch's DistStoreError
        send_buckets(store, 2, "gloo", packed, timeout_s=0.5)
