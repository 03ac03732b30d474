"""The two plans of pipelines.stages.joins on real Ray: small tables (tasks, the object store, order kept) and large
ones (Ray Data's hash join and groupby: ray.broadcast_join_rows 0) give the same rows, for the frames join alone and
for a whole round of the real pipeline (its judge context, pair selection, pairs and training rows)."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def tables(tmp_path):
    videos = pa.table({"video_id": [f"v{i}" for i in (3, 1, 2, 0)], "frames": [bytes([i]) * 4 for i in range(4)],
                       "frames_shape": [[1, 2, 2, 1]] * 4, "duration_s": [1.0, 2.0, 3.0, 4.0]})
    prompts = pa.table({"prompt_id": [f"p{i}" for i in range(7)], "video_id": ["v1", "v0", "v1", "v3", "v9", "v2", "v3"],
                        "question": [f"q{i}" for i in range(7)], "split": ["train", "eval"] * 3 + ["train"]})
    paths = {}
    for name, table in {"videos": videos, "prompts": prompts}.items():
        (tmp_path / name).mkdir()
        pq.write_table(table, tmp_path / name / "part-0.parquet")
        paths[name] = tmp_path / name
    return paths


def _both_plans(fn):
    from pipelines.stages.joins import DEFAULT_BROADCAST_ROWS, set_broadcast_rows

    out = {}
    try:
        for plan, limit in (("broadcast", DEFAULT_BROADCAST_ROWS), ("shuffle", 0)):
            set_broadcast_rows(limit)
            out[plan] = fn()
    finally:
        set_broadcast_rows(DEFAULT_BROADCAST_ROWS)
    return out


def _sorted(rows, *keys):
    return sorted(rows, key=lambda r: tuple(r[k] for k in keys))


def test_frames_join_same_rows_and_broadcast_keeps_video_order(ray_local, tables):
    from pipelines.stages.joins import rows_with_frames, stored
    from rlaif.storage import RunPath

    def run():
        items = stored(tables["prompts"], ["prompt_id", "video_id", "question"])
        return rows_with_frames(RunPath.of(tables["videos"]), items).take_all()

    out = _both_plans(run)
    assert _sorted(out["broadcast"], "prompt_id") == _sorted(out["shuffle"], "prompt_id")
    # p4's video v9 was never ingested: dropped by both. Broadcast: videos in their stored order, each video's
    # prompts in the prompts' order.
    assert [r["prompt_id"] for r in out["broadcast"]] == ["p3", "p6", "p0", "p2", "p5", "p1"]
    assert {r["prompt_id"]: r["frames"] for r in out["shuffle"]}["p5"] == bytes([2]) * 4


def test_a_round_with_hash_joins_writes_the_tiny_runs_tables(ray_local, tiny_run, tmp_path):
    """The real pipeline with every join and grouping planned as large (Ray Data's hash joins, groupby and sorts)
    writes the same rows as the tiny run, whose tables were all small: the base eval, round 0's answers, judgments
    and pairs (seeded per request, so the same), and it trains on them."""
    from pipelines.orchestration.runner import run_pipeline
    from pipelines.stages.joins import DEFAULT_BROADCAST_ROWS, set_broadcast_rows
    from tests.integration.resume_compare import same_rows
    from rlaif.manifest import Manifest

    cfg, reference, _ = tiny_run
    cfg = cfg.model_copy(deep=True)
    cfg.ray.broadcast_join_rows, cfg.loop.rounds = 0, 1
    try:
        run_pipeline(cfg, tmp_path / "hash")
    finally:
        set_broadcast_rows(DEFAULT_BROADCAST_ROWS)
    ours = tmp_path / "hash"
    rows = {name: same_rows(ours / name, reference / name, keys, ignore=()) for name, keys in (
        ("prompts.parquet", ["prompt_id"]),
        ("round_base/eval_judgments.parquet", ["prompt_id", "sample_idx"]),
        ("round_0/rollouts.parquet", ["prompt_id", "sample_idx"]),
        ("round_0/judgments.parquet", ["prompt_id", "sample_idx"]),
        ("round_0/pairs.parquet", ["prompt_id"]))}
    assert all(r["sorted"] and r["rows"][0] > 0 for r in rows.values()), rows
    assert (ours / "round_base/eval.json").read_text() == (reference / "round_base/eval.json").read_text()
    train = Manifest(ours).stage("round_0/train")
    assert train["status"] == "done" and train["rows"] == rows["round_0/pairs.parquet"]["rows"][0] and train["step"] > 0
