"""rlaif's weight transfer engine for vLLM's weight-transfer API (`vllm.distributed.weight_transfer`), run inside each
vLLM worker: the receive side of both of rlaif's transports, and of vLLM's own NCCL engine on GPUs.

An engine is started with `WeightTransferConfig(backend="rlaif")` (actors.vllm_engine.VLLMEngine); vLLM's worker
then builds this class through `WeightTransferEngineFactory` when it loads the model, and a sync is vLLM's own
round trip on the `LLM`: `start_weight_update`, `update_weights` (one or more chunks), `finish_weight_update`. A
chunk's update info names one of:
  - `buckets`: actors.weight_sync.buckets.Bucket objects (the object-store transport: Ray has already fetched them
    into the engine's process, zero-copy on its node);
  - `group`: where to join the sender's gloo group and the buckets' layout (the collective transport, see
    actors.weight_sync.collective.receive_buckets);
  - `nccl`: vLLM's NCCL engine's update info (names, dtypes, shapes), for an engine whose `init_weight_transfer_engine`
    joined a trainer's NCCL group (`init_info={"nccl": ...}`). UNTESTED: no GPU here.

Why one backend for all three: vLLM fixes one backend per engine at start, and a collective sync that fails must fall
back to the object store on the same engine. So this engine holds vLLM's `NCCLWeightTransferEngine` inside instead
of being replaced by it.

Buckets are received whole before anything is loaded (a gloo group that fails mid-sync leaves the weights untouched),
then loaded in one pass at `finish_weight_update`: vLLM's layerwise reload (`initialize_layerwise_reload`,
`model.load_weights`, `finalize_layerwise_reload`: what its in-place `reload_weights` does), which also repacks a CPU
engine's GEMM weights into oneDNN's layout (most of a sync's time on CPU); or, for an engine on the plain CPU kernel
(pools.*.cpu_gemm torch, `loads_in_place`), `model.load_weights` alone, copying each tensor into its parameter.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from vllm.distributed.weight_transfer.base import (WeightTransferEngine, WeightTransferInitInfo,
                                                   WeightTransferUpdateInfo)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

from actors.weight_sync.buckets import Bucket, unpack_bucket

BACKEND = "rlaif"  # the name an engine's WeightTransferConfig gives


@dataclass
class RlaifInitInfo(WeightTransferInitInfo):
    nccl: dict | None = None  # vLLM's NCCLWeightTransferInitInfo fields; None: only the CPU transports (no handshake)


@dataclass
class RlaifUpdateInfo(WeightTransferUpdateInfo):
    buckets: list | None = None  # Bucket objects (object store)
    group: dict | None = None  # receive_buckets' arguments (collective transport, gloo)
    nccl: dict | None = None  # vLLM's NCCLWeightTransferUpdateInfo fields


class RlaifWeightTransferEngine(WeightTransferEngine[RlaifInitInfo, RlaifUpdateInfo]):
    init_info_cls = RlaifInitInfo
    update_info_cls = RlaifUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.nccl: WeightTransferEngine | None = None  # vLLM's NCCL engine, once a trainer's group is joined
        self._pending: list[Bucket] = []
        self._nccl_started = False
        self._started = 0.0
        self._received_s = 0.0
        self.stats: dict[str, Any] = {}  # the last finished update's, read by WeightReceiver.weight_transfer_stats

    def init_transfer_engine(self, init_info: RlaifInitInfo) -> None:
        if init_info.nccl is not None:  # UNTESTED (no GPU here)
            from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

            self.shutdown()
            self.nccl = NCCLWeightTransferEngine(self.config, self.vllm_config, self.device, self.model)
            self.nccl.init_transfer_engine(self.nccl.parse_init_info(init_info.nccl))

    def start_weight_update(self) -> None:
        self._pending, self._nccl_started = [], False  # whatever a failed update left
        self._started, self._received_s = time.perf_counter(), 0.0

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # vLLM's base method ends with torch.accelerator.synchronize(), which raises on a machine without an
        # accelerator ("Cannot access accelerator device when none is available"): a CPU engine skips it.
        self.receive_weights(self.parse_update_info(update_info))
        if torch.accelerator.is_available():
            torch.accelerator.synchronize()

    def receive_weights(self, update_info: RlaifUpdateInfo) -> None:
        start = time.perf_counter()
        if update_info.nccl is not None:  # UNTESTED (no GPU here): vLLM's engine loads as it receives
            if self.nccl is None:
                raise RuntimeError("an nccl update before init_weight_transfer_engine joined a trainer's group")
            if not self._nccl_started:
                self.nccl.start_weight_update()
                self._nccl_started = True
            self.nccl.receive_weights(self.nccl.parse_update_info(update_info.nccl))
        elif update_info.group is not None:
            from actors.weight_sync.collective import receive_buckets

            self._pending += receive_buckets(**update_info.group)
        else:
            self._pending += list(update_info.buckets or [])
        self._received_s += time.perf_counter() - start

    def finish_weight_update(self) -> None:
        start = time.perf_counter()
        if self._nccl_started:
            self.nccl.finish_weight_update()
            names, how = None, "nccl"
        else:
            names = [s.name for b in self._pending for s in b.slots]
            weights = (kv for b in self._pending for kv in unpack_bucket(b))
            how = "in place" if loads_in_place(self.model) else "layerwise reload"
            if how == "in place":  # the plain CPU kernel (pools.*.cpu_gemm torch): copied into place
                with torch.no_grad():
                    self.model.load_weights(weights)
            else:
                from vllm.model_executor.model_loader.reload import (finalize_layerwise_reload,
                                                                     initialize_layerwise_reload)

                initialize_layerwise_reload(self.model)
                self.model.load_weights(weights)
                finalize_layerwise_reload(self.model, self.model_config)
        repack_lm_head(self.model)
        self.stats = {"tensors": len(names) if names is not None else None, "load": how,
                      "bytes": sum(b.nbytes for b in self._pending), "receive_seconds": self._received_s,
                      "seconds": time.perf_counter() - start, "update_seconds": time.perf_counter() - self._started}
        self._pending, self._nccl_started = [], False

    def shutdown(self) -> None:
        if self.nccl is not None:
            self.nccl.shutdown()
            self.nccl = None


def repack_lm_head(model: torch.nn.Module) -> None:
    """With tied embeddings the output layer keeps a packed copy of the old embedding on CPU: repack it."""
    for name, module in model.named_modules():
        if name.endswith("lm_head") and hasattr(module, "quant_method"):
            module.quant_method.process_weights_after_loading(module)


def loads_in_place(model: torch.nn.Module) -> bool:
    """Whether new weights can be copied into `model`'s parameters as they are (vLLM's `load_weights` alone): a CPU
    model whose linear layers run on the weights as loaded (pools.*.cpu_gemm torch). Otherwise (oneDNN's packed
    copies, which drop the weights; GPU layers whose loading post-processes them) it takes vLLM's layerwise reload."""
    dispatched = [m for m in model.modules() if hasattr(m, "cpu_linear")]  # set by vLLM's CPU GEMM dispatch
    return bool(dispatched) and all(getattr(m, "weight", None) is not None and m.weight.numel() > 0
                                    for m in dispatched)


def register() -> None:
    """Makes `backend="rlaif"` known to vLLM's factory in this process (vLLM raises on a second registration)."""
    try:
        WeightTransferEngineFactory.register_engine(BACKEND, RlaifWeightTransferEngine)
    except ValueError:
        pass
