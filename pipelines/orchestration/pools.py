"""The engine pools of a run: which pools a config needs (policy, judge, captioner, extra responders), and starting them.

A pool that serves in two roles (the policy also judges or captions) is started once; its other names alias it.
"""
from __future__ import annotations

from dataclasses import dataclass

from actors.pool import EnginePool
from rlaif.config import POLICY_AS_JUDGE, EnginePoolConfig, RunConfig
from rlaif.storage import RunPath

POLICY_ENGINES_STATE = "policy_engines.json"  # the policy folder the policy pool serves (EnginePool.hold)


@dataclass
class PoolSpec:
    """One engine pool to start (EnginePool's arguments)."""

    role: str
    model: str
    cfg: EnginePoolConfig
    video: bool
    seed: int
    weights_state: str | None = None
    adapter_rank: int | None = None

    def start(self, wait: bool) -> EnginePool:
        return EnginePool(self.role, self.model, self.cfg, video=self.video, seed=self.seed,
                          weights_state=self.weights_state, adapter_rank=self.adapter_rank, wait=wait)


def pool_specs(cfg: RunConfig, run_dir: RunPath) -> dict[str, PoolSpec | str | None]:
    """policy, judge (the policy pool itself when models.judge is 'policy'; None when no LLM judges), captioner,
    and one pool per extra responder (extra:<model>); a pool shared with another is that pool's name. The policy
    engines record the policy they hold in the run folder, for engines that Ray restarts."""
    specs: dict[str, PoolSpec | str | None] = {
        "policy": PoolSpec("policy", cfg.models.policy, cfg.pools.policy, True, cfg.seed,
                           weights_state=str(run_dir / POLICY_ENGINES_STATE),
                           adapter_rank=cfg.train.lora_r if cfg.loop.sync == "adapter" else None)}
    if cfg.models.judge == POLICY_AS_JUDGE:
        specs["judge"] = "policy"  # i-SRT: the policy judges with its current weights
    elif cfg.needs_judge_engine():
        specs["judge"] = PoolSpec("judge", cfg.models.judge, cfg.pools.judge, False, cfg.seed)
    else:
        specs["judge"] = None
    captioner = cfg.models.captioner or cfg.models.policy
    if cfg.caption.source == "model" and (captioner != cfg.models.policy or cfg.pools.captioner is not None):
        specs["captioner"] = PoolSpec("captioner", captioner, cfg.pools.captioner or cfg.pools.policy, True, cfg.seed)
    else:
        specs["captioner"] = "policy"  # captions come before any training: the starting policy writes them
    for i, model in enumerate(cfg.models.extra_responders):
        specs[f"extra:{model}"] = PoolSpec(f"extra{i}", model, cfg.pools.extra, True, cfg.seed + 100 * (i + 1))
    return specs


def engine_cpus(specs: dict[str, PoolSpec | str | None]) -> float:
    """Ray CPUs the pools of `specs` hold."""
    return sum(s.cfg.num_cpus * s.cfg.replicas for s in specs.values() if isinstance(s, PoolSpec))


def start_pools(cfg: RunConfig, run_dir: RunPath, wait: bool = True) -> dict[str, EnginePool | None]:
    """The pools of `pool_specs`, a shared pool started once. `wait=False`: the engines may still be loading."""
    pools: dict[str, EnginePool | None] = {}
    for name, spec in pool_specs(cfg, run_dir).items():
        pools[name] = pools[spec] if isinstance(spec, str) else spec.start(wait) if spec else None
    return pools
