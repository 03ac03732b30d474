"""Run-folder storage on both kinds of location: the local disk and an object store (a local S3 endpoint)."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlaif.manifest import Manifest
from rlaif.storage import (RunPath, clean_partials, local_copy, local_staging, publish, publish_folder, staging_path)


def _write_parquet_folder(folder: RunPath, value: str) -> None:
    folder.mkdir()
    pq.write_table(pa.table({"v": [value]}), (folder / "part-0.parquet").path, filesystem=folder.fs)


def test_paths_name_and_join(s3_bucket):
    p = RunPath.of(f"{s3_bucket}/runs/demo/") / "round_0" / "policy"
    assert str(p) == f"{s3_bucket}/runs/demo/round_0/policy" and p.name == "policy"
    assert str(p.parent.parent) == f"{s3_bucket}/runs/demo" and not p.is_local
    local = RunPath.of("runs/demo")
    assert local.is_local and local.local.is_absolute() and str(local / "x") == str(local.local / "x")
    assert p.relative_to(RunPath.of(f"{s3_bucket}/runs")).as_posix() == "demo/round_0/policy"


def test_publish_replaces_the_old_output(run_root):
    final = run_root / "videos.parquet"
    for value in ("one", "two"):
        staged = staging_path(final)
        _write_parquet_folder(staged, value)
        publish(staged, final)
    assert pq.read_table(final.path, filesystem=final.fs).column("v").to_pylist() == ["two"]
    assert [p.name for p in run_root.glob("*")] == ["videos.parquet"]  # nothing staged or old is left


def test_partials_are_cleaned(run_root):
    _write_parquet_folder(run_root / "captions.parquet", "kept")
    staged = staging_path(run_root / "round_0" / "rollouts.parquet")
    _write_parquet_folder(staged, "half")
    assert clean_partials(run_root) == 1 and not staged.exists()
    assert (run_root / "captions.parquet" / "part-0.parquet").exists()


def test_glob_matches_one_level_per_slash(run_root):
    for r in ("round_0", "round_1", "round_base"):
        (run_root / r / "eval.json").write_json({"round": r})
    (run_root / "round_0" / "deeper" / "eval.json").write_json({})
    assert [p.parent.name for p in run_root.glob("round_[0-9]*/eval.json")] == ["round_0", "round_1"]
    assert (run_root / "round_1" / "eval.json").read_json() == {"round": "round_1"}


def test_manifest_records_and_reloads(run_root):
    m = Manifest(run_root)
    assert not m.is_done("ingest", "h1")
    m.record("ingest", "running", "h1")
    assert not Manifest(run_root).is_done("ingest", "h1")
    m.record("ingest", "done", "h1", rows_in=3)
    again = Manifest(str(run_root))
    assert again.is_done("ingest", "h1") and not again.is_done("ingest", "h2")
    assert again.stage("ingest")["rows_in"] == 3


def test_published_folder_comes_back_as_a_local_copy(run_root, tmp_path):
    final = run_root / "round_0" / "policy"
    for weights in (b"first", b"second"):
        staged = local_staging(final)
        (staged / "adapter").mkdir()
        (staged / "model.safetensors").write_bytes(weights)
        (staged / "adapter" / "adapter_config.json").write_text("{}")
        publish_folder(staged, final)
        assert not staged.exists()
        copy = local_copy(str(final), tmp_path / "cache")
        assert (tmp_path / "cache").is_dir()
        if final.is_local:
            continue
        # A rewritten remote folder is fetched again, never served stale from the cache.
        assert open(f"{copy}/model.safetensors", "rb").read() == weights
        assert open(f"{copy}/adapter/adapter_config.json").read() == "{}"
    assert (final / "model.safetensors").read_bytes() == b"second"
    assert [p.name for p in final.parent.glob("*")] == ["policy"]


def test_missing_remote_folder_is_a_clear_error(s3_bucket, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        local_copy(f"{s3_bucket}/nothing-here", tmp_path)


def test_a_local_file_is_copied_in_whole(run_root, tmp_path):
    src = tmp_path / "worker.out"
    data = bytes(range(256)) * 12_000  # 3 MB: more than one chunk of the copy
    src.write_bytes(data)
    dest = run_root / "logs" / "workers" / "worker.out"
    dest.copy_from(src)
    assert dest.read_bytes() == data
    dest.copy_from(tmp_path / "worker.out")  # again: replaced, not appended, and nothing temporary left beside it
    assert dest.read_bytes() == data and [p.name for p in dest.parent.glob("*")] == ["worker.out"]


def test_scan_reads_every_files_rows_and_skips_an_empty_file_without_columns(run_root):
    from pipelines.stages.io import scan

    folder = run_root / "t.parquet"
    folder.mkdir()
    pq.write_table(pa.schema([]).empty_table(), (folder / "empty.parquet").path, filesystem=folder.fs)
    pq.write_table(pa.table({"k": ["a", "b"], "big": [b"x" * 10, b"y"]}), (folder / "part-0.parquet").path,
                   filesystem=folder.fs, row_group_size=1)
    pq.write_table(pa.table({"k": ["c"], "big": [b"z"]}), (folder / "part-1.parquet").path, filesystem=folder.fs)
    batches = list(scan(folder, ["k"]))
    assert [b.schema.names for b in batches] == [["k"]] * len(batches)
    assert [v for b in batches for v in b.column(0).to_pylist()] == ["a", "b", "c"]


def test_read_matching_returns_the_rows_of_the_keys_asked_from_the_groups_that_hold_them(tmp_path):
    """The report's frames: a few rows by key from a table of many row groups, a group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.stages.io import read_matching

    table = pa.table({"video_id": [f"v{i:03d}" for i in range(100)], "frames": [bytes([i]) * 10 for i in range(100)]})
    (tmp_path / "t").mkdir()
    pq.write_table(table.slice(0, 60), tmp_path / "t" / "a.parquet", row_group_size=7)
    pq.write_table(table.slice(60), tmp_path / "t" / "b.parquet", row_group_size=7)
    got = read_matching(str(tmp_path / "t"), "video_id", ["v059", "v003", "v061", "nope"], ["video_id", "frames"])
    assert sorted(got.to_pylist(), key=lambda r: r["video_id"]) == [
        {"video_id": v, "frames": bytes([int(v[1:])]) * 10} for v in ["v003", "v059", "v061"]]
    assert read_matching(str(tmp_path / "t"), "video_id", ["nope"], ["frames"]).num_rows == 0
    assert read_matching(str(tmp_path / "missing"), "video_id", ["v001"], ["frames"]).num_rows == 0
    assert read_matching(str(tmp_path / "t"), "video_id", [], ["frames"]).num_rows == 0  # a report with no gallery
