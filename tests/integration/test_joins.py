"""The two plans of pipelines.stages.joins on real Ray: small tables (tasks, the object store, order kept) and large
ones (Ray Data's hash join and groupby: ray.broadcast_join_rows 0) give the same rows, for the frames join alone and
for a whole round of the real pipeline (its judge context, pair selection, pairs and training rows), and the
training rows in the same order."""
import json
import shutil

import pyarrow as pa
import pyarrow.compute as pc
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


def test_training_rows_come_in_one_order_whatever_the_stored_orders_and_plan(ray_local, tables, tmp_path):
    """The training rows (a round's pairs with their frames) are sorted by video, then prompt, in blocks of a
    micro-batch, whatever order videos.parquet holds (Ray Data's read, map and write of a table reorder its blocks
    at times) and whichever plan: every run of the same inputs trains on the same batches."""
    import ray

    from pipelines.stages.joins import stored
    from pipelines.stages.train import training_rows
    from rlaif.layout import RunLayout

    videos = pq.read_table(tables["videos"])
    runs = []
    for n, order in enumerate(([0, 1, 2, 3], [2, 0, 3, 1])):  # v3 v1 v2 v0, then v2 v3 v0 v1
        layout = RunLayout(tmp_path / f"run{n}")
        stored_videos = tmp_path / f"run{n}" / "videos.parquet"
        stored_videos.mkdir(parents=True)
        pq.write_table(videos.take(order), stored_videos / "part-0.parquet", row_group_size=1)

        def run():
            pairs = stored(tables["prompts"], ["prompt_id", "video_id", "question"])
            ds = training_rows(layout, pairs, "dpo", block_rows=2).materialize()
            return [[r["prompt_id"] for r in block.to_pylist()] for block in ray.get(ds.to_arrow_refs())]

        runs += _both_plans(run).values()
    # p4's video v9 was never ingested; v0: p1, v1: p0 p2, v2: p5, v3: p3 p6.
    assert runs == [[["p1", "p0"], ["p2", "p5"], ["p3", "p6"]]] * 4


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
    # The tiny run's ingest, captions and prompts are taken as they are (ingest plans no join; the questions stage's
    # large plan has its own test below): the run resumes at the base eval.
    ours = tmp_path / "hash"
    ours.mkdir()
    for name in ("videos.parquet", "quarantine.parquet", "captions.parquet", "prompts.parquet"):
        shutil.copytree(reference / name, ours / name)
    manifest = json.loads((reference / "manifest.json").read_text())
    manifest["stages"] = {k: v for k, v in manifest["stages"].items() if k in ("ingest", "caption", "questions")}
    (ours / "manifest.json").write_text(json.dumps(manifest))
    try:
        run_pipeline(cfg, ours, resume=True)
    finally:
        set_broadcast_rows(DEFAULT_BROADCAST_ROWS)
    done = Manifest(ours).data["stages"]
    assert done["questions"] == manifest["stages"]["questions"] and done["round_base/eval"]["status"] == "done"
    rows = {name: same_rows(ours / name, reference / name, keys, ignore=()) for name, keys in (
        ("round_base/eval_judgments.parquet", ["prompt_id", "sample_idx"]),
        ("round_0/rollouts.parquet", ["prompt_id", "sample_idx"]),
        ("round_0/judgments.parquet", ["prompt_id", "sample_idx"]),
        ("round_0/pairs.parquet", ["prompt_id"]))}
    assert all(r["sorted"] and r["rows"][0] > 0 for r in rows.values()), rows
    assert (ours / "round_base/eval.json").read_text() == (reference / "round_base/eval.json").read_text()
    train = Manifest(ours).stage("round_0/train")
    assert train["status"] == "done" and train["rows"] == rows["round_0/pairs.parquet"]["rows"][0] and train["step"] > 0


def test_questions_from_a_file_get_the_same_prompts_and_split_in_both_plans(ray_local, tmp_path):
    """The questions stage's file path and split: a questions file in several row groups (numbered across them),
    matched to the ingested videos by uri, capped per video, split by video (the file's split wins)."""
    from pipelines.stages.joins import mapped
    from pipelines.stages.questions import prompts_from_file, split_by_video
    from rlaif.config import QuestionsConfig
    from rlaif.questions import assign_splits, with_splits
    from rlaif.storage import RunPath

    (tmp_path / "videos").mkdir()
    pq.write_table(pa.table({"video_id": [f"v{i}" for i in range(12)], "uri": [f"/in/{i}.mp4" for i in range(12)]}),
                   tmp_path / "videos" / "part-0.parquet")
    asked = [{"uri": f"/in/{i % 13}.mp4", "question": f"q{n}", "answer": f"a{n}", "split": "eval" if i == 5 else None}
             for n, i in enumerate([3, 5, 1, 3, 12, 3, 0, 7, 7, 2, 9, 11, 4, 6, 8, 10, 1])]  # /in/12.mp4: not ingested
    pq.write_table(pa.Table.from_pylist(asked), tmp_path / "questions.parquet", row_group_size=4)
    q = QuestionsConfig(source="file", file=str(tmp_path / "questions.parquet"), max_per_video=2, eval_fraction=0.3)

    def run():
        prompts = prompts_from_file(q, RunPath.of(tmp_path / "videos")).executed()
        return mapped(split_by_video(prompts, q.eval_fraction, 1), with_splits).take_all()

    out = _both_plans(run)
    assert _sorted(out["broadcast"], "prompt_id") == _sorted(out["shuffle"], "prompt_id")
    drawn = assign_splits([f"v{i}" for i in (3, 1, 0, 7, 2, 9, 11, 4, 6, 8, 10)], 0.3, 1)  # v5: the file's split
    got = {r["prompt_id"]: (r["question"], r["reference_answer"], r["split"]) for r in out["shuffle"]}
    assert got == {"v3-q0": ("q0", "a0", drawn["v3"]), "v3-q1": ("q3", "a3", drawn["v3"]),  # q5: over the cap
                   "v5-q0": ("q1", "a1", "eval"), "v1-q0": ("q2", "a2", drawn["v1"]),
                   "v1-q1": ("q16", "a16", drawn["v1"]), "v0-q0": ("q6", "a6", drawn["v0"]),
                   "v7-q0": ("q7", "a7", drawn["v7"]), "v7-q1": ("q8", "a8", drawn["v7"]),
                   **{f"v{i}-q0": (f"q{n}", f"a{n}", drawn[f"v{i}"])
                      for n, i in [(9, 2), (10, 9), (11, 11), (12, 4), (13, 6), (14, 8), (15, 10)]}}
    assert list(drawn.values()).count("eval") == 3


def test_a_captions_file_is_matched_by_its_better_key_one_caption_a_video_in_both_plans(ray_local, tmp_path):
    """caption.file / caption.reference_file: a ground-truth file with its own video ids beside the uris is matched
    by uri (the key that matches more ingested videos), and a video captioned twice keeps the file's last caption."""
    from pipelines.stages.caption import captions_from_file
    from rlaif.storage import RunPath

    (tmp_path / "videos").mkdir()
    pq.write_table(pa.table({"video_id": [f"v{i}-x" for i in range(6)], "uri": [f"/in/{i}.mp4" for i in range(6)]}),
                   tmp_path / "videos" / "part-0.parquet")
    given = [{"video_id": f"v{i}", "uri": f"/in/{i}.mp4", "caption": f"c{n}"} for n, i in enumerate([4, 0, 2, 7, 0, 5])]
    pq.write_table(pa.Table.from_pylist(given), tmp_path / "truth.parquet", row_group_size=2)

    out = _both_plans(lambda: captions_from_file(str(tmp_path / "truth.parquet"),
                                                 RunPath.of(tmp_path / "videos")).stream().take_all())
    assert _sorted(out["broadcast"], "video_id") == _sorted(out["shuffle"], "video_id")
    assert {r["video_id"]: r["caption"] for r in out["shuffle"]} == {"v4-x": "c0", "v0-x": "c4", "v2-x": "c2",
                                                                      "v5-x": "c5"}
    assert {(r["model"], r["prompt_version"]) for r in out["shuffle"]} == {("file", "file")}


def test_stored_tables_are_read_without_a_pool_of_footer_readers(ray_local, tables):
    """Stages read their tables with Ray Data's V1 Parquet reader (pipelines.orchestration.ray_env): Ray 2.60's
    default V2 reader starts 32 FooterReader actors for every read, ~5 s a read on 2 cores (bench/ray_data_read.py)."""
    from pipelines.stages.io import read_dataset

    ds = read_dataset(tables["prompts"], ["prompt_id"]).materialize()
    assert sorted(ds.to_pandas()["prompt_id"]) == [f"p{i}" for i in range(7)]
    stats = ds.stats()
    assert "ReadParquet" in stats and "ReadFilesParquetV2" not in stats and "ListFiles" not in stats, stats


def test_many_small_blocks_are_written_as_one_file_and_counted_as_they_pass(ray_local, tmp_path):
    """A round's blocks are small on purpose (a few engine batches each, to stream on to the judge): write_dataset
    gathers them into files of group_rows rows (judgments of 28,800 rows were 198 files), and the progress count is
    an operator of its own, so the console sees rows as they pass, not when a write task has a file's rows. The last
    block waits until the board has counted every other block: with the count fused into the gathering write it
    would wait for ever (here: its 60 s), as the write holds every block until the stream ends."""
    import time

    import ray

    from actors.progress import PROGRESS
    from pipelines.stages.io import write_dataset

    rows, blocks = 2000, 40
    PROGRESS.enabled = True
    PROGRESS.begin("write")
    try:
        board = PROGRESS.counter().board

        def last_block_waits_for_the_count(batch):
            seen = ray.get(board.done.remote("write"))
            if rows - 1 in batch["id"]:
                deadline = time.time() + 60
                while seen < rows - len(batch["id"]) and time.time() < deadline:
                    time.sleep(0.2)
                    seen = ray.get(board.done.remote("write"))
            return {"id": batch["id"], "counted_before": [seen] * len(batch["id"])}

        ds = ray.data.range(rows, override_num_blocks=blocks).map_batches(last_block_waits_for_the_count,
                                                                           batch_size=None)
        write_dataset(ds, tmp_path / "out.parquet")
        counted = PROGRESS.done_rows("write")
    finally:
        PROGRESS.end()
        PROGRESS.enabled = False
    files = list((tmp_path / "out.parquet").glob("*.parquet"))
    written = pq.ParquetDataset(tmp_path / "out.parquet").read()
    assert len(files) == 1 and sorted(written.column("id").to_pylist()) == list(range(rows))
    last = written.filter(pc.equal(written.column("id"), rows - 1)).column("counted_before")[0].as_py()
    assert last == rows - rows // blocks and counted == rows
