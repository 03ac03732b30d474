"""The engine pools of a run, owned from plan to shutdown by one context manager:

    with EnginePools(cfg, run_dir, start_early=True) as pools:  # planned (rlaif.placement.plan_pools); started now,
        ...ingest...                                            #   without waiting, if the cluster has room; ingest
                                                                #   captions with pools["captioner"] if started
        pools.wait_ready()                                      # started (if not yet), every engine ready
        ...the loop reads pools["policy"], pools.items()...
                                                                # on exit: every distinct pool shut down, once

Which pools a config needs is rlaif.placement.plan_pools, the same function `rlaif plan` packs, so a dry run and a
run cannot disagree. A pool that serves in two roles (the policy also judges or captions) is started once; its
other names alias it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from actors.pool import EnginePool, distinct_pools
from rlaif.config import RunConfig
from rlaif.layout import RunLayout
from rlaif.placement import PoolPlan, plan_pools, started_pools
from rlaif.storage import RunPath

log = logging.getLogger(__name__)


class EnginePools(Mapping):
    """The pools of `plan_pools(cfg)` by name (policy, judge, captioner, extra:<model>; None where a run has no such
    pool), empty (falsy) until started. Planning starts nothing (`plans`, `engine_cpus`); `start` starts each distinct pool
    once, the policy pool with the run folder's policy_engines.json (the policy restarted engines must serve).

    `start_early`: on entering, start the pools without waiting for them when the cluster has a CPU for an ingest
    decoder beside their engines (they load while videos decode); else they start after ingest (`wait_ready`),
    which then has the CPUs to itself."""

    def __init__(self, cfg: RunConfig, run_dir: RunPath | str, start_early: bool = False):
        self.cfg = cfg
        self.layout = RunLayout(run_dir)
        self.plans: dict[str, PoolPlan | str | None] = plan_pools(cfg)
        self.start_early = start_early
        self._pools: dict[str, EnginePool | None] = {}

    # The mapping the stages read: pools["policy"], pools.items(), distinct_pools(pools), pool_stats(pools, now).
    def __getitem__(self, name: str) -> EnginePool | None:
        return self._pools[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pools)

    def __len__(self) -> int:
        return len(self._pools)

    def __repr__(self) -> str:
        return f"EnginePools({'started' if self.started else 'planned'}: {self.plans})"

    @property
    def started(self) -> bool:
        return bool(self._pools)

    @property
    def engine_cpus(self) -> float:
        """Ray CPUs the pools hold (each distinct pool once)."""
        return sum(p.cpus for p in started_pools(self.plans))

    def start_args(self, plan: PoolPlan) -> dict:
        """EnginePool.from_plan's keyword arguments beside the plan: the policy pool records the policy it serves in
        the run folder, for engines that Ray restarts."""
        return {"weights_state": str(self.layout.policy_engines) if plan.role == "policy" else None}

    def start(self, wait: bool = True) -> "EnginePools":
        """Starts each planned pool once (no-op when started). `wait=False`: the engines may still be loading (calls
        to them queue); `wait_ready` then waits. A pool that fails to start leaves the others to `shutdown`."""
        if self.started:
            return self
        for name, plan in self.plans.items():
            if isinstance(plan, str):
                self._pools[name] = self._pools[plan]
            elif plan is None:
                self._pools[name] = None
            else:
                self._pools[name] = EnginePool.from_plan(plan, wait=wait, **self.start_args(plan))
        return self

    def start_if_room(self) -> bool:
        """Starts the pools without waiting when the cluster has >= 1 CPU beside their engines (for a decoder)."""
        import ray

        spare = ray.cluster_resources().get("CPU", 0) - self.engine_cpus
        if spare < 1:
            log.info("engines start after ingest: %.1f CPUs beside them, a decoder needs 1", spare)
            return False
        self.start(wait=False)
        return True

    def wait_ready(self) -> "EnginePools":
        """Started (if not yet) with every engine ready."""
        self.start(wait=True)
        for pool in distinct_pools(self):
            pool.wait_ready()
        return self

    def shutdown(self) -> None:
        """Kills every distinct pool's engines, once; the mapping is empty again."""
        pools, self._pools = distinct_pools(self), {}
        for pool in pools:
            try:
                pool.shutdown()
            except Exception as err:  # noqa: BLE001 - the other pools must still go
                log.warning("%s pool: shutdown failed: %s", pool.role, err)

    def __enter__(self) -> "EnginePools":
        if self.start_early:
            try:
                self.start_if_room()
            except BaseException:
                self.shutdown()  # the pools started before the failure
                raise
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
