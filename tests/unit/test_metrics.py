"""Eval figures against ground truth: exact match, the lenient 'states the reference', and judge agreement."""
import pytest

from rlaif.metrics import eval_metrics, exact_match, normalise_answer, states_reference


def test_normalised_answers():
    assert normalise_answer("There are two.") == ["2"] and normalise_answer("The RED square") == ["red", "square"]
    assert exact_match("Two", "2") and exact_match("it is red.", "red") and not exact_match("red and blue", "red")
    assert not exact_match("", "") and states_reference("there are 2 circles", "2")
    # states_reference reads answers as exact_match does: an exact match always states the reference
    assert states_reference("two", "2") and states_reference("there are two circles", "2")
    assert states_reference("the background is blue", "blue") and not states_reference("blues", "blue")


def test_judge_agreement_and_exact_match():
    rows = [  # (answer, reference, judge score)
        {"response": "red", "reference_answer": "red", "score": 5.0},  # right, judged right: agree
        {"response": "blue", "reference_answer": "red", "score": 4.0},  # wrong, judged right: disagree
        {"response": "it moves left", "reference_answer": "left", "score": 1.0},  # right (not exact), judged wrong
        {"response": "3", "reference_answer": "2", "score": 1.0},  # wrong, judged wrong: agree
        {"response": "", "reference_answer": "2", "score": None},  # unscored: not in the agreement
    ]
    m = eval_metrics([{**r, "n_tokens": 1, "status": "scored"} for r in rows])
    assert m["exact_match"] == pytest.approx(1 / 5) and m["reference_match"] == pytest.approx(2 / 5)
    assert m["judge_agreement"] == pytest.approx(2 / 4)
