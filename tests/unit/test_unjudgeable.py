"""What the judge stage does with answers it cannot or should not score, and how the eval counts them."""
import pytest

from pipelines.stages.judge import judge_some, judgment_row
from rlaif.config import JudgeConfig
from rlaif.judging import (ANSWER_REFUSED, EMPTY_ANSWER, EMPTY_ANSWER_SCORE, ENGINE_CRASHED, JUDGE_CRASHED,
                           JUDGE_REFUSED, PARSE_FAILED, SCORED, parse_judgment, unjudgeable)
from rlaif.metrics import eval_metrics


def answer(text, finish="stop", n_tokens=3):
    return {"prompt_id": "p", "sample_idx": 0, "model": "m", "response": text, "n_tokens": n_tokens,
            "finish_reason": finish, "round": 0}


def test_unjudgeable_answers():
    assert unjudgeable("", "stop") == EMPTY_ANSWER and unjudgeable("  \n", "length") == EMPTY_ANSWER
    assert unjudgeable("", "prompt_too_long") == ANSWER_REFUSED and unjudgeable("x", "rejected") == ANSWER_REFUSED
    assert unjudgeable("a red ball", "length") is None and unjudgeable("a red ball", "stop") is None
    assert unjudgeable("", "engine_crashed") == ENGINE_CRASHED  # the prompt killed the answering engine every time


def test_only_judgeable_answers_reach_the_judge_and_every_row_gets_a_status():
    rows = [answer("a red ball"), answer(""), answer("", "prompt_too_long"), answer("no idea"), answer("too long")]
    asked = []

    def judge(batch):
        asked.extend(r["response"] for r in batch)
        # the judge parses one, fails to parse one, and refuses one (its judging prompt was over its context)
        return [parse_judgment("Score: 4"), parse_judgment("hmm"), None], [1, 3, 1]

    out = judge_some(rows, judge)
    assert asked == ["a red ball", "no idea", "too long"]
    assert [s for _, _, s in out] == [SCORED, EMPTY_ANSWER, ANSWER_REFUSED, PARSE_FAILED, JUDGE_REFUSED]
    cfg = JudgeConfig()
    judged = [judgment_row(r, v, a, "judge", cfg, s) for r, (v, a, s) in zip(rows, out)]
    assert [j["score"] for j in judged] == [4.0, EMPTY_ANSWER_SCORE, None, None, None]
    assert [j["parse_ok"] for j in judged] == [True, False, False, False, False]

    m = eval_metrics(judged)
    assert m["answers"] == 5 and m["accuracy"] == pytest.approx(0.5)  # the empty answer counts as wrong
    assert m["mean_score"] == pytest.approx(2.5) and m["parse_failure_rate"] == pytest.approx(0.2)
    assert m["unscored_rate"] == pytest.approx(0.6)


def test_nothing_to_ask_calls_no_judge():
    def judge(batch):
        raise AssertionError("the judge must not be called")

    assert [s for _, _, s in judge_some([answer("")], judge)] == [EMPTY_ANSWER]


def test_an_answer_repeated_for_a_question_is_judged_once():
    rows = [answer("red"), {**answer("red"), "sample_idx": 1}, answer("blue"), {**answer("red"), "prompt_id": "q"}]
    asked = []

    def judge(batch):
        asked.extend((r["prompt_id"], r["response"]) for r in batch)
        return [parse_judgment(f"Score: {n}") for n in (5, 1, 4)][:len(batch)], [1] * len(batch)

    out = judge_some(rows, judge)
    assert asked == [("p", "red"), ("p", "blue"), ("q", "red")]
    assert [v.score for v, _, _ in out] == [5, 5, 1, 4] and [s for _, _, s in out] == [SCORED] * 4


def test_a_prompt_that_killed_an_engine_is_recorded_never_scored_never_paired():
    from rlaif.pairs import select_pairs
    import pyarrow as pa

    rows = [answer("a red ball"), {**answer("", "engine_crashed"), "sample_idx": 1},
            {**answer("blue"), "sample_idx": 2}]

    def judge(batch):
        # the judging prompt of "blue" killed the judge engine every time (EngineClient gave up on it)
        return [parse_judgment("Score: 5"), JUDGE_CRASHED][:len(batch)], [1, 1]

    out = judge_some(rows, judge)
    assert [s for _, _, s in out] == [SCORED, ENGINE_CRASHED, JUDGE_CRASHED]
    judged = [judgment_row(r, v, a, "judge", JudgeConfig(), s) for r, (v, a, s) in zip(rows, out)]
    assert [j["score"] for j in judged] == [5.0, None, None] and [j["status"] for j in judged] == [
        SCORED, ENGINE_CRASHED, JUDGE_CRASHED]
    assert select_pairs(pa.Table.from_pylist(judged)).num_rows == 0  # one scored answer: nothing to pair against
    m = eval_metrics(judged)
    assert m["answers"] == 3 and m["unscored_rate"] == pytest.approx(2 / 3) and m["mean_score"] == 5.0
