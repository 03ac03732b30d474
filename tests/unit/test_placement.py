from pathlib import Path

import pytest

from rlaif.config import EnginePoolConfig, load_config, parse_config
from rlaif.placement import (MIN_TASKS, TASKS_PER_WORKER, Actor, PoolPlan, describe, engine_gpus, task_rows,
                             pack, plan_pools, reference_pool, run_actors, scorer_pool, transient_pools)

GPU_PRESETS = sorted((Path(__file__).resolve().parents[2] / "configs" / "gpu").glob("*.yaml"))


def test_actors_follow_the_config():
    cfg = parse_config({"pools": {"policy": {"replicas": 2, "num_gpus": 1, "tensor_parallel_size": 2},
                                  "judge": {"num_gpus": 1}},
                        "models": {"extra_responders": ["tiny-qwen2-vl-b"]},
                        "train": {"workers": 3, "use_gpu": True, "gpus_per_worker": 0.5}})
    by = {}
    for a in run_actors(cfg):
        by.setdefault(a.component, []).append(a.gpus)
    assert by == {"policy pool": [2, 2], "judge pool": [1], "extra0 pool": [0], "trainer": [0.5, 0.5, 0.5]}
    # The policy judging itself (i-SRT) or an external scorer (MMAIP-V) start no judge engine.
    assert "judge pool" not in {a.component for a in run_actors(parse_config({"models": {"judge": "policy"}}))}
    scored = parse_config({"judge": {"kind": "function"}, "questions": {"source": "file", "file": "qa.parquet"}})
    assert "judge pool" not in {a.component for a in run_actors(scored)}
    # ... unless it must still write the questions.
    assert "judge pool" in {a.component for a in run_actors(parse_config({"judge": {"kind": "function"}}))}
    assert {a.component: a.model for a in run_actors(cfg)} == {
        "policy pool": "tiny-qwen2-vl", "judge pool": "tiny-judge", "extra0 pool": "tiny-qwen2-vl-b",
        "trainer": "tiny-qwen2-vl"}


def test_engine_gpus_are_num_gpus_times_tensor_parallel_size():
    assert engine_gpus(EnginePoolConfig(num_gpus=1, tensor_parallel_size=4)) == 4
    assert engine_gpus(EnginePoolConfig(num_gpus=0.5)) == 0.5
    assert engine_gpus(EnginePoolConfig(tensor_parallel_size=2)) == 0  # a CPU engine


def test_plan_pools_aliases_shared_pools_and_seeds_extra_responders():
    cfg = parse_config({"seed": 7, "models": {"judge": "policy", "extra_responders": ["tiny-qwen2-vl-b", "smollm2"]}})
    plans = plan_pools(cfg)
    assert list(plans) == ["policy", "judge", "captioner", "extra:tiny-qwen2-vl-b", "extra:smollm2"]
    assert plans["judge"] == "policy" and plans["captioner"] == "policy"  # i-SRT; the starting policy captions
    assert [(plans[k].role, plans[k].seed) for k in plans if k.startswith("extra:")] == [("extra0", 107), ("extra1", 207)]
    assert plans["policy"] == PoolPlan("policy", "tiny-qwen2-vl", cfg.pools.policy, True, 7)
    assert plan_pools(parse_config({"judge": {"kind": "function"},
                                    "questions": {"source": "file", "file": "qa.parquet"}}))["judge"] is None
    # A captioner of its own: another model, or the policy's model in a pool of its own.
    own = plan_pools(parse_config({"models": {"captioner": "tiny-qwen2-vl-captioner"}}))["captioner"]
    assert (own.role, own.model, own.video) == ("captioner", "tiny-qwen2-vl-captioner", True)
    sized = parse_config({"pools": {"captioner": {"replicas": 3}}})
    assert plan_pools(sized)["captioner"].cfg.replicas == 3
    assert [a.component for a in run_actors(sized)].count("captioner pool") == 3
    # Captions from a file: no captioner pool even with its model set.
    assert plan_pools(parse_config({"models": {"captioner": "tiny-qwen2-vl-captioner"},
                                    "caption": {"source": "file", "file": "c.parquet"}}))["captioner"] == "policy"


def test_packing_whole_and_shared_gpus():
    engines = [Actor("policy pool", i, 1, 0.4) for i in range(2)]
    trainers = [Actor("trainer", i, 1, 0.6) for i in range(2)]
    plan = pack(engines + trainers, nodes=1, cpus_per_node=8, gpus_per_node=2)
    assert plan.fits and sorted(plan.nodes[0].gpu_slots) == pytest.approx([0.0, 0.0])  # two GPUs, each shared
    tp4 = Actor("judge pool", 0, 1, 4)
    assert not pack([tp4], nodes=2, cpus_per_node=8, gpus_per_node=2).fits  # TP stays within one node
    assert pack([tp4], nodes=1, cpus_per_node=8, gpus_per_node=4).fits
    assert not pack([Actor("trainer", 0, 9, 0)], nodes=1, cpus_per_node=8, gpus_per_node=0).fits


@pytest.mark.parametrize("preset", GPU_PRESETS, ids=lambda p: p.stem)
def test_gpu_presets_fit_one_8_gpu_node_and_not_less(preset):
    cfg = load_config(preset)
    actors = run_actors(cfg)
    assert sum(a.gpus for a in actors) == 8
    assert pack(actors, nodes=1, cpus_per_node=96, gpus_per_node=8).fits
    assert not pack(actors, nodes=1, cpus_per_node=96, gpus_per_node=4).fits
    assert cfg.train.use_gpu and cfg.train.zero_stage == 3


def test_gpu_presets_exist():
    assert len(GPU_PRESETS) >= 2


def test_transient_pools_default_to_the_trainers_resources_and_follow_the_config():
    cpu = parse_config({"train": {"workers": 3, "cpus_per_worker": 2}})
    assert (reference_pool(cpu).min_size, reference_pool(cpu).max_size) == (1, 3)
    assert (reference_pool(cpu).cpus, reference_pool(cpu).gpus) == (2, 0)  # CPU training: no GPU asked for
    gpu = parse_config({"train": {"use_gpu": True, "gpus_per_worker": 0.5}})
    assert reference_pool(gpu).gpus == 0.5
    sized = parse_config({"pools": {"reference": {"actors": 4, "num_cpus": 1, "num_gpus": 0.25}}})
    assert (reference_pool(sized).max_size, reference_pool(sized).cpus, reference_pool(sized).gpus) == (4, 1, 0.25)
    assert scorer_pool(parse_config({"judge": {"kind": "score"}})) is None  # an LLM judges: no scoring actors
    scored = parse_config({"judge": {"kind": "function"}, "pools": {"scorer": {"actors": 6, "num_cpus": 2}}})
    assert (scorer_pool(scored).max_size, scorer_pool(scored).cpus) == (6, 2)
    unbounded = scorer_pool(parse_config({"judge": {"kind": "function"}}))
    assert (unbounded.max_size, unbounded.size) == (None, "1..free CPUs")
    assert [p.name for p in transient_pools(scored)] == ["ingest decoders", "reference log-probs", "function judge"]
    assert parse_config({"ingest": {"decoders": 5}}).ingest.decoders == transient_pools(
        parse_config({"ingest": {"decoders": 5}}))[0].max_size


def test_plan_lists_each_transient_pool_and_whether_it_fits_beside_the_engines():
    cfg = parse_config({"judge": {"kind": "function"}, "ingest": {"decoders": 3},
                        "pools": {"reference": {"actors": 4, "num_cpus": 1}}})
    text = describe(cfg, pack(run_actors(cfg), nodes=1, cpus_per_node=8, gpus_per_node=0))
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["ingest decoders"] == "| ingest decoders | 1..3 | 1 | 0 | ingest, beside the starting engines | yes |"
    assert rows["reference log-probs"].startswith("| reference log-probs | 1..4 | 1 | 0 | pairs stage")
    assert rows["function judge"].startswith("| function judge | 1..free CPUs | 0.5 | 0 |")
    # 4 reference actors of 6 CPUs do not fit beside the engines on an 8-CPU node (the policy engine holds 0.5).
    big = parse_config({"pools": {"reference": {"actors": 4, "num_cpus": 6}}})
    text = describe(big, pack(run_actors(big), nodes=1, cpus_per_node=8, gpus_per_node=0))
    assert "| reference log-probs | 1..4 | 6 | 0 | pairs stage, on the idle trainer's resources | NO |" in text


@pytest.mark.parametrize("n_rows, batch_size, workers, rows", [
    (34, 4, 2, 4),            # a small run: a batch per task, 9 tasks
    (256, 4, 2, 4),           # 64 batches: still one each
    (257, 4, 2, 8),           # 65 batches: two per task, 33 tasks
    (4000, 4, 2, 64),         # 1,000 batches in 63 tasks
    (4000, 16, 2, 64),        # 250 batches in 63 tasks
    (1_000_000, 8, 256, 984),  # 125,000 batches, at most 1,024 tasks: 123 batches each
    (0, 4, 2, 4),             # an empty list: one empty block
])
def test_tasks_are_whole_batches_and_capped(n_rows, batch_size, workers, rows):
    """Ingest's decode tasks and the rollout's engine tasks: whole batches, at most max(64, 4 x workers) tasks."""
    got = task_rows(n_rows, batch_size, workers)
    assert got == rows and got % batch_size == 0
    cap = max(MIN_TASKS, TASKS_PER_WORKER * workers)
    assert -(-n_rows // got) <= cap
    # no bigger than it must be: one batch fewer per task would exceed the cap
    if got > batch_size:
        assert -(-n_rows // (got - batch_size)) > cap
