"""Pools of engine actors and the small callable that lets Ray Data batches reach them.

Engines are long-lived (weights survive across rounds and get updated in place), so they live outside Ray Data;
a Ray Data stage forwards each batch to one engine with `EngineClient` and blocks on the answer. A dead engine is
restarted by Ray (a restarted policy engine comes back with the policy its pool holds, `EnginePool.hold`) and the
client sends the call again, so no row is lost; a batch whose call killed its engine is sent again a bounded number of
times, then split, and a request that alone still kills an engine is answered `engine_crashed` (no text) instead of
being retried forever. A batch an engine cannot hold is split until it fits.
"""
from __future__ import annotations

import logging
import random
import time
import uuid
from typing import Any, Callable

import ray
from ray.exceptions import ActorDiedError, RayActorError

from actors.vllm_engine import EngineActor, EngineOverloaded, call_was_running
from rlaif.config import EnginePoolConfig
from rlaif.placement import PoolPlan, engine_gpus
from rlaif.schemas import ENGINE_CRASHED, REFUSED_FINISH

log = logging.getLogger(__name__)

# How long a call waits, all told, for an engine that is down (restarting after a death the call did not cause)
# before the client gives up with the engine's error: far longer than any engine takes to load.
ENGINE_DOWN_LIMIT_S = 900.0


class Engines(list):
    """A pool's engine actors, carrying the pool's `crash_retries` (EnginePoolConfig) to the clients that call them
    (EngineClient reads it from the list it is given, so that Ray Data callables need no extra argument)."""

    def __init__(self, actors, crash_retries: int = 1):
        super().__init__(actors)
        self.crash_retries = crash_retries


class EnginePool:
    """`weights_state` (policy pools): where `hold` records the policy the engines must serve, so that an engine
    restarted after a crash comes back with it (see VLLMEngine). `adapter_rank`: the engines can hot-load LoRA
    adapters up to this rank (loop.sync adapter). `shared_weights`: the engines keep their parameters in shared
    memory for the trainer to write into (loop.sync_transport shared_memory). `wait=False` returns while the engines
    still load (calls to them queue until they are ready); `wait_ready` then waits."""

    def __init__(self, role: str, model: str, cfg: EnginePoolConfig, *, video: bool, seed: int = 0,
                 weights_state: str | None = None, adapter_rank: int | None = None, shared_weights: bool = False,
                 wait: bool = True):
        self.role = role
        self.cfg = cfg
        self.weights_state = weights_state
        opts = self.actor_options(cfg)
        engine_kwargs: dict = {"tensor_parallel_size": cfg.tensor_parallel_size} if cfg.tensor_parallel_size > 1 else {}
        if cfg.gpu_memory_utilization is not None:
            engine_kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        if cfg.block_size is not None:
            engine_kwargs["block_size"] = cfg.block_size
        if cfg.cpu_gemm != "onednn":
            engine_kwargs["cpu_gemm"] = cfg.cpu_gemm
        if shared_weights:
            engine_kwargs["shared_weights"] = True
        start = time.time()
        self.actors = Engines([
            EngineActor.options(**opts, name=None).remote(
                model, role=role, max_model_len=cfg.max_model_len, seed=seed + i, max_num_seqs=cfg.max_num_seqs,
                video=video, weights_state=weights_state, fault_oom_above=cfg.fault_oom_above,
                fault_crash_marker=cfg.fault_crash_marker, threads=cfg.threads, adapter_rank=adapter_rank,
                **engine_kwargs)
            for i in range(cfg.replicas)
        ], crash_retries=cfg.crash_retries)
        self.started_at = start
        self.model_path: str | None = None
        self.ready_at: float | None = None  # the start of the wall time its engines' busy_s is a share of
        if wait:
            self.wait_ready()

    @staticmethod
    def actor_options(cfg: EnginePoolConfig) -> dict:
        """The Ray resources of each engine actor: the GPUs are the plan's (rlaif.placement.engine_gpus), so that
        `rlaif plan` packs what a run asks Ray for."""
        return {"num_cpus": cfg.num_cpus, "num_gpus": engine_gpus(cfg)}

    @classmethod
    def from_plan(cls, plan: PoolPlan, *, weights_state: str | None = None, wait: bool = True) -> "EnginePool":
        """The pool of one rlaif.placement.plan_pools entry; `weights_state`: the run folder's (policy pools)."""
        return cls(plan.role, plan.model, plan.cfg, video=plan.video, seed=plan.seed, weights_state=weights_state,
                   adapter_rank=plan.adapter_rank, shared_weights=plan.shared_weights, wait=wait)

    def wait_ready(self) -> "EnginePool":
        if self.ready_at is None:
            self.model_path = self.health()[0]["model"]
            self.ready_at = time.time()
            log.info("%s pool: %d engine(s) for %s ready in %.1f s", self.role, len(self.actors), self.model_path,
                     self.ready_at - self.started_at)
        return self

    def map_batches(self, ds: "ray.data.Dataset", client: type, *, batch_size: int | None = None,
                    **client_kwargs) -> "ray.data.Dataset":
        """`ds` sent to this pool's engines a batch at a time: `client` (an EngineClient, built with the engines and
        `client_kwargs`) forwards each batch from a Ray Data task, at most one task per engine at a time, with a
        tenth of a CPU each (the engines do the work). Tasks rather than an actor pool: Ray reuses its idle worker
        processes from stage to stage, where an actor pool starts a process (and its imports) for every stage, a
        fixed cost as long as a small round's generation; each worker builds the client once per stage
        (forward_batch)."""
        kwargs = {"stage": uuid.uuid4().hex, "client": client, "engines": self.actors, "client_kwargs": client_kwargs}
        return ds.map_batches(forward_batch, fn_kwargs=kwargs, batch_size=batch_size or self.cfg.batch_size,
                              batch_format="pyarrow", concurrency=len(self.actors), num_cpus=0.1)

    def generate(self, requests: list[dict], sampling: dict) -> list[list[dict]]:
        """Small direct calls (a handful of requests) without Ray Data, to the first engine (EngineClient.call: split
        when too large, sent again when the engine dies)."""
        return EngineClient(self.actors[:1], crash_retries=self.cfg.crash_retries).call(requests, sampling)

    def hold(self, policy: str, bucket_mb: int = 256) -> int:
        """Make every engine serve the policy saved in folder `policy`: engines holding other weights (a resumed run,
        an engine restarted since the last sync) get it broadcast; the choice is recorded for future restarts.
        Returns how many engines were re-synced."""
        from actors.weight_sync import broadcast_weights, saved_weights
        from rlaif.storage import RunPath

        if self.weights_state:
            RunPath.of(self.weights_state).write_json({"policy": policy})
        held = [h["weights"] for h in ray.get([a.health.remote() for a in self.actors])]
        stale = [a for a, w in zip(self.actors, held) if w != policy]
        if stale:
            log.info("%s pool: %d of %d engine(s) hold %s; loading %s", self.role, len(stale), len(self.actors),
                     sorted(set(held)), policy)
            # The object store (not loop.sync_transport): the driver sends here, on a resume or after an engine
            # restart, off the training path; it needs no port open from the engines' nodes to the driver's.
            broadcast_weights(stale, saved_weights(policy).items(), bucket_mb, label=policy)
        return len(stale)

    def health(self) -> list[dict]:
        """Each engine's VLLMEngine.health(): pid, weights held, served (calls, requests, busy_s)."""
        return ray.get([a.health.remote() for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)


# The client a worker process built for the stage it serves (EnginePool.map_batches): one at a time, so that a
# worker holds nothing of a finished stage once it serves the next.
_CLIENT: dict[str, "EngineClient"] = {}


def forward_batch(batch, stage: str, client: type, engines: list, client_kwargs: dict):
    """One batch of an EnginePool.map_batches stage, in a Ray Data task: the stage's client, built on this worker's
    first batch of the stage, forwards it."""
    forward = _CLIENT.get(stage)
    if forward is None:
        _CLIENT.clear()
        forward = _CLIENT[stage] = client(engines, **client_kwargs)
    return forward(batch)


def distinct_pools(pools: dict[str, EnginePool | None]) -> list[EnginePool]:
    """Each pool once (one pool may serve as several: the policy also judges or captions)."""
    return list({id(p): p for p in pools.values() if p is not None}.values())


def pool_stats(pools: dict[str, EnginePool | None], now: float) -> dict[str, dict]:
    """Each distinct pool once, under the first name it serves as (the other names in `also`): its engines' health,
    when it became ready and `now`; served.busy_s over (until - ready_at) is how busy the pool was."""
    out: dict[str, dict] = {}
    first: dict[int, str] = {}
    for name, pool in pools.items():
        if pool is None:
            continue
        if id(pool) in first:
            out[first[id(pool)]]["also"].append(name)
            continue
        first[id(pool)] = name
        out[name] = {"also": [], "ready_at": pool.ready_at, "until": now, "engines": pool.health()}
    return out


class EngineClient:
    """Base of the Ray Data callables that forward batches to a pool: engines are chosen round-robin from a random
    start, so the forwarders of one stage spread over the pool. `crash_retries`: see `call` (default: the pool's,
    carried by `engines` when it is an EnginePool's `actors`, else 1)."""

    def __init__(self, engines: list, crash_retries: int | None = None):
        self.engines = engines
        self.crash_retries = crash_retries if crash_retries is not None else getattr(engines, "crash_retries", 1)
        self._turn = random.randrange(len(engines))

    def _engine(self):
        engine = self.engines[self._turn % len(self.engines)]
        self._turn += 1
        return engine

    def call(self, requests: list[dict], sampling: dict | list[dict]) -> list[list[dict]]:
        """The engine's samples for each request, in order, each request answered once.

        A batch the engine cannot hold (out of memory) is split in halves, recursively, down to single requests.
        A batch whose call killed its engine (the engine's process died while the call ran; Ray restarts it) is sent
        again whole up to `crash_retries` times, then split in halves, each sent once (one of them holds the cause),
        down to single requests; a request that alone still kills its engine after `crash_retries` retries is
        answered `engine_crashed` (no text; `n` samples) and not sent again. A call that only waited on an engine
        while it died or restarted (another call killed it) is sent again without counting, for up to
        ENGINE_DOWN_LIMIT_S."""
        return self._call(requests, sampling, self.crash_retries)

    def _call(self, requests: list[dict], sampling: dict | list[dict], retries: int) -> list[list[dict]]:
        crashes, waits, down_since = 0, 0, None
        while True:
            engine, call_id = self._engine(), uuid.uuid4().hex
            try:
                return ray.get(engine.generate.remote(requests, sampling, call_id=call_id))
            except EngineOverloaded as err:
                if len(requests) == 1:
                    raise
                log.warning("engine overloaded by %d requests, splitting: %s", len(requests), err)
                return self._halves(requests, sampling, self.crash_retries)
            except RayActorError as err:
                if isinstance(err, ActorDiedError) and (err.actor_init_failed or "ray.kill" in str(err)):
                    raise  # gone for good: it cannot load, or it was shut down
                if not call_was_running(call_id):  # it waited while the engine died or restarted: not its doing
                    down_since = down_since or time.monotonic()
                    if time.monotonic() - down_since > ENGINE_DOWN_LIMIT_S:
                        raise
                    waits += 1
                    time.sleep(min(5.0, 0.25 * 2 ** min(waits, 5)))
                    continue
                crashes, waits, down_since = crashes + 1, 0, None
                if crashes <= retries:
                    log.warning("an engine died running a batch of %d requests (%d of %d retries): sending it again",
                                len(requests), crashes, retries)
                    continue
                if len(requests) > 1:
                    log.warning("a batch of %d requests killed its engine %d times: splitting it", len(requests),
                                crashes)
                    return self._halves(requests, sampling, 0)
                log.error("a request killed its engine %d times: answered %s, not sent again", crashes,
                          ENGINE_CRASHED)
                sample = {"text": "", "n_tokens": 0, "finish_reason": ENGINE_CRASHED, "prompt_tokens": None,
                          "error": f"killed its engine {crashes} times: {str(err)[:300]}"}
                n = (sampling[0] if isinstance(sampling, list) else sampling).get("n", 1)
                return [[dict(sample) for _ in range(n)]]

    def _halves(self, requests: list[dict], sampling: dict | list[dict], retries: int) -> list[list[dict]]:
        """Each half of the batch called on its own; `retries` for a half of more than one request (a single
        request always gets crash_retries)."""
        half = len(requests) // 2
        first, second = (sampling[:half], sampling[half:]) if isinstance(sampling, list) else (sampling, sampling)
        return (self._call(requests[:half], first, retries if half > 1 else self.crash_retries)
                + self._call(requests[half:], second, retries if len(requests) - half > 1 else self.crash_retries))

    def call_parsed(self, requests: list[dict], sampling: dict | list[dict], parse: Callable[[str], Any],
                    ok: Callable[[Any], bool], retries: int,
                    refused: dict[int, str] | None = None) -> tuple[list[Any], list[int]]:
        """One sample per request, parsed; requests whose reply does not parse are asked again, up to `retries`
        times, sampling at temperature >= 0.7 (and the next seed, if seeded) so that a retry can come out
        differently. `sampling` is one dict for all requests or one per request. Returns (parsed values,
        attempts per request); a value that never parsed is the last failed parse, for the caller to count; a
        request the engine refused (its prompt over the context length, or it killed its engine every time: see
        `call`) is None and not asked again, and its finish_reason goes into `refused` (if given) under its index."""
        values: list[Any] = [None] * len(requests)
        attempts = [0] * len(requests)
        todo = list(range(len(requests)))
        samplings = sampling if isinstance(sampling, list) else [sampling] * len(requests)
        for attempt in range(retries + 1):
            params = [retry_sampling(samplings[i], attempt) for i in todo]
            outs = self.call([requests[i] for i in todo], params)
            for i, out in zip(todo, outs):
                reason = out[0].get("finish_reason")
                values[i] = None if reason in REFUSED_FINISH else parse(out[0]["text"])
                attempts[i] = attempt + 1
                if reason in REFUSED_FINISH and refused is not None:
                    refused[i] = reason
            todo = [i for i in todo if values[i] is not None and not ok(values[i])]
            if not todo:
                break
        return values, attempts


def retry_sampling(sampling: dict, attempt: int) -> dict:
    """One sample; a retry samples (temperature >= 0.7) with the next seed, so that it can come out differently."""
    if attempt == 0:
        return {**sampling, "n": 1}
    out = {**sampling, "n": 1, "temperature": max(sampling.get("temperature", 0), 0.7)}
    if "seed" in sampling:
        out["seed"] = sampling["seed"] + attempt
    return out
