"""The collective transport on GPUs (sender and every engine on GPUs: actors.weight_sync.collective.choose_backend says
nccl): vLLM's own NCCL weight transfer, not rlaif's. UNTESTED: the development machines have no GPU.

vLLM's trainer-side `NCCLTrainerWeightTransferEngine` (built by `WeightTransferTrainerFactory` from an
`NCCLTrainerInitInfo`) opens one NCCL group holding the sender (rank 0) and every vLLM worker of every engine, and
broadcasts the weights in packed chunks (one pipelined ring broadcast each) while the workers receive and load them.
It drives the engines through vLLM's four-method `VLLMWeightSyncClient` protocol; `EngineFleetClient` is that client
over rlaif's engine actors (their methods of the same names, actors.weight_sync.engine), and gives each engine its own
ranks: vLLM's own Ray client would tell every engine `rank_offset=1`, which only fits one engine (or one data-parallel
group). Each engine's rlaif transfer engine (actors.weight_sync.transfer_engine) holds vLLM's NCCL worker engine and
hands it the `nccl` init and update info.

One group per sync, closed after it (as the gloo path does): a group kept across rounds would save NCCL's setup (about
a second) but would outlive a failed sync. Unlike the gloo path, a peer that dies mid-broadcast is bounded only by
NCCL's own timeouts.
"""
from __future__ import annotations

import socket

import ray

from actors.weight_sync.buckets import Bucket, unpack_bucket


class EngineFleetClient:
    """vLLM's `VLLMWeightSyncClient` over several rlaif engine actors, each engine's workers at their own ranks."""

    def __init__(self, engines: list, workers: list[int], label: str | None):
        self.engines, self.workers, self.label = engines, workers, label
        self.stats: list[dict] = []

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        calls, offset = [], 1  # rank 0: the sender
        for engine, n in zip(self.engines, self.workers):
            nccl = {**init_info, "rank_offset": offset}
            calls.append(engine.init_weight_transfer_engine.remote({"init_info": {"nccl": nccl}}))
            offset += n
        ray.get(calls)

    def start_weight_update(self) -> None:
        ray.get([e.start_weight_update.remote() for e in self.engines])

    def update_weights(self, update_info: dict) -> None:
        ray.get([e.update_weights.remote({"update_info": {"nccl": update_info}}) for e in self.engines])

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.stats = ray.get([e.finish_weight_update.remote(weight_version or self.label) for e in self.engines])

    def shutdown(self) -> None:
        ray.get([e.shutdown_weight_transfer_engine.remote() for e in self.engines])


def _weight_source(buckets: list[Bucket]):
    """vLLM's `WeightSource` over the buckets' tensors, each copied to this process's GPU as it is sent."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class BucketSource(WeightSource):
        def metadata(self):
            return [ParamMeta(name, t.dtype, tuple(t.shape)) for b in buckets for name, t in unpack_bucket(b)]

        def __iter__(self):
            for b in buckets:
                for name, t in unpack_bucket(b):
                    yield name, t.cuda()

    return BucketSource()


def sync_engines(engines: list, buckets: list[Bucket], label: str | None) -> list[dict]:
    """Every engine's load stats, once vLLM's NCCL broadcast has reached and loaded every worker."""
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

    workers = [h["workers"] for h in ray.get([e.health.remote() for e in engines])]
    client = EngineFleetClient(engines, workers, label)
    with socket.socket() as s:  # a free port for vLLM's rendezvous store, which the sender hosts
        s.bind(("", 0))
        port = s.getsockname()[1]
    init = NCCLTrainerInitInfo(master_address=ray.util.get_node_ip_address(), master_port=port,
                               world_size=1 + sum(workers), rank=0)
    trainer = WeightTransferTrainerFactory.trainer_init(init, client=client, source=_weight_source(buckets))
    try:
        trainer.send_weights()
    finally:
        trainer.shutdown()
        client.shutdown()
    return client.stats
