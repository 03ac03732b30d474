"""The engine side of weight sync: the methods a policy engine's actor is called with to take new weights in place.

`WeightSyncEngine` is a mixin of actors.vllm_engine.VLLMEngine (so they are methods of the Ray actor `EngineActor`,
called as `engine.load_weight_buckets.remote(...)`). It runs in the engine's actor process and drives the vLLM
workers, where actors.weight_sync.receive.WeightReceiver (the engine's `worker_extension_cls`) does the loading:
  - load_weight_buckets: the object-store transport (actors.weight_sync.object_store), and an engine's own reload of
    a saved folder (`_load_folder`: a restarted engine taking the policy its pool holds, see EnginePool.hold);
  - receive_weight_broadcast: the collective transport (actors.weight_sync.collective);
  - load_adapter: LoRA mode (actors.weight_sync.adapter).

It uses the engine's `llm` (a vllm.LLM), `model_path`, `lora_request`, `adapters_loaded`, `weights_version`,
`weights` (the label of the weights held) and `_record_call`, all set up by VLLMEngine.
"""
from __future__ import annotations

import time
from pathlib import Path


class WeightSyncEngine:
    def _load_folder(self, folder: str) -> None:
        """The weights saved in `folder`, loaded as the object-store transport loads them, without the object store."""
        from actors.weight_sync.buckets import pack_buckets
        from actors.weight_sync.send import saved_weights

        self.load_weight_buckets(*pack_buckets(saved_weights(folder).items()), label=folder)

    def load_weight_buckets(self, *buckets, label: str | None = None) -> dict:
        """New weights, in place: actors.weight_sync.buckets.Bucket objects, passed as separate arguments so that Ray
        resolves each ObjectRef (one object-store object per bucket, fetched once per node). `label` names them (the
        policy folder they were saved to)."""
        start = time.time()
        stats = self.llm.collective_rpc("load_weight_buckets", args=(list(buckets),))[0]
        return self._weights_replaced(start, stats, label)

    def receive_weight_broadcast(self, host: str, port: int, rank: int, world_size: int, backend: str, index: list,
                                 timeout_s: float, label: str | None = None) -> dict:
        """New weights, in place, by the collective transport (actors.weight_sync.collective): joins the sender's group
        at host:port as `rank` and receives the buckets `index` (actors.weight_sync.buckets.BucketIndex) describes.
        Raises, with the weights unchanged, when the group or a broadcast fails within `timeout_s`."""
        if self.llm.llm_engine.vllm_config.parallel_config.world_size > 1:
            # Every vLLM worker would join as the same rank; the object store serves sharded engines instead.
            raise ValueError("the collective weight transport takes engines of one worker")
        start = time.time()
        stats = self.llm.collective_rpc("receive_weight_broadcast",
                                        args=(host, port, rank, world_size, backend, index, timeout_s))[0]
        return self._weights_replaced(start, stats, label)

    def _weights_replaced(self, start: float, stats: dict, label: str | None) -> dict:
        self._drop_adapter()  # whole new weights: an adapter trained on the old ones no longer applies
        # Everything computed with the old weights must go: KV blocks, and the vision encoder's cached outputs
        # (the scheduler's bookkeeping too, or it asks the worker for embeddings that no longer exist).
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()
        self.weights_version += 1
        self.weights = label or f"{self.model_path}@v{self.weights_version}"
        self._record_call(start)
        return {**stats, "version": self.weights_version}

    def load_adapter(self, folder: str, label: str | None = None) -> dict:
        """Hot-load a LoRA adapter (peft folder) trained on the weights this engine holds, in place of the previous
        one: vLLM reads the adapter's few MB and applies it to every later request, the base weights untouched.
        Needs an engine started with `adapter_rank`."""
        from vllm.lora.request import LoRARequest

        from rlaif.storage import local_folder

        start = time.time()
        self.adapters_loaded += 1
        local = local_folder(folder)
        request = LoRARequest(f"policy-{self.adapters_loaded}", self.adapters_loaded + 1, local)
        self.llm.llm_engine.add_lora(request)  # loaded now, not by the next request
        self._drop_adapter()
        self.lora_request = request
        self.llm.reset_prefix_cache()  # (the cache keys carry the adapter; this frees the old adapter's blocks)
        self.weights_version += 1
        self.weights = label or f"{self.model_path}+{folder}"
        self._record_call(start)
        return {"version": self.weights_version, "seconds": time.time() - start,
                "bytes": sum(f.stat().st_size for f in Path(local).glob("*.safetensors"))}

    def _drop_adapter(self) -> None:
        if self.lora_request is not None:
            self.llm.llm_engine.remove_lora(self.lora_request.lora_int_id)
            self.lora_request = None
