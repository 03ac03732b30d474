"""Weight buckets on the receiving side: a bucket rebuilt from its index and its bytes unpacks to the packed tensors,
and the collective transport (actors.weight_sync.collective, gloo) carries the bytes from rank 0 to every other rank;
vLLM's weight-transfer factory builds rlaif's receiving engine (actors.weight_sync.transfer_engine)."""
import threading

import pytest
import torch

import pickle

from actors.weight_sync import Bucket, pack_buckets, tensor_buckets, unpack_bucket
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


def test_unpacked_buckets_are_views_of_the_tensors_and_survive_out_of_band_pickling():
    weights = _weights()
    buckets = tensor_buckets(weights.items(), bucket_bytes=600)
    assert [[s.name for s in b.slots] for b in buckets] == [[s.name for s in b.slots]
                                                            for b in pack_buckets(weights.items(), bucket_bytes=600)]
    # No copy on the sender: each part is the tensor's own memory.
    assert buckets[0].parts[0].ctypes.data == weights["embed.weight"].data_ptr()
    # What ray.put does with them (pickle protocol 5, numpy buffers out of band): the bytes travel apart, unpacked.
    buffers: list = []
    sent = pickle.dumps(buckets, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == len(weights) and len(sent) < 2000
    _assert_same(pickle.loads(sent, buffers=buffers), weights)


@pytest.mark.parametrize("receivers", [1, 2])
def test_gloo_group_carries_every_bucket_to_every_rank(receivers):
    weights = _weights()
    packed = pack_buckets(weights.items(), bucket_bytes=600)
    store = open_store("127.0.0.1", timeout_s=20)
    world_size = 1 + receivers
    received: dict[int, list[Bucket]] = {}

    def receive(rank):
        received[rank] = receive_buckets("127.0.0.1", store.port, rank, world_size, [b.index for b in packed],
                                         timeout_s=20)

    threads = [threading.Thread(target=receive, args=(r,)) for r in range(1, world_size)]
    for t in threads:
        t.start()
    send_buckets(store, world_size, packed, timeout_s=20)
    for t in threads:
        t.join(timeout=30)
    assert sorted(received) == list(range(1, world_size))
    for buckets in received.values():
        _assert_same(buckets, weights)


def test_a_missing_receiver_fails_the_sender_within_the_timeout():
    packed = pack_buckets(_weights().items())
    store = open_store("127.0.0.1", timeout_s=0.5)
    with pytest.raises(RuntimeError):  # torch's DistStoreError
        send_buckets(store, 2, packed, timeout_s=0.5)


def test_vllm_weight_transfer_factory_builds_the_rlaif_engine():
    """The worker extension's import registers rlaif's engine in vLLM's factory: an engine configured with
    WeightTransferConfig(backend="rlaif") gets it, and it parses both transports' update info."""
    from types import SimpleNamespace

    from vllm.config.weight_transfer import WeightTransferConfig
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    import actors.weight_sync.receive  # noqa: F401  (what vLLM's worker imports first)
    from actors.weight_sync.transfer_engine import RlaifWeightTransferEngine

    config = SimpleNamespace(parallel_config=None, model_config=None)
    engine = WeightTransferEngineFactory.create_engine(WeightTransferConfig(backend="rlaif"), config,
                                                       torch.device("cpu"), torch.nn.Linear(2, 2))
    assert type(engine) is RlaifWeightTransferEngine
    packed = pack_buckets(_weights().items(), bucket_bytes=600)
    assert engine.parse_update_info({"buckets": packed}).buckets == packed
    assert engine.parse_update_info({"group": {"rank": 1}}).group == {"rank": 1}
    with pytest.raises(ValueError):
        engine.parse_update_info({"names": ["w"]})  # another backend's update info


def test_engine_fleet_client_gives_each_engine_its_own_nccl_ranks(monkeypatch):
    """The GPU path's client (vLLM's VLLMWeightSyncClient protocol over several engines): the sender is rank 0 and
    each engine's workers follow the previous engine's, where vLLM's own Ray client would put every engine at 1."""
    from vllm.distributed.weight_transfer.base import VLLMWeightSyncClient

    from actors.weight_sync import vllm_nccl

    class Engine:  # an engine actor's handle: .method.remote(...) records the call
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return type("Method", (), {"remote": lambda _, *a: self.calls.append((name, a)) or name})()

    monkeypatch.setattr(vllm_nccl.ray, "get", lambda refs: refs)
    engines = [Engine(), Engine(), Engine()]
    client = vllm_nccl.EngineFleetClient(engines, workers=[1, 2, 1], label="policy-3")
    assert isinstance(client, VLLMWeightSyncClient)
    client.init_weight_transfer_engine({"master_port": 5, "world_size": 5})
    offsets = [e.calls[0][1][0]["init_info"]["nccl"]["rank_offset"] for e in engines]
    assert offsets == [1, 2, 4]
    client.update_weights({"names": ["w"]})
    client.finish_weight_update()
    assert engines[2].calls[1:] == [("update_weights", ({"update_info": {"nccl": {"names": ["w"]}}},)),
                                    ("finish_weight_update", ("policy-3",))]
