
from rlaif.questions import assign_splits, parse_qa, qa_regex


def test_split_is_by_video_deterministic_and_never_empty():
    videos = [f"v{i}" for i in range(4)]
    a = assign_splits(videos + videos, 0.3, seed=0)  # duplicates (several questions per video) collapse
    assert a == assign_splits(list(reversed(videos)), 0.3, seed=0)
    assert sorted(a.values()).count("eval") == 1
    for n in range(2, 9):
        s = assign_splits([f"x{i}" for i in range(n)], 0.01, seed=0)
        assert "eval" in s.values() and "train" in s.values()
    assert set(assign_splits(["only"], 0.5, 0).values()) == {"train"}
    assert set(assign_splits(videos, 0.0, 0).values()) == {"train"}


def test_split_fraction():
    s = assign_splits([f"x{i}" for i in range(100)], 0.25, seed=3)
    assert list(s.values()).count("eval") == 25


def test_qa_parsing_and_bounded_regex():
    import re

    assert parse_qa("Question: What colour is the ball?\nAnswer: red") == ("What colour is the ball?", "red")
    assert parse_qa("no structure here") is None
    assert re.fullmatch(qa_regex(64), "Question: What moves?\nAnswer: the square")
