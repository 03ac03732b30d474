"""Receive side of weight sync, run inside each vLLM worker (`LLM(..., worker_extension_cls=...)`).

One call per sync loads every tensor of the buckets through the worker's in-place `reload_weights`. (A live CPU
engine has repacked its GEMM weights, so `model.load_weights` cannot be used there; and the method must not be
called `update_weights`, which the worker already defines.)
"""
from __future__ import annotations

import time

from rlaif.weights import Bucket, unpack_bucket


class WeightReceiver:
    def load_weight_buckets(self, buckets: list[Bucket]) -> dict:
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
