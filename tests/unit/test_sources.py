import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlaif import sources
from rlaif.sources import common_folder, input_table, list_video_uris, video_id_for, video_ids


def _touch(p, data=b"x"):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_folder_lists_every_visible_file_recursively(tmp_path):
    a = _touch(tmp_path / "a.mp4")
    b = _touch(tmp_path / "sub" / "b.MOV")
    t = _touch(tmp_path / "notes.txt")
    _touch(tmp_path / ".hidden.mp4")
    assert list_video_uris(str(tmp_path)) == sorted(map(str, [a, b, t]))
    assert list_video_uris(str(tmp_path), [".mp4", "mov"]) == sorted(map(str, [a, b]))


def test_video_named_directory_is_listed_when_filtering_by_suffix(tmp_path):
    (tmp_path / "x.mp4").mkdir()
    assert list_video_uris(str(tmp_path), [".mp4"]) == [str(tmp_path / "x.mp4")]


def test_glob_manifest_and_list(tmp_path):
    a = _touch(tmp_path / "a.mp4")
    b = _touch(tmp_path / "b.mp4")
    assert list_video_uris(str(tmp_path / "*.mp4")) == [str(a), str(b)]
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": [str(b), str(a), str(a), str(tmp_path / "gone.mp4")]}), m)
    assert list_video_uris(str(m)) == sorted([str(a), str(b), str(tmp_path / "gone.mp4")])  # missing kept, dups dropped
    assert list_video_uris([str(b), str(a)]) == [str(a), str(b)]


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="matches nothing"):
        list_video_uris(str(tmp_path / "*.mp4"))
    with pytest.raises(ValueError, match="holds no files"):
        list_video_uris(str(tmp_path))
    with pytest.raises(ValueError, match="not a folder, glob"):
        list_video_uris(str(tmp_path / "nothing-here"))
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"name": ["a"]}), m)
    with pytest.raises(ValueError, match="none of the columns"):
        list_video_uris(str(m))


def test_video_ids_are_stable_readable_and_distinct():
    assert video_id_for("/a/clip.mp4") == video_id_for("/a/clip.mp4")
    assert video_id_for("/a/clip.mp4") != video_id_for("/b/clip.mp4")
    assert video_id_for("/a/my clip!.mp4").startswith("my_clip_-")


def test_video_ids_do_not_depend_on_where_the_inputs_are():
    here = ["/home/u/clips/a/clip.mp4", "/home/u/clips/b/clip.mp4", "/home/u/clips/c.mp4"]
    there = [u.replace("/home/u/clips", "s3://bucket/copy") for u in here]
    assert common_folder(here) == "/home/u/clips" and common_folder(there) == "s3://bucket/copy"
    assert video_ids(here) == video_ids(there)
    assert len(set(video_ids(here))) == 3 and video_ids(here)[0].startswith("clip-")
    assert video_ids(["/x/one.mp4"]) == video_ids(["/y/z/one.mp4"])  # a single file: its name
    assert common_folder(["/x/a.mp4", "s3://b/a.mp4"]) == ""  # nothing shared: the whole URI is hashed
    assert len(set(video_ids(["/x/a.mp4", "s3://b/a.mp4"]))) == 2


def test_object_store_folder_glob_and_object(s3_bucket):
    from rlaif.storage import RunPath

    root = RunPath.of(f"{s3_bucket}/sources")
    for name in ("a/one.mp4", "a/two.MP4", "a/notes.txt", "a/.hidden.mp4", "b/three.mp4"):
        (root / name).write_bytes(b"x")
    assert list_video_uris(str(root / "a"), [".mp4"]) == [str(root / "a/one.mp4"), str(root / "a/two.MP4")]
    assert list_video_uris(f"{root}/*/*.mp4") == [str(root / "a/one.mp4"), str(root / "b/three.mp4")]
    assert list_video_uris(str(root / "b/three.mp4")) == [str(root / "b/three.mp4")]
    with pytest.raises(ValueError, match="matches nothing"):
        list_video_uris(f"{root}/*/*.avi")
    with pytest.raises(ValueError, match="does not exist"):
        list_video_uris(str(root / "c"))


def test_input_table_limits_after_hashing_the_whole_list():
    uris = [f"s3://b/clips/{name}.mp4" for name in ("a", "b", "c")]
    whole, first = input_table(uris), input_table(uris, limit=2)
    assert whole.column_names == ["video_id", "uri"] and whole.column("uri").to_pylist() == uris
    assert whole.column("video_id").to_pylist() == video_ids(uris)
    assert first.to_pylist() == whole.slice(0, 2).to_pylist()  # a video keeps its id whatever the limit


def test_input_table_makes_its_ids_a_chunk_at_a_time(monkeypatch):
    uris = [f"/data/clips/{name}/x.mp4" for name in ("a", "b", "c", "d", "e")]
    monkeypatch.setattr(sources, "ID_CHUNK", 2)
    table = input_table(uris)
    assert table.column("video_id").num_chunks == 3
    assert table.column("video_id").to_pylist() == video_ids(uris) and table.column("uri").to_pylist() == uris
