"""The driver killed mid-stage and mid-training (SIGKILL of `rlaif demo` and every process it started, its local Ray
included: what a lost machine leaves), then `--resume`: the run completes with the row counts of an uninterrupted
run, the interrupted training continues from its last Ray Train checkpoint, and nothing half-written is trusted."""
import os
import subprocess
import sys
import time

import psutil
import pytest

from pipelines.io import read_table
from rlaif.manifest import Manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RLAIF = [sys.executable, "-m", "pipelines.cli", "demo"]
TINY = ["--set", "demo.synthetic_videos=4", "--set", "demo.real_clips=false", "--set", "demo.broken_files=2",
        "--set", "loop.rounds=1", "--set", "rollout.max_tokens=8", "--set", "caption.max_tokens=16",
        "--set", "loop.eval_max_tokens=8", "--set", "questions.max_per_video=2",
        "--set", "train.checkpoint_every=1", "--set", "train.epochs=3"]
TABLES = ["videos.parquet", "quarantine.parquet", "captions.parquet", "prompts.parquet", "round_base/eval_answers.parquet",
          "round_0/rollouts.parquet", "round_0/judgments.parquet", "round_0/pairs.parquet",
          "round_0/eval_answers.parquet"]


def demo(run_dir, log, *extra) -> subprocess.Popen:
    return subprocess.Popen(RLAIF + ["--run", str(run_dir)] + TINY + list(extra), stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)


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


def test_killed_driver_resumes_to_the_same_rows(tmp_path):
    reference = tmp_path / "uninterrupted"
    with open(tmp_path / "uninterrupted.log", "w") as log:
        assert demo(reference, log).wait(timeout=600) == 0, (tmp_path / "uninterrupted.log").read_text()[-3000:]

    run_dir = tmp_path / "interrupted"
    events = []
    with open(tmp_path / "interrupted.log", "w") as log:
        # 1. killed while round 0's rollouts are being generated
        proc = demo(run_dir, log)
        wait_for(proc, lambda: stage_status(run_dir, "round_0/rollout") == "running", "round_0/rollout to start")
        events.append((running(run_dir), kill_tree(proc)))
        # 2. resumed, then killed mid-training once Ray Train has written a checkpoint
        proc = demo(run_dir, log, "--resume")
        # Ray Train writes this once a checkpoint is registered (a checkpoint folder alone may be half-uploaded)
        wait_for(proc, lambda: list((run_dir / "ray_train").rglob("checkpoint_manager_snapshot.json")),
                 "a registered training checkpoint")
        events.append((running(run_dir), kill_tree(proc)))
        assert events[-1][0] == ["round_0/train"]
        # 3. resumed to the end
        start = time.time()
        proc = demo(run_dir, log, "--resume")
        assert proc.wait(timeout=600) == 0, (tmp_path / "interrupted.log").read_text()[-3000:]
        last_resume_s = time.time() - start

    stages = Manifest(run_dir).data["stages"]
    assert all(s["status"] == "done" for s in stages.values())
    assert counts(run_dir) == counts(reference)
    for table in ("round_0/rollouts.parquet", "round_0/judgments.parquet"):  # each answer exactly once
        keys = read_table(run_dir / table, ["prompt_id", "sample_idx"]).to_pylist()
        assert len({(k["prompt_id"], k["sample_idx"]) for k in keys}) == len(keys)
    train = stages["round_0/train"]
    assert train["resumed_from_step"] >= 1 and train["step"] == Manifest(reference).stage("round_0/train")["step"]
    assert not list(run_dir.rglob(".*.partial")), "nothing half-written is left behind"
    for stage, kill_s in events:
        print(f"\ndriver killed during {stage}: SIGKILL of the driver and its Ray ({kill_s:.1f} s), then --resume")
    print(f"final resume: {last_resume_s:.1f} s; training resumed from step {train['resumed_from_step']} of "
          f"{train['step']}; rows: {counts(run_dir)}")
