"""`rlaif plan` and `rlaif run` agree: for every shipped config, the engine pools a run starts (EnginePools, with
EnginePool replaced by a recorder, so no Ray actor starts) are the pool actors `rlaif plan` packs (run_actors): same
roles, replicas, CPUs and GPUs per engine, same models. And EnginePools owns its pools from start to shutdown."""
from __future__ import annotations

from pathlib import Path

import pytest

import pipelines.orchestration.pools as pools_module
from actors.pool import EnginePool, distinct_pools, pool_stats
from pipelines.apps.cli import _config, build_parser
from pipelines.orchestration.pools import EnginePools
from rlaif.config import parse_config
from rlaif.placement import Actor, run_actors

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("**/*.yaml"))


class RecordedPool:
    """Stands in for EnginePool: records what the run would ask Ray for, starts nothing."""

    started: list["RecordedPool"] = []

    def __init__(self, role, model, cfg, *, video, seed=0, weights_state=None, adapter_rank=None,
                 shared_weights=False, wait=True):
        self.role, self.model, self.cfg, self.video, self.seed = role, model, cfg, video, seed
        self.weights_state, self.adapter_rank, self.wait = weights_state, adapter_rank, wait
        self.shared_weights = shared_weights
        self.options = EnginePool.actor_options(cfg)  # the real Ray options of each engine actor
        self.ready_at, self.waited, self.shutdowns = None, 0, 0
        RecordedPool.started.append(self)

    from_plan = classmethod(EnginePool.from_plan.__func__)  # the real plan -> arguments mapping

    def wait_ready(self):
        self.waited += 1
        self.ready_at = 1.0
        return self

    def health(self):
        return [{"served": {"busy_s": 0.0}}] * self.cfg.replicas

    def shutdown(self):
        self.shutdowns += 1


@pytest.fixture
def recorded(monkeypatch):
    RecordedPool.started = []
    monkeypatch.setattr(pools_module, "EnginePool", RecordedPool)
    return RecordedPool.started


def cli_config(path: Path):
    """The config as `rlaif plan PATH` and `rlaif run PATH` read it."""
    return _config(build_parser().parse_args(["plan", str(path)]))


def started_actors(pools: EnginePools) -> list[Actor]:
    return [Actor(f"{p.role} pool", i, p.options["num_cpus"], p.options["num_gpus"], p.model)
            for p in distinct_pools(pools) for i in range(p.cfg.replicas)]


def test_every_shipped_config_is_checked():
    names = {p.relative_to(CONFIG_DIR).as_posix() for p in CONFIGS}
    assert {"demo.yaml", "gpu/qwen25vl7b_judge7b_8gpu.yaml"} <= names and len(CONFIGS) >= 9


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_plan_and_run_start_the_same_pools(path, recorded, tmp_path):
    cfg = cli_config(path)
    planned = [a for a in run_actors(cfg) if a.component != "trainer"]
    pools = EnginePools(cfg, tmp_path / "run")
    assert not recorded and not pools.started  # planning starts nothing
    assert pools.engine_cpus == pytest.approx(sum(a.cpus for a in planned))
    with pools:
        pools.wait_ready()
        assert started_actors(pools) == planned
        assert len(recorded) == len({a.component for a in planned})  # each distinct pool started once
        assert set(pools) >= {"policy", "judge", "captioner"}
        assert {k for k in pools if k.startswith("extra:")} == {f"extra:{m}" for m in cfg.models.extra_responders}
        policy = pools["policy"]
        assert policy.weights_state == str(tmp_path / "run" / "policy_engines.json")
        assert all(p.weights_state is None for p in recorded if p is not policy)
        assert policy.adapter_rank == (cfg.train.lora_r if cfg.loop.sync == "adapter" else None)
        assert policy.shared_weights == (cfg.loop.sync_transport == "shared_memory")
        assert not any(p.shared_weights for p in recorded if p is not policy)
        assert (pools["judge"] is policy) == (cfg.models.judge == "policy")
        assert (pools["judge"] is None) == (cfg.models.judge != "policy" and not cfg.needs_judge_engine())
        seeds = [p.seed for k, p in pools.items() if k.startswith("extra:")]
        assert seeds == [cfg.seed + 100 * (i + 1) for i in range(len(cfg.models.extra_responders))]
    assert all(p.shutdowns == 1 for p in recorded) and not pools


def test_the_policy_serves_as_judge_and_captioner_and_is_shut_down_once(recorded, tmp_path):
    cfg = parse_config({"models": {"judge": "policy"}, "caption": {"source": "model"}})
    with EnginePools(cfg, tmp_path) as pools:
        pools.start()
        assert pools["judge"] is pools["policy"] is pools["captioner"] and len(recorded) == 1
        assert list(pool_stats(pools, now=2.0)) == ["policy"]  # loop.py's reading of the mapping
    assert recorded[0].shutdowns == 1


def test_a_separate_captioner_and_no_judge(recorded, tmp_path):
    cfg = parse_config({"models": {"captioner": "tiny-qwen2-vl-captioner"}, "caption": {"source": "model"},
                        "judge": {"kind": "function"}, "questions": {"source": "file", "file": "qa.parquet"}})
    with EnginePools(cfg, tmp_path) as pools:
        pools.start()
        assert pools["judge"] is None and pools["captioner"].model == "tiny-qwen2-vl-captioner"
        assert [p.role for p in recorded] == ["policy", "captioner"]


@pytest.mark.parametrize("cluster_cpus, early", [(64.0, True), (1.5, False)])
def test_start_early_only_with_a_cpu_beside_the_engines(recorded, tmp_path, monkeypatch, cluster_cpus, early):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": cluster_cpus})
    cfg = parse_config({})  # policy and judge pools, 0.5 CPU each: 1 CPU
    with EnginePools(cfg, tmp_path, start_early=True) as pools:
        assert pools.started == early and bool(pools) == early  # ingest captions as it decodes iff `pools`
        assert all(p.wait is False for p in recorded)  # started before ingest: not waited for
        pools.wait_ready()  # after ingest: started now (waiting), or waited for
        assert pools.started and all(p.waited or p.wait for p in recorded)
    assert all(p.shutdowns == 1 for p in recorded)


def test_a_failed_start_shuts_down_what_started(recorded, tmp_path, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 64.0})

    class Failing(RecordedPool):
        def __init__(self, role, *args, **kwargs):
            if role == "judge":
                raise RuntimeError("no GPU")
            super().__init__(role, *args, **kwargs)

    monkeypatch.setattr(pools_module, "EnginePool", Failing)
    with pytest.raises(RuntimeError, match="no GPU"):
        with EnginePools(parse_config({}), tmp_path, start_early=True):
            pass
    assert [(p.role, p.shutdowns) for p in recorded] == [("policy", 1)]
