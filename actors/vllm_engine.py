"""One Ray actor = one vLLM engine, started once and kept for the whole run.

Requests are chat messages (plus frames for a video LMM); the engine applies the model's own chat template, so the
same code drives the captioner, the policy and the judge. The policy's engine also takes new weights in place
(the methods it inherits from actors.weight_sync.engine.WeightSyncEngine: `load_weight_buckets`,
`receive_weight_broadcast`, `load_adapter`), so a round's rollouts always come from the latest policy without a
restart.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from actors.weight_sync.engine import WeightSyncEngine
from rlaif.schemas import PROMPT_TOO_LONG, REJECTED

log = logging.getLogger(__name__)


def video_input(frames: np.ndarray, fps: float = 2.0) -> tuple[np.ndarray, dict]:
    """vLLM's video input: frames (T,H,W,3) uint8 plus metadata saying they are already sampled."""
    t = len(frames)
    return frames, {"total_num_frames": t, "fps": fps, "duration": t / fps, "video_backend": "opencv",
                    "frames_indices": list(range(t)), "do_sample_frames": False}


class EngineOverloaded(RuntimeError):
    """The engine ran out of memory on a batch this large; it is still usable. The caller splits the batch."""


# Where an engine marks the generate call it is running: Ray's internal key-value store, kept by the GCS, so a mark
# outlives the engine's process. A call whose mark is still there after its engine died was running when the engine
# died (it killed the engine, or was on it when something else did); a call that only waited in the engine's queue,
# or was sent while the engine restarted, has none. actors.pool.EngineClient counts only the first kind against the
# batch (EnginePoolConfig.crash_retries).
CALL_MARKS = "rlaif-engine-calls"


def _kv():
    from ray.experimental import internal_kv

    return internal_kv if internal_kv._internal_kv_initialized() else None


def mark_call(call_id: str, running: bool) -> None:
    """Mark (running) or unmark the call `call_id` (a no-op outside Ray)."""
    if (kv := _kv()) is None:
        return
    if running:
        kv._internal_kv_put(call_id, b"1", namespace=CALL_MARKS)
    else:
        kv._internal_kv_del(call_id, namespace=CALL_MARKS)


def call_was_running(call_id: str) -> bool:
    """Whether the call `call_id` was running on its engine when the engine died (its mark is still there); the mark
    is removed."""
    if (kv := _kv()) is None or not kv._internal_kv_exists(call_id, namespace=CALL_MARKS):
        return False
    kv._internal_kv_del(call_id, namespace=CALL_MARKS)
    return True


class FirstTimeOnly(logging.Filter):
    """Lets a log message that starts with `prefix` through once, then drops it."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix, self.seen = prefix, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        seen, self.seen = self.seen, True
        return not seen


def quiet_thread_warnings() -> None:
    """vLLM's CPU worker replaces torch.set_num_threads with a function that logs a warning on every call, and
    vLLM's renderer calls it twice for every video request: two log lines a request, which were most of a run's
    logs (1.7 of 3.8 MB at 4,000 prompts) and grew with every prompt. The first is kept."""
    logger = logging.getLogger("vllm.v1.worker.cpu_worker")
    if not any(isinstance(f, FirstTimeOnly) for f in logger.filters):  # one per process, however many engines
        logger.addFilter(FirstTimeOnly("CPU backend doesn't allow to use `torch.set_num_threads`"))


def plain_cpu_gemm() -> None:
    """vLLM's CPU linear layers run on torch.nn.functional.linear with the weights as loaded, instead of oneDNN's
    (or AMX's) repacked copies (pools.*.cpu_gemm torch): slower generation, but a weight sync becomes an in-place
    copy (actors.weight_sync.transfer_engine). vLLM has no setting for it; its dispatcher
    (vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm) falls back to torch when these two checks say
    the packed kernels are missing. In-process engines only (this process's modules); the engine checks afterwards
    that the weights were kept."""
    import vllm._custom_ops as ops
    import vllm.model_executor.layers.utils as layer_utils

    ops._supports_onednn = False
    layer_utils.check_cpu_sgl_kernel = lambda *args: False


def _keeps_linear_weights(worker) -> bool:
    """Run in the vLLM worker: whether every CPU-dispatched linear layer kept its weights (the plain kernel)."""
    from actors.weight_sync.transfer_engine import loads_in_place

    return loads_in_place(worker.model_runner.model)


class VLLMEngine(WeightSyncEngine):
    """A vLLM `LLM` with chat-in, samples-out methods. Used as a Ray actor (`EngineActor`) or in-process. Weight sync's
    receive methods (new weights or a LoRA adapter, in place) come from WeightSyncEngine (actors/weight_sync/).

    `weights_state` (a JSON file in the run folder, written by `EnginePool.hold`) names the policy folder the pool
    should hold: an engine that Ray restarts after its process died loads it before taking requests, so calls
    retried on it are answered by the current policy, not the starting weights. `fault_oom_above` (drills and tests
    only) makes a batch of more requests fail as out of memory would; `fault_crash_marker` (drills and tests only)
    makes the engine's process kill itself (SIGKILL) on a request whose messages contain it."""

    def __init__(self, model: str, *, role: str = "policy", max_model_len: int = 2048, seed: int = 0,
                 dtype: str = "float32", max_num_seqs: int = 64, video: bool = True, lora_path: str | None = None,
                 weights_state: str | None = None, fault_oom_above: int | None = None,
                 fault_crash_marker: str | None = None, threads: int | None = None,
                 adapter_rank: int | None = None, cpu_gemm: str = "onednn", shared_weights: bool = False,
                 **engine_kwargs: Any):
        import torch
        from vllm import LLM

        from rlaif.models import resolve_model

        if threads:  # before the engine starts: vLLM's CPU worker forbids changing it afterwards
            torch.set_num_threads(threads)
        quiet_thread_warnings()

        self.role = role
        self.fault_oom_above = fault_oom_above
        self.fault_crash_marker = fault_crash_marker
        self.model_path = resolve_model(model)
        # New weights arrive through vLLM's weight-transfer API, received by rlaif's transfer engine (registered in
        # vLLM's factory when the worker imports its extension class): see actors/weight_sync/README.md.
        kwargs = dict(dtype=dtype, max_model_len=max_model_len, seed=seed, enforce_eager=True,
                      max_num_seqs=max_num_seqs, worker_extension_cls="actors.weight_sync.receive.WeightReceiver",
                      weight_transfer_config={"backend": "rlaif"})
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
        if cpu_gemm == "torch" and current_platform.is_cpu():
            if kwargs.get("distributed_executor_backend") != "uni":
                raise ValueError("pools.*.cpu_gemm torch needs an in-process CPU engine (VLLM_ENABLE_V1_MULTIPROCESSING=0, "
                                 "tensor_parallel_size 1): vLLM's own worker processes would not see the choice")
            plain_cpu_gemm()
        start = time.time()
        self.llm = LLM(model=self.model_path, **kwargs)
        if cpu_gemm == "torch" and current_platform.is_cpu() and not self.llm.collective_rpc(_keeps_linear_weights)[0]:
            raise RuntimeError("pools.*.cpu_gemm torch did not take: this vLLM version repacked the linear layers' "
                               "weights anyway (see actors.vllm_engine.plain_cpu_gemm)")
        self.writing: str | None = None  # the label of weights a sender is writing in place (shared memory)
        self.shared_weights = shared_weights
        if shared_weights:  # loop.sync_transport shared_memory: see actors/weight_sync/shared_memory.py
            if cpu_gemm != "torch" or not current_platform.is_cpu():
                raise ValueError("shared weights (loop.sync_transport shared_memory) need a CPU engine on the plain "
                                 "kernel (pools.policy.cpu_gemm torch): oneDNN keeps its own packed copies")
            from actors.weight_sync.shared_memory import share_worker_parameters

            shared = self.llm.collective_rpc(share_worker_parameters, args=(self.model_path,))[0]
            log.info("%s engine: parameters in shared memory (%.0f MB) in %.1f s%s", role, shared["bytes"] / 1e6,
                     shared["seconds"], f"; a sync cannot write them in place: {shared['refusal']}"
                     if shared["refusal"] else "")
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

    def _prompt(self, request: dict) -> dict:
        text = self.tokenizer.apply_chat_template(request["messages"], tokenize=False, add_generation_prompt=True)
        prompt: dict = {"prompt": text}
        if request.get("frames") is not None:
            prompt["multi_modal_data"] = {"video": video_input(request["frames"], request.get("fps", 2.0))}
        return prompt

    # Ray does not retry a generate call whose engine died: actors.pool.EngineClient does, a bounded number of times
    # (EnginePoolConfig.crash_retries), so that a request that kills every engine it reaches is not retried forever.
    @ray.method(max_task_retries=0)
    def generate(self, requests: list[dict], sampling: dict | list[dict], call_id: str | None = None
                 ) -> list[list[dict]]:
        """For each request, `sampling['n']` samples: {text, n_tokens, finish_reason, prompt_tokens}.

        `sampling` holds vLLM SamplingParams fields (one dict for all requests, or one per request); `regex`
        constrains the output (structured outputs). `call_id`: the call is marked as running while it runs (see
        CALL_MARKS), so that a client can tell, if this process dies, that it died under this call.
        """
        if call_id is None:
            return self._generate_batch(requests, sampling)
        mark_call(call_id, running=True)
        try:
            return self._generate_batch(requests, sampling)
        finally:
            mark_call(call_id, running=False)

    def _generate_batch(self, requests: list[dict], sampling: dict | list[dict]) -> list[list[dict]]:
        import torch
        from vllm.exceptions import VLLMValidationError

        samplings = sampling if isinstance(sampling, list) else [sampling] * len(requests)
        if self.fault_crash_marker and any(self.fault_crash_marker in str(r["messages"]) for r in requests):
            log.error("%s engine (pid %d): a request carries the crash marker %r: killing this process (injected)",
                      self.role, os.getpid(), self.fault_crash_marker)
            os.kill(os.getpid(), signal.SIGKILL)
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
                return [self._generate_batch([r], [s])[0] for r, s in zip(requests, samplings)]
            too_long = err.parameter == "input_tokens" or any(w in str(err) for w in ("model length", "context length"))
            reason = PROMPT_TOO_LONG if too_long else REJECTED
            log.warning("%s engine refused a request (%s): %s", self.role, reason, err)
            return [[{"text": "", "n_tokens": 0, "finish_reason": reason, "prompt_tokens": None, "error": str(err)}]
                    * samplings[0].get("n", 1)]

    def _generate(self, requests: list[dict], samplings: list[dict]) -> list[list[dict]]:
        self.check_weights_whole()
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

    # Request by request, step by step (the serving endpoint's loop, serve/engine_loop.py): a request joins the running
    # engine between two steps, and each step returns what it generated, so answers can stream token by token and
    # requests arriving mid-generation join the batch at once. One thread at a time may call these; `generate` must
    # not run meanwhile (its own loop would take these requests' outputs).
    def add_request(self, request_id: str, request: dict, sampling: dict, stream: bool = False) -> None:
        """Queue a request (vLLM SamplingParams fields in `sampling`); raises vLLM's error for one it refuses.
        `stream`: `step` returns its new text at every step, else its whole answer once, when it is done."""
        from vllm.sampling_params import RequestOutputKind

        self.check_weights_whole()
        params = self._params(sampling)
        params.output_kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        self.llm.llm_engine.add_request(request_id, self._prompt(request), params, lora_request=self.lora_request)
        self.served = {**self.served, "requests": self.served["requests"] + 1}

    def step(self) -> list[dict]:
        """One engine step: for each request with news, {id, finished, prompt_tokens, samples: [{index, text,
        n_tokens, finish_reason}]} (a streamed request's text and tokens since the previous step)."""
        start = time.time()
        try:
            outputs = self.llm.llm_engine.step()
        finally:
            self.served = {**self.served, "busy_s": self.served["busy_s"] + time.time() - start}
        return [{"id": out.request_id, "finished": out.finished, "prompt_tokens": len(out.prompt_token_ids or []),
                 "samples": [{"index": c.index, "text": c.text, "n_tokens": len(c.token_ids),
                              "finish_reason": c.finish_reason} for c in out.outputs]} for out in outputs]

    def abort(self, request_ids: list[str]) -> None:
        """Drop requests (ids unknown to the engine, e.g. already finished, are ignored)."""
        self.llm.llm_engine.abort_request(list(request_ids))

    def has_unfinished(self) -> bool:
        return self.llm.llm_engine.has_unfinished_requests()

    def _record_call(self, start: float) -> None:
        end = time.time()
        self.served = {**self.served, "busy_s": self.served["busy_s"] + end - start}
        self.recent_calls.append((start, end))

    def health(self) -> dict:
        import torch
        from vllm.platforms import current_platform

        return {"role": self.role, "model": self.model_path, "pid": os.getpid(), "device": current_platform.device_type,
                "weights_version": self.weights_version, "weights": self.weights,
                "workers": self.llm.llm_engine.vllm_config.parallel_config.world_size,  # vLLM workers (TP x PP)
                "adapter": self.lora_request.lora_path if self.lora_request else None,
                "served": self.served, "threads": torch.get_num_threads(),
                "recent_calls": list(self.recent_calls)}


def _held_policy(weights_state: str | None) -> str | None:
    from rlaif.storage import RunPath

    state = RunPath.of(weights_state) if weights_state else None
    return state.read_json()["policy"] if state and state.exists() else None


# The actor form. Restarted by Ray whenever its process dies; a restarted policy engine first loads the policy its
# pool holds (weights_state, written by EnginePool.hold). Calls in flight when it died are retried a bounded number of
# times: `generate` by actors.pool.EngineClient (crash_retries, then the batch is split and a request that alone still
# kills the engine is answered engine_crashed), the other methods (health, weight loads: idempotent) by Ray, up to
# ENGINE_TASK_RETRIES times, after which the caller gets Ray's RayActorError instead of a retry forever.
ENGINE_TASK_RETRIES = 3
EngineActor = ray.remote(max_restarts=-1, max_task_retries=ENGINE_TASK_RETRIES)(VLLMEngine)
