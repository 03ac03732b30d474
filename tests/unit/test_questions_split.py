
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


def test_file_prompts_number_each_videos_questions_in_file_order_up_to_the_cap():
    import pyarrow as pa

    from rlaif.questions import file_prompts

    rows = pa.Table.from_pylist([  # a group's rows may arrive in any order: `row` is their place in the file
        {"video_id": "b", "question": "qb0", "reference_answer": None, "answer": "x", "split": None, "row": 1},
        {"video_id": "a", "question": "qa1", "reference_answer": "y", "answer": None, "split": "eval", "row": 2},
        {"video_id": "a", "question": "qa0", "reference_answer": None, "answer": "z", "split": None, "row": 0},
        {"video_id": "a", "question": "qa2", "reference_answer": "w", "answer": None, "split": None, "row": 3}])
    got = file_prompts(rows, max_per_video=2).to_pylist()
    assert [(r["prompt_id"], r["question"], r["reference_answer"], r["split"]) for r in got] == [
        ("a-q0", "qa0", "z", None), ("b-q0", "qb0", "x", None), ("a-q1", "qa1", "y", "eval")]
    assert {r["source"] for r in got} == {"file"}
    assert file_prompts(rows, None).num_rows == 4


def test_generated_prompts_keep_unparsable_samples_as_rows_without_a_question():
    from rlaif.questions import generated_prompts

    got = generated_prompts(["v"], [["Question: What moves?\nAnswer: a dot", "rambling"]]).to_pylist()
    assert [(r["prompt_id"], r["question"], r["reference_answer"]) for r in got] == [
        ("v-g0", "What moves?", "a dot"), ("v-g1", None, None)]


def test_drawn_splits_are_assign_splits_and_a_files_split_wins():
    import pyarrow as pa

    from rlaif.questions import drawn_splits, unsplit_videos, with_splits
    from rlaif.schemas import PROMPTS

    vids = [f"v{i}" for i in range(10)]
    prompts = pa.Table.from_pylist(
        [{"prompt_id": f"{v}-q{j}", "video_id": v, "question": "q", "split": None} for v in vids for j in range(2)]
        + [{"prompt_id": "w-q0", "video_id": "w", "question": "q", "split": "eval"},  # the file's split: not drawn
           {"prompt_id": "u-g0", "video_id": "u", "question": None, "split": None}],  # no question: not drawn
        schema=PROMPTS)
    assert sorted(unsplit_videos(prompts, 3).column("video_id").to_pylist()) == vids
    drawn = dict(zip(*drawn_splits(prompts, 0.3, 3).to_pydict().values()))
    assert drawn == assign_splits(vids, 0.3, 3)
    joined = prompts.append_column("drawn_split", pa.array([drawn.get(v) for v in prompts.column("video_id").to_pylist()]))
    out = with_splits(joined)
    assert out.schema == PROMPTS and "u-g0" not in out.column("prompt_id").to_pylist()
    split = dict(zip(out.column("prompt_id").to_pylist(), out.column("split").to_pylist()))
    assert split["w-q0"] == "eval" and all(split[f"{v}-q{j}"] == drawn[v] for v in vids for j in range(2))
    # a large run's join names only the eval videos: the others come out train
    only_eval = prompts.append_column("drawn_split", pa.array(
        ["eval" if drawn.get(v) == "eval" else None for v in prompts.column("video_id").to_pylist()]))
    assert with_splits(only_eval).equals(out)
