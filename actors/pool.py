"""Pools of engine actors and the small callable that lets Ray Data batches reach them.

Engines are long-lived (weights survive across rounds and get updated in place), so they live outside Ray Data;
a Ray Data stage forwards each batch to one engine with `EngineClient` and blocks on the answer. A dead engine is
restarted by Ray and the call retried (max_restarts / max_task_retries), so no row is lost.
"""
from __future__ import annotations

import logging
import random
import time
from typing import Any, Callable

import ray

from actors.vllm_engine import EngineActor
from rlaif.config import EnginePoolConfig

log = logging.getLogger(__name__)


class EnginePool:
    def __init__(self, role: str, model: str, cfg: EnginePoolConfig, *, video: bool, seed: int = 0):
        self.role = role
        self.cfg = cfg
        opts = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus * cfg.tensor_parallel_size if cfg.num_gpus else 0}
        engine_kwargs: dict = {"tensor_parallel_size": cfg.tensor_parallel_size} if cfg.tensor_parallel_size > 1 else {}
        if cfg.gpu_memory_utilization is not None:
            engine_kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        start = time.time()
        self.actors = [
            EngineActor.options(**opts, name=None).remote(
                model, role=role, max_model_len=cfg.max_model_len, seed=seed + i, max_num_seqs=cfg.max_num_seqs,
                video=video, **engine_kwargs)
            for i in range(cfg.replicas)
        ]
        health = ray.get([a.health.remote() for a in self.actors])
        self.model_path = health[0]["model"]
        log.info("%s pool: %d engine(s) for %s ready in %.1f s", role, len(self.actors), self.model_path, time.time() - start)

    def generate(self, requests: list[dict], sampling: dict) -> list[list[dict]]:
        """Small direct calls (a handful of requests) without Ray Data."""
        return ray.get(self.actors[0].generate.remote(requests, sampling))

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)


class EngineClient:
    """Base of the Ray Data callables that forward batches to a pool: engines are chosen round-robin from a random
    start, so the forwarders of one stage spread over the pool."""

    def __init__(self, engines: list):
        self.engines = engines
        self._turn = random.randrange(len(engines))

    def call(self, requests: list[dict], sampling: dict) -> list[list[dict]]:
        engine = self.engines[self._turn % len(self.engines)]
        self._turn += 1
        return ray.get(engine.generate.remote(requests, sampling))

    def call_parsed(self, requests: list[dict], sampling: dict, parse: Callable[[str], Any],
                    ok: Callable[[Any], bool], retries: int) -> tuple[list[Any], list[int]]:
        """One sample per request, parsed; requests whose reply does not parse are asked again, up to `retries`
        times, sampling at temperature >= 0.7 so that a retry can come out differently. Returns (parsed values,
        attempts per request); a value that never parsed is the last failed parse, for the caller to count."""
        values: list[Any] = [None] * len(requests)
        attempts = [0] * len(requests)
        todo = list(range(len(requests)))
        for attempt in range(retries + 1):
            params = sampling if attempt == 0 else {**sampling, "temperature": max(sampling.get("temperature", 0), 0.7)}
            outs = self.call([requests[i] for i in todo], {**params, "n": 1})
            for i, out in zip(todo, outs):
                values[i] = parse(out[0]["text"])
                attempts[i] = attempt + 1
            todo = [i for i in todo if not ok(values[i])]
            if not todo:
                break
        return values, attempts
