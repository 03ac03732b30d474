import pyarrow as pa
import pytest

from rlaif.pairs import select_pairs


def judged(rows):
    return pa.Table.from_pylist([dict(zip(["prompt_id", "response", "score", "parse_ok", "n_tokens"], r)) for r in rows])


def test_best_vs_worst_with_margin():
    t = judged([("p1", "good", 5, True, 3), ("p1", "meh", 3, True, 3), ("p1", "bad", 1, True, 3),
                ("p2", "a", 3, True, 2), ("p2", "b", 3, True, 2)])  # p2 is a tie: no preference
    out = select_pairs(t, min_margin=1).to_pylist()
    assert [(r["prompt_id"], r["chosen"], r["rejected"]) for r in out] == [("p1", "good", "bad")]


def test_margin_threshold_and_parse_failures():
    t = judged([("p", "x", 4, True, 2), ("p", "y", 3, True, 2), ("p", "z", None, False, 2)])
    assert select_pairs(t, min_margin=2).num_rows == 0
    assert select_pairs(t, min_margin=1).to_pylist()[0]["rejected"] == "y"  # the unparsed one never takes part


def test_length_tie_breaks_fight_verbosity():
    t = judged([("p", "short right", 5, True, 2), ("p", "long right " * 5, 5, True, 10),
                ("p", "short wrong", 1, True, 2), ("p", "long wrong " * 5, 1, True, 10)])
    (r,) = select_pairs(t).to_pylist()
    assert r["chosen"] == "short right" and r["rejected"].startswith("long wrong")


def test_length_ratio_drops_verbose_winners():
    t = judged([("p", "very long answer", 5, True, 30), ("p", "no", 1, True, 5)])
    assert select_pairs(t, max_length_ratio=2.0).num_rows == 0
    assert select_pairs(t, max_length_ratio=10.0).num_rows == 1


def test_zero_margin_rejected():
    with pytest.raises(ValueError):
        select_pairs(judged([("p", "a", 1, True, 1)]), min_margin=0)


def test_a_truncated_answer_is_never_chosen_but_may_be_rejected():
    t = pa.Table.from_pylist([
        {"prompt_id": "p", "response": "cut off mid", "score": 5, "n_tokens": 16, "finish_reason": "length"},
        {"prompt_id": "p", "response": "complete", "score": 4, "n_tokens": 3, "finish_reason": "stop"},
        {"prompt_id": "p", "response": "wrong", "score": 2, "n_tokens": 2, "finish_reason": "stop"},
        {"prompt_id": "q", "response": "rambling", "score": 1, "n_tokens": 16, "finish_reason": "length"},
        {"prompt_id": "q", "response": "right", "score": 5, "n_tokens": 1, "finish_reason": "stop"},
        {"prompt_id": "r", "response": "only cut", "score": 5, "n_tokens": 16, "finish_reason": "length"},
        {"prompt_id": "r", "response": "cut too", "score": 1, "n_tokens": 16, "finish_reason": "length"}])
    out = {r["prompt_id"]: (r["chosen"], r["rejected"]) for r in select_pairs(t).to_pylist()}
    assert out == {"p": ("complete", "wrong"), "q": ("right", "rambling")}


def test_truncated_answers_may_be_chosen_when_allowed():
    t = pa.Table.from_pylist([
        {"prompt_id": "r", "response": "only cut", "score": 5, "n_tokens": 16, "finish_reason": "length"},
        {"prompt_id": "r", "response": "cut too", "score": 1, "n_tokens": 16, "finish_reason": "length"}])
    assert select_pairs(t).num_rows == 0
    (r,) = select_pairs(t, truncated_chosen=True).to_pylist()
    assert (r["chosen"], r["rejected"]) == ("only cut", "cut too")
