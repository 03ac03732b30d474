"""The quiet console (pipelines.orchestration.console): its line formats, and where output goes. The routing runs in
a child process, as the CLI does: its stdout and stderr are the process's own descriptors there (pytest replaces them
with its capture in this process)."""
import logging
import subprocess
import sys
import textwrap

import pytest

from pipelines.orchestration.console import done_line, duration, progress_line, short_error


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (44.6, "45s"), (77, "1m17s"), (3599, "59m59s"),
                                           (7380, "2h03m")])
def test_duration_is_short(seconds, text):
    assert duration(seconds) == text


def test_progress_line_without_a_terminal_has_rows_rate_and_eta():
    line = progress_line("round_0/rollout_judge", 240, 480, 77.4)
    # 240 rows in 77.4 s: 3.1 rows/s, and the other 240 at that rate take 77 s more.
    assert line.split() == ["round_0/rollout_judge", "240/480", "rows", "3.1", "rows/s", "ETA", "1m17s"]


def test_progress_line_before_the_first_row_or_without_a_total_has_no_eta():
    assert progress_line("train", 0, 12, 30.0, "steps").split() == ["train", "0/12", "steps", "30s", "so", "far"]
    # slower than one a second: seconds per step, as tqdm does
    assert progress_line("train", 3, 6, 30.6, "steps").split() == ["train", "3/6", "steps", "10.2", "s/step", "ETA",
                                                                   "31s"]
    assert progress_line("judge/lexical", 90, None, 30.0).split() == ["judge/lexical", "90", "rows", "3.0", "rows/s",
                                                                      "30s", "so", "far"]
    assert progress_line("models and inputs", 0, None, 95.0).split() == ["models", "and", "inputs", "running,",
                                                                         "1m35s", "so", "far"]


def test_done_line_with_and_without_a_declared_total():
    assert done_line("ingest", 34, 34, 18.2, "videos").split() == ["ingest", "34/34", "videos", "done", "in", "18s"]
    assert done_line("questions", None, None, 0.4).split() == ["questions", "done", "in", "0s"]


class WorkerError(Exception):
    """Stands in for ray.exceptions.RayTaskError: the worker's exception is its `cause`."""

    def __init__(self, cause):
        super().__init__("ray.exceptions.RayTaskError(KeyError): ray::MapWorker()\n  File ...\nKeyError: 'x'")
        self.cause = cause


def test_short_error_names_the_innermost_cause_and_its_first_line():
    try:
        try:
            raise KeyError("sampling_mode")
        except KeyError as inner:
            raise RuntimeError("stage failed") from WorkerError(inner)
    except RuntimeError as err:
        assert short_error(err) == "KeyError: 'sampling_mode'"
    assert short_error(ValueError("ingest: 1 of 3 inputs failed\nTraceback ...\n  File x")) == \
        "ValueError: ingest: 1 of 3 inputs failed"
    assert short_error(ValueError("x" * 900)) == "ValueError: " + "x" * 500
    assert short_error(MemoryError()) == "MemoryError"


ROUTING = textwrap.dedent("""
    import logging, os, sys, time
    from pipelines.orchestration import console
    from pipelines.orchestration.console import echo
    from actors.progress import PROGRESS

    console.PLAIN_EVERY_S = 0.5  # a periodic line within the test's second
    PROGRESS.done_rows = lambda key, timeout_s=5.0: 4  # what the workers counted (no Ray here)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # as the CLI does
    with console.session("run") as c:
        print("before the console starts: the terminal")
        c.start(sys.argv[1], sys.argv[1] + "/logs")
        logging.getLogger("vllm").info("Initializing a V1 LLM engine with config: model=tiny")
        logging.getLogger("ray.data").info("Execution plan of Dataset: InputDataBuffer -> MapBatches")
        print("a library's print")
        os.write(2, b"[core_worker.cc] Failed to kill actor (C++ writing to fd 2)\\n")
        os.system("echo a child process")
        with console.stage("round_0/rollout_judge", sys.argv[1]):
            PROGRESS.expect(10)
            time.sleep(1.6)
        console.skipped("caption", sys.argv[1])
        echo("summary: the run's own line")
        try:
            with console.stage("train", sys.argv[1] + "/seed_0/arms/judge"):
                raise KeyError("sampling_mode")
        except KeyError as err:
            assert c.failed(err)
    print("after the console closes: the terminal again")
""")


def test_quiet_console_routes_the_libraries_to_the_log_and_its_own_lines_to_the_terminal(tmp_path):
    out = subprocess.run([sys.executable, "-c", ROUTING, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    log = (tmp_path / "logs" / "driver.log").read_text()
    for noise in ("Initializing a V1 LLM engine", "Execution plan of Dataset", "a library's print",
                  "Failed to kill actor", "a child process"):
        assert noise in log
        assert noise not in out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "before the console starts: the terminal"
    assert lines[1].startswith(f"rlaif run: {tmp_path}; the libraries' logs: {tmp_path}/logs/driver.log")
    # the periodic line (no terminal) while the stage runs, then its done line with the rows the workers counted
    assert any(line.split()[:3] == ["round_0/rollout_judge", "4/10", "rows"] and "rows/s  ETA " in line
               for line in lines)
    assert any(line.split() == ["round_0/rollout_judge", "4/10", "rows", "done", "in", "2s"] for line in lines)
    assert ["caption", "done", "already"] in [line.split() for line in lines]
    assert "summary: the run's own line" in lines
    assert any(line.startswith("seed_0/arms/judge: train") and "FAILED after 0s" in line for line in lines)
    assert lines[-1] == "after the console closes: the terminal again"
    # The error: one block on stderr naming the stage, the exception and the log; the traceback is the log's.
    assert out.stderr.splitlines() == [
        "rlaif: stage seed_0/arms/judge: train failed: KeyError: 'sampling_mode'",
        f"  the traceback and every library's log: {tmp_path}/logs/driver.log"]
    assert "Traceback (most recent call last)" in log and "KeyError: 'sampling_mode'" in log


def test_vllms_thread_warning_is_logged_once_and_other_warnings_always(caplog):
    from actors.vllm_engine import quiet_thread_warnings

    logger = logging.getLogger("vllm.v1.worker.cpu_worker")
    logger.filters.clear()  # a fresh process's logger
    quiet_thread_warnings()
    quiet_thread_warnings()  # a second engine in the same process adds nothing
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(3):  # what vLLM's CPU worker logs twice for every video request
            logger.warning("CPU backend doesn't allow to use `torch.set_num_threads` after the thread binding, skip it.")
            logger.warning("something else")
    messages = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert messages.count("something else") == 3
    assert sum("torch.set_num_threads" in m for m in messages) == 1 and len(logger.filters) == 1
