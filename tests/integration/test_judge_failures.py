"""Judge replies that do not parse are retried, then counted and kept unscored: never a guessed score. Empty, refused,
endless and over-context answers each get their own status and count.

Without structured outputs a random-weight judge almost never writes `Score: N`; with them, every reply parses."""
import pyarrow as pa
import pytest

from actors.pool import EnginePool
from pipelines.stages.base import StageContext
from pipelines.stages.io import read_table, write_table
from pipelines.stages.judge import judge_answers
from rlaif.config import EnginePoolConfig, JudgeConfig, RunConfig
from rlaif.layout import RunLayout
from rlaif.judging import ANSWER_REFUSED, EMPTY_ANSWER, JUDGE_REFUSED, SCORED
from rlaif.schemas import CAPTIONS, PROMPTS, ROLLOUTS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def judge_pool(ray_local):
    pool = EnginePool("judge", "tiny-judge", EnginePoolConfig(max_model_len=1024, batch_size=4), video=False)
    yield pool
    pool.shutdown()


def _ctx(run_dir, pool: EnginePool, cfg: JudgeConfig) -> StageContext:
    return StageContext(RunConfig(judge=cfg), RunLayout(run_dir), {"judge": pool})


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
    info = judge_answers(_ctx(run_dir, judge_pool, cfg), run_dir / "rollouts.parquet", run_dir / "judged.parquet")
    rows = read_table(run_dir / "judged.parquet").to_pylist()
    assert len(rows) == 6 and info["rows"] == 6
    failed = [r for r in rows if not r["parse_ok"]]
    assert info["parse_failures"] == len(failed) > 0
    assert all(r["score"] is None and r["attempts"] == 3 for r in failed)  # first try + 2 retries
    assert all(1 <= r["score"] <= 5 for r in rows if r["parse_ok"])


def test_structured_outputs_always_parse(judge_pool, run_dir):
    cfg = JudgeConfig(structured=True, max_tokens=24, temperature=1.0)
    info = judge_answers(_ctx(run_dir, judge_pool, cfg), run_dir / "rollouts.parquet", run_dir / "judged.parquet")
    rows = read_table(run_dir / "judged.parquet").to_pylist()
    assert info["parse_failures"] == 0 and all(r["parse_ok"] and 1 <= r["score"] <= 5 and r["attempts"] == 1 for r in rows)


def test_empty_refused_endless_and_over_context_answers_are_counted_never_silently_scored(judge_pool, run_dir):
    # One answer of each kind, plus a video whose caption makes the judging prompt longer than the judge's context.
    answers = [("fine", "a red ball", "stop", 3), ("empty", "", "stop", 0), ("refused", "", "prompt_too_long", 0),
               ("endless", "red red red red red red", "length", 6), ("over", "a red ball", "stop", 3)]
    write_table(pa.Table.from_pylist([{"prompt_id": p, "video_id": "long" if p == "over" else "v", "question": "Colour?",
                                       "reference_answer": "red", "split": "train", "source": "file"}
                                      for p, *_ in answers], schema=PROMPTS), run_dir / "prompts.parquet")
    write_table(pa.Table.from_pylist([{"video_id": "v", "caption": "A red ball moves left.", "model": "m",
                                       "prompt_version": "v1"},
                                      {"video_id": "long", "caption": "red ball " * 1500, "model": "m",
                                       "prompt_version": "v1"}], schema=CAPTIONS), run_dir / "captions.parquet")
    write_table(pa.Table.from_pylist([{"prompt_id": p, "sample_idx": 0, "model": "m", "response": text, "n_tokens": n,
                                       "finish_reason": finish, "round": 0} for p, text, finish, n in answers],
                                     schema=ROLLOUTS), run_dir / "rollouts.parquet")
    cfg = JudgeConfig(structured=True, max_tokens=24, temperature=1.0)
    info = judge_answers(_ctx(run_dir, judge_pool, cfg), run_dir / "rollouts.parquet", run_dir / "judged.parquet")
    rows = {r["prompt_id"]: r for r in read_table(run_dir / "judged.parquet").to_pylist()}
    assert {p: r["status"] for p, r in rows.items()} == {
        "fine": SCORED, "empty": EMPTY_ANSWER, "refused": ANSWER_REFUSED, "endless": SCORED, "over": JUDGE_REFUSED}
    assert rows["empty"]["score"] == 1.0 and rows["empty"]["attempts"] == 0  # by rule; the judge was not asked
    assert rows["refused"]["score"] is None and rows["over"]["score"] is None and rows["over"]["attempts"] == 1
    assert info["truncated"] == 1 and info["statuses"] == {SCORED: 2, EMPTY_ANSWER: 1, ANSWER_REFUSED: 1, JUDGE_REFUSED: 1}
    print(f"\njudge stage record: {info}")
