"""One Ray actor = one vLLM engine, started once and kept for the whole run.

Requests are chat messages (plus frames for a video LMM); the engine applies the model's own chat template, so the
same code drives the captioner, the policy and the judge. The policy's engine also takes new weights in place
(`load_weight_buckets`, or `receive_weight_broadcast` for the collective transport), so a round's rollouts always
come from the latest policy without a restart.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from rlaif.schemas import PROMPT_TOO_LONG, REJECTED

log = logging.getLogger(__name__)


def video_input(frames: np.ndarray, fps: float = 2.0) -> tuple[np.ndarray, dict]:
    """vLLM's video input: frames (T,H,W,3) uint8 plus metadata saying they are already sampled."""
    t = len(frames)
    return frames, {"total_num_frames": t, "fps": fps, "duration": t / fps, "video_backend": "opencv",
                    "frames_indices": list(range(t)), "do_sample_frames": False}


class EngineOverloaded(RuntimeError):
    """The engine ran out of memory on a batch this large; it is still usable. The caller splits the batch."""


class VLLMEngine:
    """A vLLM `LLM` with chat-in, samples-out methods. Used as a Ray actor (`EngineActor`) or in-process.

    `weights_state` (a JSON file in the run folder, written by `EnginePool.hold`) names the policy folder the pool
    should hold: an engine that Ray restarts after its process died loads it before taking requests, so calls
    retried on it are answered by the current policy, not the starting weights. `fault_oom_above` (drills and tests
    only) makes a batch of more requests fail as out of memory would."""

    def __init__(self, model: str, *, role: str = "policy", max_model_len: int = 2048, seed: int = 0,
                 dtype: str = "float32", max_num_seqs: int = 64, video: bool = True, lora_path: str | None = None,
                 weights_state: str | None = None, fault_oom_above: int | None = None, threads: int | None = None,
                 adapter_rank: int | None = None, **engine_kwargs: Any):
        import torch
        from vllm import LLM

        from rlaif.models import resolve_model

        if threads:  # before the engine starts: vLLM's CPU worker forbids changing it afterwards
            torch.set_num_threads(threads)

        self.role = role
        self.fault_oom_above = fault_oom_above
        self.model_path = resolve_model(model)
        kwargs = dict(dtype=dtype, max_model_len=max_model_len, seed=seed, enforce_eager=True,
                      max_num_seqs=max_num_seqs, worker_extension_cls="actors.weight_sync.receive.WeightReceiver")
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0" and engine_kwargs.get("tensor_parallel_size", 1) == 1:
            kwargs["distributed_executor_backend"] = "uni"  # in-process; tensor parallelism needs vLLM's workers
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # A prompt split over scheduler steps (chunked prefill) discards its first sampled token by rewinding
            # the request's generator, which a seeded request's CPU generator cannot do ("CPU Generator does not
            # use offset"): every prompt is prefilled whole instead.
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 4096))
        if video:
            kwargs["limit_mm_per_prompt"] = {"video": 1, "image": 0}
        self.lora_request = None  # the adapter applied to every request (a fixed one, or the latest hot-loaded)
        self.adapters_loaded = 0
        if lora_path:  # base + LoRA adapter (peft folder), applied to every request of this engine
            from vllm.lora.request import LoRARequest

            from rlaif.storage import local_folder

            lora_path = local_folder(lora_path)
            adapter_rank = json.loads((Path(lora_path) / "adapter_config.json").read_text())["r"]
            self.lora_request = LoRARequest("policy", 1, lora_path)
        if adapter_rank:  # vLLM takes ranks of 8, 16, 32, ...: the next one up holds this adapter
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=1 << max(3, (adapter_rank - 1).bit_length()))
        kwargs.update(engine_kwargs)
        start = time.time()
        self.llm = LLM(model=self.model_path, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.weights_version = 0
        # busy_s: seconds in generate and weight loads, so 1 - busy_s / wall is the idle share of the device it holds.
        self.served = {"calls": 0, "requests": 0, "largest_batch": 0, "busy_s": 0.0}  # since a (re)start
        # (start, end) wall times of the latest calls: shows whether two pools worked at the same time (streaming).
        self.recent_calls: collections.deque = collections.deque(maxlen=256)
        self.weights = self.model_path  # label of the weights held: the policy folder they came from
        held = _held_policy(weights_state)
        if held and held != self.weights:
            self._load_folder(held)
        log.info("%s engine for %s ready in %.1f s (weights: %s)", role, self.model_path, time.time() - start,
                 self.weights)

    def _load_folder(self, folder: str) -> None:
        from actors.weight_sync.send import saved_weights
        from actors.weight_sync.buckets import pack_buckets

        self.load_weight_buckets(*pack_buckets(saved_weights(folder).items()), label=folder)

    def _prompt(self, request: dict) -> dict:
        text = self.tokenizer.apply_chat_template(request["messages"], tokenize=False, add_generation_prompt=True)
        prompt: dict = {"prompt": text}
        if request.get("frames") is not None:
            prompt["multi_modal_data"] = {"video": video_input(request["frames"], request.get("fps", 2.0))}
        return prompt

    def generate(self, requests: list[dict], sampling: dict | list[dict]) -> list[list[dict]]:
        """For each request, `sampling['n']` samples: {text, n_tokens, finish_reason, prompt_tokens}.

        `sampling` holds vLLM SamplingParams fields (one dict for all requests, or one per request); `regex`
        constrains the output (structured outputs).
        """
        import torch
        from vllm.exceptions import VLLMValidationError

        samplings = sampling if isinstance(sampling, list) else [sampling] * len(requests)
        if self.fault_oom_above is not None and len(requests) > self.fault_oom_above:
            raise EngineOverloaded(f"injected: a batch of {len(requests)} > {self.fault_oom_above} requests")
        try:
            out = self._generate(requests, samplings)
            self.served = {**self.served, "calls": self.served["calls"] + 1,
                           "requests": self.served["requests"] + len(requests),
                           "largest_batch": max(self.served["largest_batch"], len(requests))}
            return out
        except torch.OutOfMemoryError as err:  # vLLM frees the batch's memory; a smaller batch can go through
            raise EngineOverloaded(f"a batch of {len(requests)} requests: {err}") from None
        except VLLMValidationError as err:  # e.g. a prompt over max_model_len: refuse that one, answer the rest
            if len(requests) > 1:
                return [self.generate([r], [s])[0] for r, s in zip(requests, samplings)]
            too_long = err.parameter == "input_tokens" or any(w in str(err) for w in ("model length", "context length"))
            reason = PROMPT_TOO_LONG if too_long else REJECTED
            log.warning("%s engine refused a request (%s): %s", self.role, reason, err)
            return [[{"text": "", "n_tokens": 0, "finish_reason": reason, "prompt_tokens": None, "error": str(err)}]
                    * samplings[0].get("n", 1)]

    def _generate(self, requests: list[dict], samplings: list[dict]) -> list[list[dict]]:
        start = time.time()
        params = [self._params(s) for s in samplings]
        try:
            outputs = self.llm.generate([self._prompt(r) for r in requests], params, use_tqdm=False,
                                        lora_request=self.lora_request)
        finally:  # a failed batch (out of memory, refused) kept the engine busy too
            self._record_call(start)
        return [[{"text": c.text, "n_tokens": len(c.token_ids), "finish_reason": c.finish_reason,
                  "prompt_tokens": len(out.prompt_token_ids or [])} for c in out.outputs] for out in outputs]

    @staticmethod
    def _params(sampling: dict):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        sampling = dict(sampling)
        regex = sampling.pop("regex", None)
        if regex:
            sampling["structured_outputs"] = StructuredOutputsParams(regex=regex)
        return SamplingParams(**sampling)

    def load_weight_buckets(self, *buckets, label: str | None = None) -> dict:
        """New weights, in place: actors.weight_sync.buckets.Bucket objects, passed as separate arguments so that Ray resolves
        each ObjectRef (one object-store object per bucket, fetched once per node). `label` names them (the
        policy folder they were saved to)."""
        start = time.time()
        stats = self.llm.collective_rpc("load_weight_buckets", args=(list(buckets),))[0]
        return self._weights_replaced(start, stats, label)

    def receive_weight_broadcast(self, host: str, port: int, rank: int, world_size: int, backend: str, index: list,
                                 timeout_s: float, label: str | None = None) -> dict:
        """New weights, in place, by the collective transport (actors.weight_sync.send): joins the sender's group at
        host:port as `rank` and receives the buckets `index` (actors.weight_sync.buckets.BucketIndex) describes. Raises, with the
        weights unchanged, when the group or a broadcast fails within `timeout_s`."""
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

    def _record_call(self, start: float) -> None:
        end = time.time()
        self.served = {**self.served, "busy_s": self.served["busy_s"] + end - start}
        self.recent_calls.append((start, end))

    def health(self) -> dict:
        import torch
        from vllm.platforms import current_platform

        return {"role": self.role, "model": self.model_path, "pid": os.getpid(), "device": current_platform.device_type,
                "weights_version": self.weights_version, "weights": self.weights,
                "adapter": self.lora_request.lora_path if self.lora_request else None,
                "served": self.served, "threads": torch.get_num_threads(),
                "recent_calls": list(self.recent_calls)}


def _held_policy(weights_state: str | None) -> str | None:
    from rlaif.storage import RunPath

    state = RunPath.of(weights_state) if weights_state else None
    return state.read_json()["policy"] if state and state.exists() else None


# The actor form. Restarted by Ray if its process dies; calls in flight are retried on the new instance, so a
# stage that forwards batches to it loses no rows; a restarted policy engine first loads the policy its pool holds
# (weights_state, written by EnginePool.hold).
EngineActor = ray.remote(max_restarts=-1, max_task_retries=-1)(VLLMEngine)
