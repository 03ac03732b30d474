"""The gate's figures, the prior-only baseline and the judge audit's ranking, on hand-made answers."""
import random

import pytest

from rlaif.audit import ANSWER_SETS, ranking_figures, wrong_answers
from rlaif.headroom import gate_figures, prior_baseline


def test_gate_figures_separate_what_the_video_gives_from_what_priors_give():
    kinds = {"q1": "colour", "q2": "colour", "q3": "shape", "q4": "shape"}
    refs = {"q1": "red", "q2": "blue", "q3": "circle", "q4": "square"}
    greedy = {"q1": ["red"], "q2": ["red"], "q3": ["circle"], "q4": ["circle"]}
    sampled = {"q1": ["red", "blue"], "q2": ["green", "Blue."], "q3": ["square", "circle"], "q4": ["square"]}
    other = {"q1": ["green"], "q2": ["red"], "q3": ["circle"], "q4": ["a square"]}  # shapes right blind too
    g = gate_figures(kinds, refs, greedy, sampled, other)
    assert g["colour"] == pytest.approx({"n": 2, "greedy": 0.5, "pass_at_k": 1.0, "other_clip_pass_at_k": 0.0,
                                         "grounded": 1.0, "grounded_p": 0.5})
    assert g["shape"]["pass_at_k"] == g["shape"]["other_clip_pass_at_k"] == 1.0 and g["shape"]["grounded"] == 0
    assert g["all"]["n"] == 4 and g["all"]["greedy"] == pytest.approx(0.5)


def test_prior_baseline_answers_blind_from_the_warm_up():
    warmup = [{"question": "What colour is the background?", "answer": "black", "kind": "background"},
              {"question": "What colour is the background?", "answer": "Black", "kind": "background"},
              {"question": "What colour is the background?", "answer": "white", "kind": "background"},
              {"question": "How many objects are there?", "answer": "one", "kind": "count"},
              {"question": "Describe", "answer": "A long caption.", "kind": "caption"}]
    held = [{"question": "What colour is the background?", "reference_answer": "black", "kind": "background"},
            {"question": "What colour is the background?", "reference_answer": "white", "kind": "background"},
            {"question": "How many red circles are there?", "reference_answer": "1", "kind": "count"}]  # new text
    base = prior_baseline(held, warmup)
    assert base["background"] == {"n": 2, "exact_match": 0.5}
    assert base["count"] == {"n": 1, "exact_match": 1.0}  # the kind's prior ("one" = "1") answers an unseen question
    assert base["all"]["exact_match"] == pytest.approx(2 / 3)


def test_wrong_answers_are_other_values_of_the_same_kind():
    rng = random.Random(0)
    for kind, values in ANSWER_SETS.items():
        right = values[0]
        wrong = wrong_answers(kind, right, 2, rng)
        assert len(wrong) == len(set(wrong)) == 2 and right not in wrong and set(wrong) <= set(values)
    assert sorted(wrong_answers("shape", "circle", 10, rng)) == ["square", "triangle"]


def test_ranking_figures_count_ties_as_half_and_keep_the_distributions():
    rows = [  # q1: the judge ranks right over both wrong; q2: a tie and a loss; q3 unscored right answer
        {"question_id": "q1", "kind": "colour", "right": True, "score": 5.0},
        {"question_id": "q1", "kind": "colour", "right": False, "score": 1.0},
        {"question_id": "q1", "kind": "colour", "right": False, "score": 2.0},
        {"question_id": "q2", "kind": "count", "right": True, "score": 3.0},
        {"question_id": "q2", "kind": "count", "right": False, "score": 3.0},
        {"question_id": "q2", "kind": "count", "right": False, "score": 4.0},
        {"question_id": "q3", "kind": "count", "right": True, "score": None},
        {"question_id": "q3", "kind": "count", "right": False, "score": 1.0},
    ]
    f = ranking_figures(rows)
    assert f["colour"]["rank_accuracy"] == 1.0 and f["colour"]["ties"] == 0.0
    assert f["count"]["rank_accuracy"] == pytest.approx(0.25) and f["count"]["ties"] == pytest.approx(0.5)
    assert f["count"]["unscored"] == 1 and f["count"]["questions"] == 2
    assert f["all"]["rank_accuracy"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert f["all"]["hist_right"] == {"1": 0, "2": 0, "3": 1, "4": 0, "5": 1}
    assert f["all"]["right_ge3"] == 1.0 and f["all"]["wrong_lt3"] == pytest.approx(3 / 5)
