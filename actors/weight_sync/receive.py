"""Receive side of weight sync, run inside each vLLM worker (`LLM(..., worker_extension_cls=...)`, set by
actors.vllm_engine.VLLMEngine). The engine actor's methods (actors.weight_sync.engine.WeightSyncEngine) call these
through `llm.collective_rpc`, then clear the engine's caches.

One call per sync (the buckets handed over, or received by a collective broadcast) loads every tensor of the buckets
through the worker's in-place `reload_weights`. (A live CPU engine has repacked its GEMM weights, so
`model.load_weights` cannot be used there; and the method must not be called `update_weights`, which the worker
already defines.)
"""
from __future__ import annotations

import time

from actors.weight_sync.buckets import Bucket, BucketIndex, unpack_bucket


class WeightReceiver:
    def receive_weight_broadcast(self, host: str, port: int, rank: int, world_size: int, backend: str,
                                 index: list[BucketIndex], timeout_s: float) -> dict:
        """The collective transport (actors.weight_sync.collective): joins the sender's group as `rank`, receives the
        buckets `index` describes, then loads them as load_weight_buckets does. Raises if the group or a broadcast
        fails within `timeout_s`; nothing is loaded then."""
        from actors.weight_sync.collective import receive_buckets

        start = time.perf_counter()
        buckets = receive_buckets(host, port, rank, world_size, backend, index, timeout_s)
        received = time.perf_counter() - start
        return {**self.load_weight_buckets(buckets), "receive_seconds": received}

    def load_weight_buckets(self, buckets: list[Bucket]) -> dict:
        """Every tensor of `buckets` (views into their bytes, see unpack_bucket) loaded in place, in one pass."""
        start = time.perf_counter()
        names: list[str] = []

        def weights():
            for bucket in buckets:
                for name, tensor in unpack_bucket(bucket):
                    names.append(name)
                    yield name, tensor

        self.reload_weights(weights_iterator=weights(), is_checkpoint_format=True)
        # With tied embeddings the output layer keeps a packed copy of the old embedding on CPU: repack it.
        for name, module in self.model_runner.model.named_modules():
            if name.endswith("lm_head") and hasattr(module, "quant_method"):
                module.quant_method.process_weights_after_loading(module)
        return {"tensors": len(names), "bytes": sum(b.nbytes for b in buckets),
                "seconds": time.perf_counter() - start}
