"""The vLLM-worker side of weight sync: `WeightReceiver`, the `worker_extension_cls` of every policy engine (set by
actors.vllm_engine.VLLMEngine).

The weights themselves arrive through vLLM's weight-transfer API (`start_weight_update` / `update_weights` /
`finish_weight_update` on the worker), handled by actors.weight_sync.transfer_engine.RlaifWeightTransferEngine. This
module only makes sure every worker process knows that engine before it loads the model: vLLM imports a worker's
extension class first, so importing this module registers it in vLLM's factory (a worker in its own process, with
tensor parallelism, has not imported anything else of rlaif's).
"""
from __future__ import annotations

from actors.weight_sync.transfer_engine import register

register()


class WeightReceiver:
    def weight_transfer_stats(self) -> dict:
        """The last finished update's stats (tensors, bytes, receive and load seconds): vLLM's API returns none."""
        return dict(self.weight_transfer_engine.stats)
