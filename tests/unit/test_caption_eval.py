import pytest

import pyarrow as pa

from rlaif.caption_eval import CaptionTally, caption_metrics, fact_rows, parse_verdict, reference_facts, repetition_rate
from rlaif.prompts import FACT_CHECK_REGEX, fact_check_messages


def test_reference_caption_splits_into_sentence_facts():
    caption = "A blue background with two objects. A green square moves to the right. A magenta circle stays still."
    assert reference_facts(caption) == ["A blue background with two objects.", "A green square moves to the right.",
                                         "A magenta circle stays still."]
    assert reference_facts("") == [] and reference_facts("  .  ") == []


@pytest.mark.parametrize("text, verdict", [("Verdict: covered", "covered"), ("verdict: MISSING", "missing"),
                                           ("Verdict: covered... no, Verdict: contradicted", "contradicted"),
                                           ("It is there.", None), ("", None), (None, None)])
def test_verdicts_parse_or_fail(text, verdict):
    assert parse_verdict(text) == verdict


def test_fact_check_prompt_and_regex():
    import re

    assert all(re.fullmatch(FACT_CHECK_REGEX, f"Verdict: {v}") for v in ("covered", "missing", "contradicted"))
    content = fact_check_messages("a red circle", "The circle is red.")[1]["content"]
    assert "a red circle" in content and "The circle is red." in content


def test_repetition_rate():
    assert repetition_rate("a red circle moves left") == 0
    assert repetition_rate("") == 0 and repetition_rate("two words") == 0
    # 8 trigrams, of which the last 4 repeat the first ones
    assert repetition_rate("the red circle moves the red circle moves the red") == pytest.approx(4 / 8)


def test_metrics_count_unparsed_checks_apart():
    m = caption_metrics(["covered", "missing", "missing", "contradicted", None], ["a b c a b c", "x y"])
    assert m["caption_facts"] == 5 and m["caption_unparsed_checks"] == 1
    assert m["caption_missing_rate"] == 0.5 and m["caption_contradiction_rate"] == 0.25
    assert m["caption_covered_rate"] == 0.25
    assert m["caption_repetition_rate"] == pytest.approx((1 / 4 + 0) / 2)  # "a b c" recurs once of 4
    empty = caption_metrics([], [])
    assert empty["caption_missing_rate"] is None and empty["caption_repetition_rate"] is None


def test_the_tally_added_a_batch_at_a_time_equals_the_metrics_of_the_whole():
    verdicts = ["covered", "missing", None, "contradicted", "covered"]
    captions = ["a b c a b c", "x y", "", "one two three one two three"]
    tally = CaptionTally()
    for i in range(0, len(verdicts), 2):
        tally.add(verdicts=verdicts[i:i + 2])
    for caption in captions:
        tally.add(captions=[caption])
    assert tally.metrics() == caption_metrics(verdicts, captions)
    assert tally.metrics()["caption_facts"] == 5 and tally.metrics()["caption_videos"] == 4


def test_fact_rows_are_the_sentences_of_each_reference_beside_the_models_caption():
    table = pa.table({"video_id": ["a", "b"], "caption": ["a red ball", "blue"],
                      "reference": ["A red ball. It rolls left.", ""]})
    assert fact_rows(table).to_pylist() == [
        {"video_id": "a", "fact_idx": 0, "fact": "A red ball.", "caption": "a red ball"},
        {"video_id": "a", "fact_idx": 1, "fact": "It rolls left.", "caption": "a red ball"}]
    assert fact_rows(table.slice(1)).num_rows == 0  # a reference stating nothing has no facts


def test_facts_of_an_empty_caption_are_missing_without_asking_a_judge():
    import pyarrow as pa

    from pipelines.stages.caption_eval import CheckFacts

    class NoEngines(CheckFacts):
        def call(self, requests, sampling):
            raise AssertionError("an empty caption needs no judge")

    rows = [{"video_id": "v", "fact_idx": i, "fact": f"fact {i}", "caption": " \n"} for i in range(3)]
    out = NoEngines([object()], structured=True, retries=1)(pa.Table.from_pylist(rows)).to_pylist()
    assert [r["verdict"] for r in out] == ["missing"] * 3 and all(r["parse_ok"] for r in out)
