"""The engine side of weight sync: the methods a policy engine's actor is called with to take new weights in place.

`WeightSyncEngine` is a mixin of actors.vllm_engine.VLLMEngine (so they are methods of the Ray actor `EngineActor`,
called as `engine.load_weight_buckets.remote(...)`). It runs in the engine's actor process and drives vLLM's own
weight-transfer API on the engine's `LLM` (`start_weight_update`, `update_weights`, `finish_weight_update`), received
in each vLLM worker by rlaif's transfer engine (actors.weight_sync.transfer_engine, the engine's
`WeightTransferConfig` backend `rlaif`):
  - load_weight_buckets: the object-store transport (actors.weight_sync.object_store), and an engine's own reload of
    a saved folder (`_load_folder`: a restarted engine taking the policy its pool holds, see EnginePool.hold);
  - receive_weight_broadcast: the collective transport (actors.weight_sync.collective);
  - load_adapter: LoRA mode (actors.weight_sync.adapter), vLLM's LoRA API (no weights sent);
  - init_weight_transfer_engine, start_weight_update, update_weights, finish_weight_update, update_weight_version:
    vLLM's weight-sync control plane, for a trainer-side engine of vLLM's (its NCCL broadcast on GPUs).

It uses the engine's `llm` (a vllm.LLM), `model_path`, `lora_request`, `adapters_loaded`, `weights_version`,
`weights` (the label of the weights held) and `_record_call`, all set up by VLLMEngine.
"""
from __future__ import annotations

import time
from pathlib import Path


class WeightSyncEngine:
    def _load_folder(self, folder: str) -> None:
        """The weights saved in `folder`, loaded as the object-store transport loads them, without the object store."""
        from actors.weight_sync.buckets import tensor_buckets
        from actors.weight_sync.saved import saved_weights

        self.load_weight_buckets(*tensor_buckets(saved_weights(folder).items()), label=folder)

    def load_weight_buckets(self, *buckets, label: str | None = None) -> dict:
        """New weights, in place: actors.weight_sync.buckets.Bucket objects, passed as separate arguments so that Ray
        resolves each ObjectRef (one object-store object per bucket, fetched once per node). `label` names them (the
        policy folder they were saved to)."""
        return self._update_weights({"buckets": list(buckets)}, label)

    def receive_weight_broadcast(self, host: str, port: int, rank: int, world_size: int, index: list,
                                 timeout_s: float, label: str | None = None) -> dict:
        """New weights, in place, by the collective transport (actors.weight_sync.collective): joins the sender's group
        at host:port as `rank` and receives the buckets `index` (actors.weight_sync.buckets.BucketIndex) describes.
        Raises, with the weights unchanged, when the group or a broadcast fails within `timeout_s`."""
        if self.llm.llm_engine.vllm_config.parallel_config.world_size > 1:
            # Every vLLM worker would join as the same rank; the object store serves sharded engines instead.
            raise ValueError("the collective weight transport takes engines of one worker")
        group = {"host": host, "port": port, "rank": rank, "world_size": world_size, "index": index,
                 "timeout_s": timeout_s}
        return self._update_weights({"group": group}, label)

    # The shared-memory transport (actors.weight_sync.shared_memory): a sender on this node writes the weights
    # straight into this engine's parameters, between these two calls.
    def shared_weights_target(self, names: list[str]) -> dict:
        """Where a sender on this node writes tensors `names` into this engine's weights (pid, fd, size, layout with
        the names' keys, node), or why it cannot (`refusal`)."""
        import ray

        from actors.weight_sync.shared_memory import worker_target

        if not self.shared_weights:
            return {"refusal": "the engine was not started with shared weights (loop.sync_transport shared_memory)"}
        if self.llm.llm_engine.vllm_config.parallel_config.world_size > 1:
            return {"refusal": "the engine has several vLLM workers"}
        return {**self.llm.collective_rpc(worker_target, args=(names,))[0],
                "node": ray.get_runtime_context().get_node_id()}

    def begin_shared_write(self, label: str | None) -> None:
        """The weights are about to be overwritten in place: no generation until `end_shared_write`, and the label
        names no policy, so that weights a failed sender left half-written are resent (EnginePool.hold)."""
        self._write_start = time.time()
        self.writing = label or "?"
        self.weights = f"partly written: {self.writing}"

    def end_shared_write(self, label: str | None, written: dict) -> dict:
        """The sender has written every weight (`written`: its bytes, seconds and the sent names it ignored)."""
        stats = {"load": "shared memory", "bytes": written["bytes"], "seconds": written["seconds"],
                 "ignored": written["ignored"]}
        return self._weights_replaced(getattr(self, "_write_start", time.time()), stats, label)

    def check_weights_whole(self) -> None:
        if self.writing is not None:
            raise RuntimeError(f"the engine's weights are being written in place ({self.writing}); a sender that "
                               "failed midway leaves them so until the next sync")

    def _update_weights(self, update_info: dict, label: str | None) -> dict:
        """One update through vLLM's weight-transfer API, received by the engine's `rlaif` transfer engine
        (actors.weight_sync.transfer_engine). A failed receive raises before anything is loaded."""
        start = time.time()
        self.llm.start_weight_update()
        self.llm.update_weights({"update_info": update_info})
        self.llm.finish_weight_update()
        stats = self.llm.collective_rpc("weight_transfer_stats")[0]
        return self._weights_replaced(start, stats, label)

    # vLLM's weight-sync control plane (the four methods of its VLLMWeightSyncClient protocol, as vLLM's own Ray
    # client calls them), for a trainer-side engine of vLLM's (its NCCL broadcast on GPUs, see
    # actors.weight_sync.vllm_nccl). UNTESTED: no GPU here.
    def init_weight_transfer_engine(self, request) -> None:
        self.llm.init_weight_transfer_engine(request)

    def start_weight_update(self) -> None:
        self._vllm_update_start = time.time()
        self.llm.start_weight_update()

    def update_weights(self, request) -> None:
        self.llm.update_weights(request)

    def finish_weight_update(self, weight_version: str | None = None) -> dict:
        self.llm.finish_weight_update()
        stats = self.llm.collective_rpc("weight_transfer_stats")[0]
        return self._weights_replaced(getattr(self, "_vllm_update_start", time.time()), stats, weight_version)

    def update_weight_version(self, new_version: str) -> None:
        self.weights = new_version

    def shutdown_weight_transfer_engine(self) -> None:
        self.llm.shutdown_weight_transfer_engine()

    def _weights_replaced(self, start: float, stats: dict, label: str | None) -> dict:
        self.writing = None  # whole weights again (a shared-memory write that failed midway is overwritten)
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
