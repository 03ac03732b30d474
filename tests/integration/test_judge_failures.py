"""Judge replies that do not parse are retried, then counted and kept unscored: never a guessed score.

Without structured outputs a random-weight judge almost never writes `Score: N`; with them, every reply parses."""
import pyarrow as pa
import pytest

from actors.pool import EnginePool
from pipelines.io import read_table, write_table
from pipelines.judge import judge_answers
from rlaif.config import EnginePoolConfig, JudgeConfig
from rlaif.schemas import CAPTIONS, PROMPTS, ROLLOUTS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def judge_pool(ray_local):
    pool = EnginePool("judge", "tiny-judge", EnginePoolConfig(max_model_len=1024, batch_size=4), video=False)
    yield pool
    pool.shutdown()


@pytest.fixture()
def run_dir(tmp_path):
    write_table(pa.Table.from_pylist([{"prompt_id": f"p{i}", "video_id": "v", "question": "What colour is the ball?",
                                       "reference_answer": "red", "split": "train", "source": "file"} for i in range(3)],
                                     schema=PROMPTS), tmp_path / "prompts.parquet")
    write_table(pa.Table.from_pylist([{"video_id": "v", "caption": "A red ball moves left.", "model": "m",
                                       "prompt_version": "v1"}], schema=CAPTIONS), tmp_path / "captions.parquet")
    write_table(pa.Table.from_pylist([{"prompt_id": f"p{i}", "sample_idx": k, "model": "m", "response": f"answer {k}",
                                       "n_tokens": 2, "finish_reason": "stop", "round": 0}
                                      for i in range(3) for k in range(2)], schema=ROLLOUTS), tmp_path / "rollouts.parquet")
    return tmp_path


def test_unparsable_replies_are_retried_counted_and_left_unscored(judge_pool, run_dir):
    cfg = JudgeConfig(structured=False, retries=2, max_tokens=12)
    info = judge_answers(run_dir, judge_pool, cfg, run_dir / "rollouts.parquet", run_dir / "judged.parquet")
    rows = read_table(run_dir / "judged.parquet").to_pylist()
    assert len(rows) == 6 and info["rows"] == 6
    failed = [r for r in rows if not r["parse_ok"]]
    assert info["parse_failures"] == len(failed) > 0
    assert all(r["score"] is None and r["attempts"] == 3 for r in failed)  # first try + 2 retries
    assert all(1 <= r["score"] <= 5 for r in rows if r["parse_ok"])


def test_structured_outputs_always_parse(judge_pool, run_dir):
    cfg = JudgeConfig(structured=True, max_tokens=24, temperature=1.0)
    info = judge_answers(run_dir, judge_pool, cfg, run_dir / "rollouts.parquet", run_dir / "judged.parquet")
    rows = read_table(run_dir / "judged.parquet").to_pylist()
    assert info["parse_failures"] == 0 and all(r["parse_ok"] and 1 <= r["score"] <= 5 and r["attempts"] == 1 for r in rows)
