"""The driver killed mid-stage and mid-training (SIGKILL of `rlaif run` and every process it started, its local Ray
included: what a lost machine leaves), then `--resume`: the run completes with the rows of an uninterrupted run on
the same inputs (the same counts, and, answers being seeded per request, the same answers and judgments), the
interrupted training continues from its last Ray Train checkpoint to the uninterrupted run's weights (bit for bit),
loss curve and eval answers, and nothing half-written is trusted."""
import os
import subprocess
import sys
import time

import psutil
import pytest

from pipelines.stages.io import read_table
from rlaif.manifest import Manifest
from tests.integration.resume_compare import (compare_histories, curve_text, registered_step, report, same_rows,
                                              weights_diff)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RLAIF = [sys.executable, "-m", "pipelines.apps.cli", "run"]
# The interrupted run stops after round 0 (its rounds after the kills add time, not checks); the tables it shares
# with the two-round uninterrupted run must come out the same.
ONE_ROUND = ["--set", "loop.rounds=1"]
KILL_AFTER_STEP = 3  # the training is killed once this step's checkpoint is registered (of 6 steps)
TABLES = ["videos.parquet", "quarantine.parquet", "captions.parquet", "prompts.parquet", "round_base/eval_answers.parquet",
          "round_0/rollouts.parquet", "round_0/judgments.parquet", "round_0/pairs.parquet", "round_0/eval_answers.parquet"]


def rlaif_run(config, run_dir, log, *extra) -> subprocess.Popen:
    return subprocess.Popen(RLAIF + [str(config), "--run", str(run_dir)] + ONE_ROUND + list(extra), stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> float:
    """SIGKILL the driver and all its descendants (the local Ray it started); returns when they are gone."""
    start = time.time()
    parent = psutil.Process(proc.pid)
    procs = [parent] + parent.children(recursive=True)
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
    proc.wait(timeout=30)
    return time.time() - start


def wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}")
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def stage_status(run_dir, name: str) -> str | None:
    try:
        return Manifest(run_dir).stage(name).get("status")
    except ValueError:  # the manifest is being replaced right now
        return None


def running(run_dir) -> list[str]:
    return [name for name, s in Manifest(run_dir).data["stages"].items() if s["status"] == "running"]


def counts(run_dir) -> dict[str, int]:
    return {t: read_table(run_dir / t).num_rows for t in TABLES}


def test_killed_driver_resumes_to_the_same_rows(tiny_config, tiny_run, tmp_path):
    config, (_, reference, _) = tiny_config, tiny_run  # the uninterrupted run of the same config and inputs
    uninterrupted_s = sum(s.get("seconds", 0) for name, s in Manifest(reference).data["stages"].items()
                          if not name.startswith("round_1"))  # its stages up to round 0's, as in the interrupted run

    run_dir = tmp_path / "interrupted"
    events = []
    with open(tmp_path / "interrupted.log", "w") as log:
        # 1. killed while round 0's rollouts are being generated
        start = time.time()
        proc = rlaif_run(config, run_dir, log)
        wait_for(proc, lambda: stage_status(run_dir, "round_0/rollout_judge") == "running",
                 "round_0/rollout_judge to start")
        events.append((running(run_dir), kill_tree(proc)))
        # 2. resumed, then killed mid-training once Ray Train has registered the checkpoint of step KILL_AFTER_STEP
        # (of 6), so that several steps of the loss curve come back from the checkpoint and several follow
        proc = rlaif_run(config, run_dir, log, "--resume")
        wait_for(proc, lambda: registered_step(run_dir / "ray_train") >= KILL_AFTER_STEP,
                 f"a registered training checkpoint of step {KILL_AFTER_STEP}")
        events.append((running(run_dir), kill_tree(proc)))
        assert events[-1][0] == ["round_0/train"]
        # 3. resumed to the end
        last = time.time()
        proc = rlaif_run(config, run_dir, log, "--resume")
        assert proc.wait(timeout=600) == 0, (tmp_path / "interrupted.log").read_text()[-3000:]
        last_resume_s, interrupted_s = time.time() - last, time.time() - start

    stages = Manifest(run_dir).data["stages"]
    assert all(s["status"] == "done" for s in stages.values())
    assert counts(run_dir) == counts(reference)
    order = [("prompt_id", "ascending"), ("sample_idx", "ascending")]
    for table, columns in (("round_0/rollouts.parquet", ["response"]), ("round_0/judgments.parquet", ["score"])):
        ours, theirs = (read_table(d / table).sort_by(order) for d in (run_dir, reference))
        keys = list(zip(ours.column("prompt_id").to_pylist(), ours.column("sample_idx").to_pylist()))
        assert len(set(keys)) == len(keys)  # each answer exactly once
        for column in columns:  # and the same ones: seeded per request
            assert ours.column(column).to_pylist() == theirs.column(column).to_pylist(), (table, column)
    assert not list(run_dir.rglob(".*.partial")), "nothing half-written is left behind"
    # Resumed by content, not by the trainer's word: round 0 after the kill mid-training is the uninterrupted run's
    # round 0 (the same pairs, so the same training): its weights bit for bit, its loss curve step for step (the
    # steps before the kill from the checkpoint, the rest after the restore), the same rows on every rank at every
    # step, and the same eval answers and judgments.
    train, theirs = stages["round_0/train"], Manifest(reference).stage("round_0/train")
    assert KILL_AFTER_STEP <= train["resumed_from_step"] < train["step"] == theirs["step"], "killed mid-training"
    assert train["restored_bitwise"] and train["restored_tensors"] > 0  # digests of every trainable tensor checked
    assert train["replayed_batches"] > 0 and train["replayed_batches_differ"] == 0  # the same data order
    weights = weights_diff(run_dir / "round_0/policy", reference / "round_0/policy")
    curves = compare_histories(train["history"], theirs["history"])
    rows = {name: same_rows(run_dir / "round_0" / name, reference / "round_0" / name, keys) for name, keys in (
        ("pairs.parquet", ["prompt_id"]), ("eval_answers.parquet", ["prompt_id", "sample_idx"]),
        ("eval_judgments.parquet", ["prompt_id", "sample_idx"]))}
    print(report("driver SIGKILL mid-training, then --resume: round 0 vs the uninterrupted run", weights, curves, rows,
                 curve_text(train["history"], theirs["history"], train["resumed_from_step"])))
    assert all(w["bitwise_equal"] and w["max_abs_diff"] == 0 for w in weights.values()), weights
    assert curves["steps"] and curves["losses_equal"] and curves["batches_equal"], curves
    assert all(r["sorted"] for r in rows.values()), rows
    assert len(train["history"]) == train["step"]  # the whole curve: the checkpoint's steps and the resumed ones
    for stage, kill_s in events:
        print(f"\ndriver killed during {stage}: SIGKILL of the driver and its Ray ({kill_s:.1f} s), then --resume")
    print(f"final resume: {last_resume_s:.1f} s; training resumed from step {train['resumed_from_step']} of "
          f"{train['step']}; interrupted run {interrupted_s:.0f} s in all vs the uninterrupted run's stages {uninterrupted_s:.0f} s; "
          f"rows (both runs): {counts(run_dir)}")
