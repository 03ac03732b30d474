"""join_batch: the broadcast plan's join of one batch to a keyed side table (pipelines.stages.joins)."""
import pyarrow as pa

from pipelines.stages.joins import join_batch


def test_one_to_many_in_batch_then_side_order_with_list_columns():
    videos = pa.table({"video_id": ["v2", "v1", "v3"], "frames_shape": [[2, 4], [1, 4], [3, 4]]})
    items = pa.table({"video_id": ["v1", "v2", "v1", "v9"], "prompt_id": ["p1", "p2", "p3", "p9"]})
    out = join_batch(videos, items, "video_id")
    # v2's item, then v1's two in the side's order; v3 (no items) and v9 (no video) are dropped.
    assert out.to_pylist() == [{"video_id": "v2", "frames_shape": [2, 4], "prompt_id": "p2"},
                               {"video_id": "v1", "frames_shape": [1, 4], "prompt_id": "p1"},
                               {"video_id": "v1", "frames_shape": [1, 4], "prompt_id": "p3"}]


def test_left_keeps_unmatched_rows_with_nulls():
    answers = pa.table({"prompt_id": ["p1", "p2", None], "response": ["a", "b", "c"]})
    context = pa.table({"prompt_id": ["p2", "p1"], "question": ["q2", "q1"]})
    out = join_batch(answers, context, "prompt_id", how="left")
    assert out.column("question").to_pylist() == ["q1", "q2", None]
    assert join_batch(answers, context, "prompt_id").column("response").to_pylist() == ["a", "b"]


def test_side_columns_the_batch_has_are_not_repeated():
    batch = pa.table({"k": [1, 2], "x": ["b1", "b2"]})
    side = pa.table({"k": [2, 1], "x": ["s2", "s1"], "y": [20, 10]})
    out = join_batch(batch, side, "k")
    assert out.column_names == ["k", "x", "y"]
    assert out.to_pylist() == [{"k": 1, "x": "b1", "y": 10}, {"k": 2, "x": "b2", "y": 20}]


def test_empty_side():
    batch = pa.table({"k": [1]})
    assert join_batch(batch, pa.table({}), "k").num_rows == 0
    assert join_batch(batch, pa.table({}), "k", how="left").num_rows == 1
