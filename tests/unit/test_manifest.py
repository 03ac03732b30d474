from rlaif.manifest import Manifest, clean_partials, publish, staging_path


def test_publish_replaces_atomically(tmp_path):
    final = tmp_path / "videos.parquet"
    for content in ("one", "two"):
        staged = staging_path(final)
        staged.mkdir()
        (staged / "part.parquet").write_text(content)
        publish(staged, final)
    assert (final / "part.parquet").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["videos.parquet"]


def test_partials_are_cleaned(tmp_path):
    staged = staging_path(tmp_path / "videos.parquet")
    staged.mkdir()
    (staged / "half.parquet").write_text("x")
    assert clean_partials(tmp_path) == 1 and not staged.exists()


def test_manifest_records_and_reloads(tmp_path):
    m = Manifest(tmp_path)
    assert not m.is_done("ingest", "h1")
    m.record("ingest", "running", "h1")
    assert not Manifest(tmp_path).is_done("ingest", "h1")
    m.record("ingest", "done", "h1", rows_in=3)
    again = Manifest(tmp_path)
    assert again.is_done("ingest", "h1") and not again.is_done("ingest", "h2")
    assert again.stage("ingest")["rows_in"] == 3
