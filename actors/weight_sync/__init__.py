"""Weight sync: new policy weights from the trainer to every vLLM policy engine, in place. Start at README.md.

The public names are imported on first use (PEP 562), so that importing the engine side (actors.vllm_engine imports
actors.weight_sync.engine) or the vLLM worker extension does not load torch and everything else with this package.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

# name -> the module of this folder that defines it
_PUBLIC = {
    "broadcast_weights": "send",  # send side: the transport choice and its fallback
    "saved_weights": "saved",
    "hot_load_adapter": "adapter",  # LoRA mode
    "Bucket": "buckets",  # the bucket format
    "BucketIndex": "buckets",
    "pack_buckets": "buckets",
    "tensor_buckets": "buckets",
    "unpack_bucket": "buckets",
    "WeightSyncEngine": "engine",  # engine side (a mixin of VLLMEngine)
    "WeightReceiver": "receive",  # worker side (vLLM's worker_extension_cls)
}
__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from actors.weight_sync.adapter import hot_load_adapter
    from actors.weight_sync.buckets import Bucket, BucketIndex, pack_buckets, tensor_buckets, unpack_bucket
    from actors.weight_sync.engine import WeightSyncEngine
    from actors.weight_sync.receive import WeightReceiver
    from actors.weight_sync.saved import saved_weights
    from actors.weight_sync.send import broadcast_weights


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_PUBLIC[name]}"), name)
