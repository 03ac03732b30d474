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
