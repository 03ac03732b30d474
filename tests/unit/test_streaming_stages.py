"""The per-round stages stream their tables through Ray Data from storage to storage: checked on the source, a
per-round stage module never reads a whole table into the driver (read_table, ParquetDataset, take_all) nor turns
one into Python rows (to_pylist, to_pydict, to_pandas), unless the line says why that data is bounded:

    rows = batch.to_pylist()  # bounded: one Ray Data batch

The rounds scale with prompts × samples; a whole table in the driver is gigabytes in one process at a million videos.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PER_ROUND = ("rollout", "judge", "pairs", "train", "frames_join")
WHOLE = {"read_table", "ParquetDataset", "take_all", "to_pylist", "to_pydict", "to_pandas"}
ALLOW = "# bounded:"


def whole_table_reads(source: str) -> list[str]:
    """`line: call` for each call of a WHOLE name whose line does not carry ALLOW and a reason after it."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if name not in WHOLE:
            continue
        line = lines[node.lineno - 1]
        reason = line.partition(ALLOW)[2].strip() if ALLOW in line else ""
        if not reason:
            found.append(f"{node.lineno}: {line.strip()}")
    return found


@pytest.mark.parametrize("module", PER_ROUND)
def test_a_per_round_stage_reads_no_whole_table_into_the_driver(module):
    path = ROOT / "pipelines" / "stages" / f"{module}.py"
    assert whole_table_reads(path.read_text()) == []


def test_the_check_finds_a_whole_table_read_and_takes_only_an_explicit_reason():
    assert whole_table_reads("pairs = read_table(ctx.out.pairs)\n") == ["1: pairs = read_table(ctx.out.pairs)"]
    assert len(whole_table_reads("import pyarrow.parquet as pq\nt = pq.read_table(p)\n")) == 1
    assert len(whole_table_reads("ids = ds.take_all()\nrows = t.column('a').to_pylist()\n")) == 2
    assert whole_table_reads("rows = batch.to_pylist()  # bounded: one Ray Data batch\n") == []
    assert len(whole_table_reads("rows = table.to_pylist()  # bounded:\n")) == 1  # a reason is required
    assert len(whole_table_reads("rows = table.to_pylist()  # a comment that gives no leave\n")) == 1


def test_rebirth_targets_are_built_batch_by_batch_without_the_empty_outputs():
    import pyarrow as pa

    from pipelines.stages.rebirth import as_targets

    answers = pa.table({"video_id": ["v1", "v2", "v3"], "question": ["q1", "q2", "q3"],
                        "response": ["an answer", "  ", None], "prompt_id": ["p1", "p2", "p3"]})
    assert as_targets(answers, None, "answer").to_pylist() == [
        {"video_id": "v1", "prompt": "q1", "target": "an answer", "kind": "answer"}]
    captions = pa.table({"video_id": ["v1", "v2"], "caption": ["", "a red circle"]})
    assert as_targets(captions, "Describe the video.", "caption").to_pylist() == [
        {"video_id": "v2", "prompt": "Describe the video.", "target": "a red circle", "kind": "caption"}]


def test_ingest_counts_warning_codes_from_a_batch_of_videos():
    import pyarrow as pa

    from pipelines.stages.ingest import _warning_codes

    batch = pa.table({"warnings": pa.array([["vfr: variable", "short: 1 s"], None, ["vfr: again"]],
                                           pa.list_(pa.string()))})
    assert _warning_codes(batch).column("code").to_pylist() == ["vfr", "short", "vfr"]
    assert _warning_codes(batch.slice(1, 1)).num_rows == 0
