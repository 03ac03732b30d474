import re

import pytest

from rlaif.judging import is_correct, length_penalised, parse_aspects, parse_judgment
from rlaif.prompts import aspect_output_regex, judge_messages, judge_output_regex


@pytest.mark.parametrize("text, score", [
    ("Explanation: matches the description.\nScore: 4", 4),
    ("The answer is right. **Score:** 5", 5),
    ("score = 2 because it names the wrong colour", 2),
    ("Score: 3/5", 3),
    ("Score: 1 at first glance... on reflection Score: 4", 4),  # the last score wins
    ("Rating 4 out of 5. Score: 4 out of 5", 4),
])
def test_scores_parse(text, score):
    j = parse_judgment(text)
    assert j.parse_ok and j.score == score


def test_explanation_is_kept():
    j = parse_judgment("Explanation: the square is red, not blue.\nScore: 1")
    assert j.explanation == "the square is red, not blue."


@pytest.mark.parametrize("text", [None, "", "   ", "It is a good answer.", "Score: 7", "Score: 0", "Score: -3", "Score: five"])
def test_failures_are_never_scored(text):
    j = parse_judgment(text)
    assert not j.parse_ok and j.score is None


def test_structured_output_shape_always_parses():
    sample = "Explanation: consistent with the caption.\nScore: 3"
    assert re.fullmatch(judge_output_regex(64), sample)
    assert not re.fullmatch(judge_output_regex(12), sample)  # the bound keeps the score inside max_tokens
    assert parse_judgment(sample).score == 3


def test_correct_threshold():
    assert is_correct(3) and is_correct(5) and not is_correct(2) and not is_correct(None)


def test_judge_messages_carry_the_caption_as_evidence():
    msgs = judge_messages("A red circle moves left.", "What colour?", "red", reference="red")
    assert msgs[0]["role"] == "system"
    body = msgs[1]["content"]
    assert "A red circle moves left." in body and "Candidate answer: red" in body and "Reference answer: red" in body
    assert "Reference answer" not in judge_messages("c", "q", "a")[1]["content"]


def test_judging_prompts_differ_only_at_their_end():
    """What the judge engine's prefix cache relies on: the instructions are the same for every prompt, and the
    answers to one question differ only in their last characters."""
    a = judge_messages("A red circle moves left.", "What colour?", "red")
    b = judge_messages("A blue square.", "How many?", "two")
    c = judge_messages("A red circle moves left.", "What colour?", "a green one")
    assert a[0] == b[0] and "Score: N" in a[0]["content"]
    assert c[1]["content"].startswith(a[1]["content"][:-len("red")])


def test_aspect_ratings_parse_to_their_mean():
    j = parse_aspects("Explanation: right colour, a bit long.\nAccurate: 5\nHelpful: 4\nNatural: 4\nConcise: 2")
    assert j.parse_ok and j.score == pytest.approx(3.75)
    assert j.aspects == {"accurate": 5, "helpful": 4, "natural": 4, "concise": 2}
    assert j.explanation == "right colour, a bit long."


@pytest.mark.parametrize("text", [None, "", "Accurate: 5\nHelpful: 4\nNatural: 4",  # one aspect missing
                                  "Accurate: 5\nHelpful: 4\nNatural: 4\nConcise: 9"])
def test_incomplete_aspects_are_never_scored(text):
    j = parse_aspects(text)
    assert not j.parse_ok and j.score is None


def test_structured_aspect_output_always_parses():
    reply = "Explanation: fine\nAccurate: 1\nHelpful: 2\nNatural: 3\nConcise: 4"
    assert re.fullmatch(aspect_output_regex(48), reply)
    assert parse_aspects(reply).score == pytest.approx(2.5)
    assert "Concise" in judge_messages("cap", "q?", "a", aspects=True)[0]["content"]


@pytest.mark.parametrize("score, tokens, expected", [(5, 10, 5), (5, 14, 4), (4.5, 30, 1.0), (2, 11, 1.75)])
def test_length_penalty_costs_tokens_beyond_the_budget(score, tokens, expected):
    assert length_penalised(score, tokens, penalty=0.25, budget=10) == pytest.approx(expected)
