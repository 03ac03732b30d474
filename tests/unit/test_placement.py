from pathlib import Path

import pytest

from rlaif.config import load_config, parse_config
from rlaif.placement import Actor, pack, run_actors

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
